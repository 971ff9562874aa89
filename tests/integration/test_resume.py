"""A participant run killed with SIGKILL and restarted ends with the uninterrupted outputs.

This is the situation of a cluster job hitting its time limit or being pre-empted: the
process gets no chance to clean up. The restart must finish, leave no temporary file, and
produce outputs byte-identical to a run that was never interrupted (logs aside).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bids_app.io.atomic import leftover_temporaries

pytestmark = [pytest.mark.slow, pytest.mark.integration]

#: Fixed seed of the kill time, so a failure can be reproduced; the time itself is random
#: within the run (see _kill_after).
KILL_SEED = 20261125


def _command(bids: Path, out: Path, work: Path) -> list[str]:
    return [sys.executable, "-m", "bids_app", str(bids), str(out), "participant",
            "-w", str(work), "--skip-bids-validation", "-q"]


def _run(bids: Path, out: Path, work: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(_command(bids, out, work), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return time.perf_counter() - start


def _kill_after(bids: Path, out: Path, work: Path, delay: float) -> None:
    proc = subprocess.Popen(_command(bids, out, work), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    else:
        pytest.fail(f"the run finished before the kill at {delay:.1f} s")


def _outputs(root: Path) -> dict[str, bytes]:
    skip = ("logs", ".eegfmri-locks")
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in skip}


def test_sigkill_then_restart_reproduces_uninterrupted_run(tiny_bids, tmp_path):
    reference = tmp_path / "reference"
    duration = _run(tiny_bids, reference, tmp_path / "work_reference")

    delay = random.Random(KILL_SEED).uniform(0.3, 0.8) * duration
    killed = tmp_path / "killed"
    _kill_after(tiny_bids, killed, tmp_path / "work_killed", delay)
    _run(tiny_bids, killed, tmp_path / "work_killed")

    assert leftover_temporaries(killed) == []
    expected, got = _outputs(reference), _outputs(killed)
    assert sorted(got) == sorted(expected)
    differing = [name for name in expected if expected[name] != got[name]]
    assert differing == [], f"outputs differ after kill at {delay:.1f} s: {differing}"
