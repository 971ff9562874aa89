"""The participant level on hard-mode data (issue 16): every stage runs, few channels bad.

A tiny hard-mode recording (``simulate_dataset(realism="hard")``: per-slice gradient
waveforms, a head jump, vibration lines, unsynchronised clocks, a wrong SliceTiming in the
sidecar, BCG jitter, jittered electrodes and a mismatched head, hard BOLD) goes through the
default participant level. The NATVIEW-size run of the same claim is in
docs/benchmarks.md (End to end at NATVIEW size).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pandas as pd
import pytest

from bids_app.cli import main
from bids_app.simulate.dataset import simulate_dataset

pytestmark = [pytest.mark.slow, pytest.mark.integration]

#: Issue 16: at most this fraction of the (clean) simulated EEG channels flagged bad.
MAX_BAD_FRACTION = 0.10


def test_hard_participant_level_runs_every_stage(tmp_path: Path):
    bids = simulate_dataset(tmp_path / "bids", scale="tiny", layout="bids", seed=0,
                            realism="hard")
    realism = json.loads(next(bids.rglob("realism.json")).read_text())
    assert realism["name"] == "hard"
    out = tmp_path / "derivatives"
    printed, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        code = main([str(bids), str(out), "participant", "-q", "-w", str(tmp_path / "work")])
    assert code == 0, printed.getvalue() + errors.getvalue()
    assert "Traceback" not in errors.getvalue()
    log = next((out / "logs").glob("eegfmri-*-participant.log")).read_text()
    assert " 0 failure(s); stages run: coupling, eeg, fmri, report;" in log, log[-2000:]
    tables = sorted(out.glob("sub-*/**/eeg/*_desc-preproc_channels.tsv"))
    assert tables, "no cleaned EEG channel table written"
    for table in tables:
        channels = pd.read_csv(table, sep="\t")
        eeg = channels[channels["type"] == "EEG"]
        assert len(eeg) > 0, table.name
        assert (eeg["status"] == "bad").mean() <= MAX_BAD_FRACTION, (
            table.name, eeg.loc[eeg["status"] == "bad", "name"].tolist())
