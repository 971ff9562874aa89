"""Shared fixtures of the reliability tests: clean tiny datasets and light stages.

The real processing stages are replaced by one light EEG stage (read the recording, write
it back as a derivative through the writer), so these tests measure how the application
shell treats hostile inputs, not how long preprocessing takes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mne
import pytest
from bidstree import make_bids_tree

from bids_app.io.integrity import read_eeg
from bids_app.workflows import group as group_wf
from bids_app.workflows import participant as part_wf


def light_eeg_stage(run, config, writer):
    """Load the EEG and write it as ``desc-preproc`` BrainVision (a real, small stage)."""
    raw = read_eeg(run.eeg)
    raw.load_data(verbose="error")
    path = writer.build_path({**run.entities, "desc": "preproc"}, suffix="eeg",
                             extension=".vhdr", datatype="eeg")
    writer.write_raw_brainvision(path, raw)
    return path


@pytest.fixture(autouse=True)
def light_stages(monkeypatch):
    monkeypatch.setitem(part_wf.STAGES, "eeg", light_eeg_stage)
    for stage in ("fmri", "coupling", "report"):
        monkeypatch.setitem(part_wf.STAGES, stage, None)
    for stage in group_wf.STAGES:
        monkeypatch.setitem(group_wf.STAGES, stage, None)
    mne.set_log_level("error")


@pytest.fixture(scope="session")
def clean_trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("clean")
    return {
        "one": make_bids_tree(base / "one"),
        "two": make_bids_tree(base / "two", runs=(("checker", None), ("tp", "01"))),
        "set": make_bids_tree(base / "set", eeg_format=".set"),
        "eegonly": make_bids_tree(base / "eegonly", runs=(("checker", None),),
                                  eeg_only=("checkerout",)),
    }


@pytest.fixture
def copy_tree(clean_trees, tmp_path):
    """Return a function giving a fresh, writable copy of a named clean dataset."""

    def make(name: str = "one") -> Path:
        dest = tmp_path / f"bids-{name}"
        shutil.copytree(clean_trees[name], dest)
        return dest

    return make
