"""Documentation site: strict build, generated option reference, commands that really run."""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
VENV_BIN = Path(sys.executable).parent


def _gen_usage():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_usage
    finally:
        sys.path.pop(0)
    try:
        gen_usage.get_parser()
    except (ImportError, RuntimeError) as err:  # pragma: no cover - depends on cli.py
        pytest.skip(f"command-line parser not available: {err}")
    return gen_usage


def _nav_pages() -> list[str]:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages: list[str] = []
    for entry in config["nav"]:
        pages.extend(entry.values() if isinstance(entry, dict) else [entry])
    return pages


def test_mkdocs_strict_build(tmp_path):
    missing = [p for p in _nav_pages() if not (DOCS / p).is_file()]
    assert not missing, f"pages in mkdocs.yml nav that do not exist: {missing}"
    site = tmp_path / "site"
    res = subprocess.run(
        [str(VENV_BIN / "mkdocs"), "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
         "-d", str(site)], capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for page in _nav_pages():
        name = page.removesuffix(".md")
        html = site / ("index.html" if name == "index" else f"{name}/index.html")
        assert html.is_file(), html
    # The changelog page shows CHANGELOG.md (included by the build hook).
    changelog = (ROOT / "CHANGELOG.md").read_text()
    first_entry = next(ln[2:] for ln in changelog.splitlines() if ln.startswith("- "))
    words = re.findall(r"[A-Za-z]{5,}", first_entry)[:4]
    built = (site / "changelog" / "index.html").read_text()
    assert "include:" not in built
    assert all(w in built for w in words), words
    # The usage page carries every option, regenerated from the parser at build time.
    usage_html = (site / "usage" / "index.html").read_text()
    for option in _gen_usage().option_strings():
        if option.startswith("-"):
            assert option in usage_html, option


def test_every_page_is_in_nav():
    pages = set(_nav_pages())
    on_disk = {p.name for p in DOCS.glob("*.md")}
    assert on_disk <= pages, f"pages not in the nav: {sorted(on_disk - pages)}"


def test_usage_reference_is_generated_and_complete():
    gen = _gen_usage()
    text = (DOCS / "usage.md").read_text()
    assert gen.splice(text, gen.render()) == text, (
        "docs/usage.md is out of date: run python scripts/gen_usage.py")
    section = text[text.index(gen.BEGIN): text.index(gen.END)]
    options = gen.option_strings()
    assert {"--participant-label", "--fmri-backend", "--device", "--work-dir", "-w",
            "--reports-only", "--version", "bids_dir"} <= set(options)
    undocumented = [o for o in options if o not in section]
    assert not undocumented, f"options missing from docs/usage.md: {undocumented}"
    assert "(no description)" not in section, "an option has no description"
    for cmd in ("simulate", "download", "convert", "demo"):
        assert f"## `eegfmri {cmd}`" in section


def test_gen_usage_check_mode_detects_stale_page(tmp_path):
    gen = _gen_usage()
    stale = tmp_path / "usage.md"
    stale.write_text(f"# Usage\n\n{gen.BEGIN}\nold text\n{gen.END}\n")
    assert gen.main(["--check", "--output", str(stale)]) == 1
    assert gen.main(["--output", str(stale)]) == 0
    assert gen.main(["--check", "--output", str(stale)]) == 0
    assert "--participant-label" in stale.read_text()
    with pytest.raises(ValueError, match="markers"):
        gen.splice("no markers", "x")


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.DOTALL)


