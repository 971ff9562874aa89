"""Masking sharded over processes: every output byte-identical to one process (issue 20).

The group level runs the real masking stage on a small planted problem
(``masking_group.py``): once in one process, as ``--masking-shard`` jobs after a
``--models-only`` job followed by a plain merge run, and as two torch.distributed ranks
(gloo on CPU) started the way torchrun starts them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import masking_group
import pytest

from bids_app.cli import main
from bids_app.workflows import group as group_wf

HERE = Path(__file__).parent
SETTINGS = """[masking]
windows = "all"
cell_units = 16
n_boot = 20
cross_outputs = "significant"
"""
#: Output folders that are not results (logs, locks, the work directory's cache).
NOT_OUTPUTS = ("logs", ".eegfmri-locks", "work")


@pytest.fixture
def stages(monkeypatch):
    monkeypatch.setitem(group_wf.STAGES, "models", masking_group.models)
    monkeypatch.setitem(group_wf.STAGES, "masking",
                        ("bids_app.workflows.masking_shards", "run_masking_stage"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    """One BIDS folder (linked from every output's dataset_description) and settings."""
    base = tmp_path_factory.mktemp("inputs")
    (base / "bids").mkdir()
    (base / "settings.toml").write_text(SETTINGS)
    return base / "bids", base / "settings.toml"


@pytest.fixture
def layout(inputs, tmp_path):
    """The inputs and a function giving a fresh output folder."""

    def output(name: str) -> Path:
        out = tmp_path / name
        (out / "sub-01").mkdir(parents=True)
        return out

    return *inputs, output


def _args(bids: Path, out: Path, settings: Path, *extra: str) -> list[str]:
    return [str(bids), str(out), "group", "--config-file", str(settings),
            "--omp-nthreads", "1", "--device", "cpu", *extra]


def _outputs(out: Path) -> dict[str, bytes]:
    files = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        if path.is_file() and rel.parts[0] not in NOT_OUTPUTS:
            files[rel.as_posix()] = path.read_bytes()
    return files


@pytest.fixture(scope="module")
def single(inputs, tmp_path_factory):
    """Outputs of a one-process group run (made once for the module)."""
    bids, settings = inputs
    out = tmp_path_factory.mktemp("single") / "out"
    (out / "sub-01").mkdir(parents=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(group_wf.STAGES, "models", masking_group.models)
        mp.setitem(group_wf.STAGES, "group_report", None)
        mp.setitem(group_wf.STAGES, "masking",
                   ("bids_app.workflows.masking_shards", "run_masking_stage"))
        assert main(_args(bids, out, settings)) == 0
    files = _outputs(out)
    assert any(name.endswith("_desc-vaemask_events.tsv") for name in files)
    assert any(name.endswith("stat-q_statmap.nii.gz") for name in files)
    return files


def _last_log(out: Path) -> str:
    logs = sorted((out / "logs").glob("eegfmri-*.log"), key=lambda p: p.stat().st_mtime_ns)
    return logs[-1].read_text()


def test_cli_shards_then_merge_equal_one_process(single, stages, layout):
    bids, settings, output = layout
    out = output("sharded")
    assert main(_args(bids, out, settings, "--models-only")) == 0
    assert not any("vaemask" in name for name in _outputs(out))
    for k in (1, 2):
        assert main(_args(bids, out, settings, "--masking-shard", f"{k}/2")) == 0
    parts = out / "work" / "masking_shards"
    manifests = [json.loads((parts / f"shard-{k}-of-2.json").read_text()) for k in (1, 2)]
    assert all(m["cells"] for m in manifests)
    assert not set(manifests[0]["cells"]) & set(manifests[1]["cells"])
    cells = manifests[0]["cells"] + manifests[1]["cells"]
    assert any("-outputs-" in c for c in cells)  # units selected for per-output tests
    assert not any("vaemask" in name for name in _outputs(out))  # shards write no output
    assert main(_args(bids, out, settings)) == 0
    log = _last_log(out)
    n_cells = sum(len(m["cells"]) for m in manifests)
    assert f"merged {n_cells} stored cell(s)" in log and "computed again" not in log
    assert _outputs(out) == single


def test_mismatching_part_is_recomputed(single, stages, layout):
    bids, settings, output = layout
    out = output("stale")
    assert main(_args(bids, out, settings, "--models-only")) == 0
    assert main(_args(bids, out, settings, "--masking-shard", "1/2")) == 0
    manifest = out / "work" / "masking_shards" / "shard-1-of-2.json"
    stale = json.loads(manifest.read_text())
    stale["config"] = "0" * 64  # as if made with other settings
    manifest.write_text(json.dumps(stale))
    assert main(_args(bids, out, settings)) == 0
    log = _last_log(out)
    assert "was made with other config; its cells are computed again" in log
    assert "merged" not in log
    assert _outputs(out) == single


@pytest.mark.parametrize("spec", ["3/2", "0/2", "1/0", "two"])
def test_bad_shard_spec_exits_2_and_writes_nothing(stages, layout, capsys, spec):
    bids, settings, output = layout
    out = output("bad")
    assert main(_args(bids, out, settings, "--masking-shard", spec)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("eegfmri: error: argument --masking-shard: masking shard")
    assert err.endswith("e.g. 1/4.")
    assert [p.name for p in out.iterdir()] == ["sub-01"]


def test_shard_without_models_exits_2(stages, layout, capsys):
    bids, settings, output = layout
    out = output("nomodels")
    assert main(_args(bids, out, settings, "--masking-shard", "1/2")) == 2
    assert "--models-only" in capsys.readouterr().err
    assert not (out / "work" / "masking_shards").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_ranks_equal_one_process(single, layout):
    """Two ranks as torchrun starts them: rank 0 trains, both mask, rank 0 merges."""
    bids, settings, output = layout
    out = output("ranks")
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]),
                                              os.environ.get("PYTHONPATH", "")])}
        procs.append(subprocess.Popen([sys.executable, str(HERE / "masking_group.py"),
                                       *_args(bids, out, settings)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    logs = [p.communicate(timeout=240)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    parts = sorted(p.name for p in (out / "work" / "masking_shards").glob("*.json"))
    assert parts == ["shard-1-of-2.json", "shard-2-of-2.json"]
    assert "merged" in logs[0] and "computed again" not in logs[0]
    assert _outputs(out) == single


def test_bad_shard_in_config_file_exits_2_and_writes_nothing(stages, layout, tmp_path, capsys):
    bids, settings, output = layout
    out = output("badconfig")
    config = tmp_path / "shard.toml"
    config.write_text(settings.read_text() + '\n[execution]\nmasking_shard = "3/2"\n')
    assert main(_args(bids, out, config)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("eegfmri: error: Setting [execution] masking shard '3/2' must be K/N "
                   "with 1 <= K <= N, e.g. 1/4.")
    assert [p.name for p in out.iterdir()] == ["sub-01"]
