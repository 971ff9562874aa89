"""Resumable stages: an interrupted run, rerun, resumes finished stages from the work dir.

The participant case interrupts the fMRI stage with SIGINT (KeyboardInterrupt) after
the EEG stage finished; the rerun must not recompute the EEG stage. The group case kills
the group level with SIGKILL (or stops it with SIGTERM) in the middle of the masking
stage (after models finished);
the rerun must resume the models stage, finish, leave no temporary file, and end with
outputs byte-identical to a run that was never interrupted. The stages are light but
real (they read the participant outputs and write through the derivatives writer).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bids_app
from bids_app.cli import main
from bids_app.io.atomic import leftover_temporaries
from bids_app.workflows import participant as part_wf

HERE = Path(__file__).parent
SKIP = ("logs", ".eegfmri-locks", "work")


def outputs(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every output (logs, locks and the work dir aside)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in SKIP}


def test_participant_sigint_then_rerun_resumes_the_eeg_stage(copy_tree, tmp_path,
                                                              monkeypatch, capsys):
    root = copy_tree("one")
    calls: list[str] = []
    interrupt = {"fmri": True}
    light = part_wf.STAGES["eeg"]  # the light EEG stage of conftest

    def eeg(run, config, writer):
        calls.append("eeg")
        return light(run, config, writer)

    def fmri(run, config, writer, work_dir):
        calls.append("fmri")
        if interrupt["fmri"]:
            raise KeyboardInterrupt
        return {"bold": run.bold.name}

    monkeypatch.setitem(part_wf.STAGES, "eeg", eeg)
    monkeypatch.setitem(part_wf.STAGES, "fmri", fmri)
    argv = [str(root), str(tmp_path / "out"), "participant", "-q", "--skip-bids-validation"]
    assert main(argv) == 130
    assert "stopped by SIGINT" in capsys.readouterr().err
    assert calls == ["eeg", "fmri"]
    interrupt["fmri"] = False
    assert main(argv) == 0
    assert calls == ["eeg", "fmri", "fmri"]  # the EEG stage was resumed, not recomputed
    interrupt["fmri"] = False
    reference = tmp_path / "reference"
    assert main([str(root), str(reference), *argv[2:]]) == 0
    assert outputs(tmp_path / "out") == outputs(reference)


def test_changed_input_invalidates_the_checkpoint(copy_tree, tmp_path, monkeypatch):
    root = copy_tree("one")
    calls: list[str] = []
    light = part_wf.STAGES["eeg"]

    def eeg(run, config, writer):
        calls.append("eeg")
        return light(run, config, writer)

    monkeypatch.setitem(part_wf.STAGES, "eeg", eeg)
    argv = [str(root), str(tmp_path / "out"), "participant", "-q", "--skip-bids-validation"]
    assert main(argv) == 0 and main(argv) == 0
    assert calls == ["eeg"]
    events = root / "sub-01" / "ses-01" / "eeg" / "sub-01_ses-01_task-checker_events.tsv"
    events.write_text(events.read_text() + "12.0\t0.0\tlate\n")
    assert main(argv) == 0
    assert calls == ["eeg", "eeg"]
    preproc = next((tmp_path / "out").rglob("*_desc-preproc_eeg.vmrk"))
    preproc.unlink()  # a deleted output is recomputed too
    assert main(argv) == 0
    assert calls == ["eeg", "eeg", "eeg"] and preproc.exists()
    assert main(argv + ["--random-seed", "7"]) == 0  # a setting that changes results
    assert calls == ["eeg"] * 4


def _group(out: Path) -> list[str]:
    return [sys.executable, str(HERE / "light_group.py"), str(out.parent / "bids"), str(out),
            "group", "-q"]


def _env(calls: Path) -> dict[str, str]:
    repo = Path(bids_app.__file__).parent.parent
    return dict(os.environ, PYTHONPATH=f"{repo}{os.pathsep}{HERE}", LIGHT_CALLS=str(calls))


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_group_killed_then_resumed_is_byte_identical(signum, clean_trees, tmp_path, capsys):
    import shutil

    shutil.copytree(clean_trees["two"], tmp_path / "bids")
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    for out in (reference, killed):
        assert main([str(tmp_path / "bids"), str(out), "participant", "-q",
                     "--skip-bids-validation"]) == 0
    calls_ref, calls = tmp_path / "calls_ref.txt", tmp_path / "calls.txt"
    done = subprocess.run(_group(reference), env=_env(calls_ref),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert calls_ref.read_text().split() == ["models", "masking", "report"]

    proc = subprocess.Popen(_group(killed), env=_env(calls), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(killed.glob("sub-*/**/*_desc-vaemask_events.tsv")):
        assert proc.poll() is None, "the group level ended before the kill"
        assert time.monotonic() < deadline, "masking never started"
        time.sleep(0.02)
    os.killpg(proc.pid, signum)
    assert proc.wait() == (-signum if signum == signal.SIGKILL else 128 + signum)
    assert calls.read_text().split() == ["models", "masking"]
    assert (killed / "work" / "checkpoints" / "group" / "group-models.pkl").is_file()
    assert not (killed / "group.html").exists()  # killed in the middle of masking

    done = subprocess.run(_group(killed), env=_env(calls), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert calls.read_text().split() == ["models", "masking", "masking", "report"]
    assert leftover_temporaries(killed) == []  # output and work dir (inside it)
    expected, got = outputs(reference), outputs(killed)
    assert sorted(got) == sorted(expected)
    assert [name for name in expected if expected[name] != got[name]] == []