def _commands(block: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", block)
    return [ln.strip() for ln in joined.splitlines() if ln.strip()]


def _eegfmri_argv(line: str) -> list[str] | None:
    """Arguments given to eegfmri by a documented shell line (None: not an eegfmri call)."""
    line = re.sub(r"\$\{[^}]*\}", "1", line)
    line = re.sub(r"\$\(\([^)]*\)\)", "16", line)
    line = re.sub(r"\$\([^)]*\)", "1000", line)
    line = re.sub(r"\$[A-Z_]+", "01", line)
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        if "eegfmri" in line:
            raise
        return None
    if not tokens or tokens[0] in ("sudo", "mkdir", "cp", "git", "pip", "srun") or (
            len(tokens) > 1 and tokens[1] in ("exec", "build", "test")):
        return None
    for i, tok in enumerate(tokens):
        if tok in ("eegfmri", "../brainlife/main") or tok.endswith(".sif") or (
                tok.startswith("eegfmri/eegfmri:")):
            return tokens[i + 1:] if tok != "../brainlife/main" else None
    return None


def test_documented_command_lines_are_valid():
    gen = _gen_usage()
    checked = 0
    for page in sorted(DOCS.glob("*.md")) + [ROOT / "README.md", ROOT / "brainlife/README.md"]:
        for block in _bash_blocks(page.read_text()):
            for line in _commands(block):
                argv = _eegfmri_argv(line)
                if argv is None:
                    continue
                if argv in (["--version"], ["--help"]):
                    checked += 1
                    continue
                try:
                    gen.parse_command(argv)
                except gen.CommandLineError as err:
                    raise AssertionError(f"{page.name}: `{line}`: {err}") from None
                checked += 1
    assert checked >= 12, checked


def _fake_tools(bindir: Path, log: Path) -> None:
    bindir.mkdir()
    scripts = {
        "singularity": f'printf "%s\\n" "$@" > "{log}"\n',
        "srun": 'exec "$@"\n',
        # A long node list: a reader that closes the pipe early would hit SIGPIPE.
        "scontrol": 'printf "node001\\nnode002\\n"; seq 3 50000 | sed "s/^/node/"\n',
    }
    for name, body in scripts.items():
        path = bindir / name
        path.write_text("#!/bin/bash\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _sbatch_script(marker: str) -> str:
    blocks = [b for b in _bash_blocks((DOCS / "hpc.md").read_text()) if marker in b]
    assert len(blocks) == 1, marker
    return blocks[0]


def _run_sbatch(script: str, tmp_path: Path, **env: str) -> tuple[int, list[str], str]:
    log = tmp_path / "singularity.args"
    log.unlink(missing_ok=True)
    if not (tmp_path / "bin").exists():
        _fake_tools(tmp_path / "bin", log)
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    bids = tmp_path / "bids"
    full_env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "USER": "tester",
                "HOME": str(tmp_path), "BIDS_DIR": str(bids), "OUT_DIR": str(tmp_path / "out"),
                "WORK_ROOT": str(tmp_path / "work"), "WORK_DIR": str(tmp_path / "work/g"),
                "IMAGE": "/images/eegfmri-0.1.0.sif", **env}
    res = subprocess.run(["bash", str(path)], env=full_env, capture_output=True, text=True,
                         cwd=tmp_path, timeout=30)
    args = log.read_text().splitlines() if log.exists() else []
    return res.returncode, args, res.stderr


def test_hpc_participant_array_script_runs_one_subject_per_task(tmp_path):
    gen = _gen_usage()
    script = _sbatch_script("#SBATCH --job-name=eegfmri-participant")
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "participants.tsv").write_text(
        "participant_id\tage\nsub-01\t30\nsub-02\t31\nsub-05\t25\n")
    rc, args, err = _run_sbatch(script, tmp_path, SLURM_ARRAY_TASK_ID="3",
                                SLURM_CPUS_PER_TASK="4", SLURM_MEM_PER_NODE="16384")
    assert rc == 0, err
    assert args[:2] == ["run", "--cleanenv"]
    assert f"{bids}:/data:ro" in args and f"{tmp_path / 'work'}/sub-05:/work" in args
    image = args.index("/images/eegfmri-0.1.0.sif")
    parsed = gen.parse_command(args[image + 1:])
    assert parsed.participant_label == ["05"]
    assert (parsed.nprocs, parsed.omp_nthreads, parsed.mem) == (4, 1, 16.0)
    assert str(parsed.bids_dir) == "/data" and parsed.analysis_level == "participant"
    assert (tmp_path / "work" / "sub-05").is_dir()
    # One task past the last subject stops with a message instead of running anything.
    rc, args, err = _run_sbatch(script, tmp_path, SLURM_ARRAY_TASK_ID="4")
    assert rc == 2 and not args and "participants.tsv" in err


def test_hpc_group_torchrun_script(tmp_path):
    gen = _gen_usage()
    script = _sbatch_script("#SBATCH --job-name=eegfmri-group")
    rc, args, err = _run_sbatch(script, tmp_path, SLURM_NNODES="2", SLURM_JOB_ID="77",
                                SLURM_JOB_NODELIST="node[001-002]", GPUS_PER_NODE="4")
    assert rc == 0, err
    assert args[:3] == ["exec", "--cleanenv", "--nv"]
    run = args[args.index("torchrun"):]
    opts = dict(zip(run[1:-1:2], run[2::2], strict=False))
    assert opts["--nnodes"] == "2" and opts["--nproc-per-node"] == "4"
    assert opts["--rdzv-endpoint"] == "node001:29500" and opts["--rdzv-id"] == "77"
    module = run.index("-m")
    assert run[module + 1] == "bids_app"
    parsed = gen.parse_command(run[module + 2:])
    assert parsed.analysis_level == "group" and parsed.device == "cuda"
    # torchrun itself accepts these launcher options (same torch as the image).
    from torch.distributed.run import get_args_parser

    launcher = get_args_parser().parse_args(run[1:module + 2] + ["x"])
    assert launcher.nnodes == "2" and launcher.module


def test_methods_references():
    text = (DOCS / "methods.md").read_text()
    refs = text[text.index("## References"):]
    required = [("Niazy", "2005"), ("Debener", "2007"), ("Pion-Tonachini", "2019"),
                ("Kothe", "Jung"), ("Chang", "2020"), ("Bigdely-Shamlo", "2015"),
                ("Pascual-Marqui", "2007"), ("Pascual-Marqui", "2011"), ("Friston", "1994"),
                ("Abraham", "nilearn"), ("Esteban", "2019"), ("Wu", "2018"), ("Shi", "2019"),
                ("Sutter", "2021"), ("Zintgraf", "2017"), ("Zeiler", "2014"),
                ("Benjamini", "1995"), ("Telesford", "2023")]
    entries = [e for e in refs.split("\n- ")[1:]]
    for author, key in required:
        assert any(author in e and key in e for e in entries), (author, key)
    firsts = [e.split(",")[0] for e in entries]
    assert firsts == sorted(firsts), "references are sorted by first author"


def test_outputs_page_covers_design_names():
    text = (DOCS / "outputs.md").read_text()
    for name in ("dataset_description.json", "DatasetType", "GeneratedBy", "SourceDatasets",
                 ".bidsignore", "_desc-preproc_eeg.vhdr", "_channels.tsv", "_desc-qc_eeg.tsv",
                 "space-MNI152NLin2009cAsym", "_eegsource.nii.gz", "_desc-preproc_bold.nii.gz",
                 "_desc-brain_mask", "_desc-confounds_timeseries.tsv", "_stat-z_statmap.nii.gz",
                 "_desc-sourcechannel_corr.tsv", "_desc-vaemask_events.tsv", "vae1.pt",
                 "vae2.pt", "stat-effect_statmap", "stat-q_statmap", "group.html",
                 "sub-XX.html", "figures/", "logs/", "Sources", "SkullStripped", "Resolution",
                 "LongName", "Description", "Units"):
        assert name in text, name


def test_brainlife_main_is_executable_and_bash_clean():
    main = ROOT / "brainlife" / "main"
    assert os.access(main, os.X_OK)
    assert subprocess.run(["bash", "-n", str(main)]).returncode == 0


def _documented_output_patterns() -> list[re.Pattern[str]]:
    """Regexes of every file name that docs/outputs.md lists (placeholders expanded)."""
    text = (DOCS / "outputs.md").read_text()
    names: list[str] = []
    for row in (ln for ln in text.splitlines() if ln.startswith("| `")):
        tokens = re.findall(r"`([^`\s]+)`", row)
        stem = None
        for tok in tokens:
            if tok.startswith(".") and stem and re.fullmatch(r"(\.[a-z]+)+", tok):
                names.append(stem + tok)  # `.vmrk`, (+ `.json`): same name, other extension
                continue
            if not re.fullmatch(r"[\w<>{}\-.*/]*\.[a-z][a-z.]*", tok):
                continue
            names.append(tok)
            stem = re.sub(r"(\.[a-z]+)+$", "", tok)
    repl = {"<run>": r"sub-[0-9A-Za-z]+(?:_[a-z]+-[0-9A-Za-z]+)*",
            "<space>": r"space-[0-9A-Za-z]+(?:_res-[0-9a-z]+)?",
            "{band}": r"[0-9A-Za-z]+", "XX": r"[0-9A-Za-z]+", "YY": r"[0-9A-Za-z]+",
            "*": r"[^/]*"}
    patterns = []
    for name in names:
        parts = re.split(r"(<[a-z]+>|\{band\}|XX|YY|\*)", name)
        regex = "".join(repl.get(p, r"[^/]+" if p.startswith("<") else re.escape(p))
                        if i % 2 else re.escape(p) for i, p in enumerate(parts))
        patterns.append(re.compile(rf"(?:.*/)?{regex}"))
    return patterns


def test_outputs_of_a_real_run_are_documented(tmp_path, tiny_bids):
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "bids_app", str(tiny_bids), str(out),
                          "participant", "--reports-only", "--skip-bids-validation"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode in (0, 1), res.stderr[-3000:]
    patterns = _documented_output_patterns()
    assert len(patterns) >= 30
    for probe in ("sub-01_ses-01_task-checker_space-MNI152NLin2009cAsym_res-3_desc-alpha_"
                  "stat-z_statmap.nii.gz", "logs/config-20260101T000000Z.toml",
                  "sub-01/ses-01/eeg/sub-01_ses-01_task-tp_run-01_desc-preproc_eeg.eeg"):
        assert any(p.fullmatch(probe) for p in patterns), probe
    assert not any(p.fullmatch("sub-01_desc-unknown_bold.nii.gz") for p in patterns)
    written = [f.relative_to(out).as_posix() for f in out.rglob("*")
               if f.is_file() and "work" not in f.relative_to(out).parts]
    assert "dataset_description.json" in written
    undocumented = [f for f in written if not any(p.fullmatch(f) for p in patterns)]
    assert not undocumented, f"files written but missing from docs/outputs.md: {undocumented}"
