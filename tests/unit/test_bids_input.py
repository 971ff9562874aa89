"""BidsInput: subjects, EEG/BOLD pairing, filters, T1w, and the up-front file checks."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from bidstree import make_bids_tree, write_eeg  # noqa: E402

from bids_app.config import Config  # noqa: E402
from bids_app.errors import InputError  # noqa: E402
from bids_app.io.bids import BidsInput, load_filter_file, parse_entities  # noqa: E402
from bids_app.io.preflight import check_run  # noqa: E402


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("bids") / "ds"
    return make_bids_tree(root, subjects=("01", "02"),
                          runs=(("checker", None), ("tp", "01"), ("tp", "02")),
                          eeg_only=("checkerout",))


def test_parse_entities():
    ents, suffix, ext = parse_entities("sub-01_ses-02_task-tp_run-01_bold.nii.gz")
    assert ents == {"sub": "01", "ses": "02", "task": "tp", "run": "01"}
    assert (suffix, ext) == ("bold", ".nii.gz")


def test_subjects_and_pairing(tree):
    t0 = time.perf_counter()
    layout = BidsInput(tree)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0  # one directory walk
    assert layout.subjects() == ["01", "02"]
    runs = layout.runs("sub-01")
    assert [r.run_id for r in runs] == [
        "sub-01_ses-01_task-checker", "sub-01_ses-01_task-checkerout",
        "sub-01_ses-01_task-tp_run-01", "sub-01_ses-01_task-tp_run-02"]
    paired = [r for r in runs if r.simultaneous]
    assert len(paired) == 3
    for run in paired:
        stem = run.run_id
        assert run.eeg.name == f"{stem}_eeg.vhdr" and run.bold.name == f"{stem}_bold.nii.gz"
        assert run.bold_json.name == f"{stem}_bold.json"
        assert run.eeg_sidecar.name == f"{stem}_eeg.json"
        assert run.channels.name == f"{stem}_channels.tsv"
        assert run.events == run.bold_events and run.events.parent.name == "func"
        assert run.eeg_events.parent.name == "eeg"
        assert run.t1w.name == "sub-01_ses-01_T1w.nii.gz"
    eeg_only = runs[1]
    assert eeg_only.bold is None and eeg_only.eeg is not None and not eeg_only.simultaneous
    assert eeg_only.entities == {"sub": "01", "ses": "01", "task": "checkerout"}


def test_selection_and_filter_file(tree, tmp_path):
    layout = BidsInput(tree)
    assert [r.run_id for r in layout.runs("02", tasks=["tp"], sessions=["ses-01"])] == [
        "sub-02_ses-01_task-tp_run-01", "sub-02_ses-01_task-tp_run-02"]
    assert layout.runs("01", sessions=["02"]) == []
    flt = tmp_path / "filter.json"
    flt.write_text(json.dumps({"bold": {"task": "tp", "run": [2]},
                               "eeg": {"task": "tp", "run": "02"}, "t1w": {"session": None}}))
    runs = layout.runs("01", filters=load_filter_file(flt))
    assert [r.run_id for r in runs] == ["sub-01_ses-01_task-tp_run-02"]
    assert runs[0].simultaneous and runs[0].t1w is None  # T1w has a session: filtered out
    flt.write_text('{"bold": {"sesion": "01"}}')
    with pytest.raises(InputError, match="unknown entity 'sesion'"):
        load_filter_file(flt)
    flt.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_filter_file(flt)


def test_errors_name_the_problem(tree, tmp_path):
    with pytest.raises(InputError, match=r"existing labels: 01, 02"):
        BidsInput(tree).runs("07")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a BIDS dataset"):
        BidsInput(tmp_path / "empty")
    with pytest.raises(InputError, match="does not exist"):
        BidsInput(tmp_path / "missing")


def test_set_preferred_and_run_labels_compared_as_numbers(tmp_path):
    root = make_bids_tree(tmp_path / "ds", runs=(("tp", "01"),), session=None)
    eeg_dir = root / "sub-01" / "eeg"
    write_eeg(eeg_dir / "sub-01_task-tp_run-01_eeg.set", n_vols=8)
    run = BidsInput(root).runs("01")[0]
    assert run.eeg.suffix == ".set" and run.bold is not None  # NATVIEW: the .set has data
    for p in eeg_dir.glob("sub-01_task-tp_run-01_*"):
        p.rename(p.with_name(p.name.replace("run-01", "run-1")))
    runs = BidsInput(root).runs("01")
    assert len(runs) == 1 and runs[0].simultaneous


def test_check_run_accepts_valid_and_names_broken_file(tree, tmp_path):
    config = Config()
    layout = BidsInput(tree)
    for run in layout.runs("01"):
        assert check_run(run, config) == []
    root = tmp_path / "copy"
    shutil.copytree(tree, root)
    run = BidsInput(root).runs("01", tasks=["checker"])[0]
    meta = json.loads(run.bold_json.read_text())
    del meta["SliceTiming"]
    run.bold_json.write_text(json.dumps(meta))
    problems = check_run(run, config)
    assert len(problems) == 1 and str(run.bold_json) in problems[0]
    assert "SliceTiming" in problems[0]
    # The fMRIPrep-derivatives backend does not need raw BOLD timing.
    assert check_run(run, config.replace("fmri", backend="derivatives")) == []


def test_sidecar_inheritance(tmp_path):
    root = make_bids_tree(tmp_path / "ds", runs=(("rest", None),))
    run_json = root / "sub-01" / "ses-01" / "func" / "sub-01_ses-01_task-rest_bold.json"
    run_json.write_text(json.dumps({"SliceTiming": [0.0, 0.3, 0.6, 0.9, 1.2, 1.5]}))
    (root / "task-rest_bold.json").write_text(json.dumps(
        {"TaskName": "rest", "RepetitionTime": 3.0, "EchoTime": 0.03}))
    (root / "sub-01" / "sub-01_task-rest_bold.json").write_text(
        json.dumps({"RepetitionTime": 2.1}))
    (root / "task-other_bold.json").write_text(json.dumps({"RepetitionTime": 9.0}))
    run = BidsInput(root).runs("01")[0]
    assert [p.name for p in run.extra["bold_sidecars"]] == [
        "task-rest_bold.json", "sub-01_task-rest_bold.json", run_json.name]
    meta = run.metadata("bold")
    assert meta["RepetitionTime"] == 2.1 and meta["EchoTime"] == 0.03  # specific wins
    assert len(meta["SliceTiming"]) == 6
    assert check_run(run, Config()) == []


def test_metadata_of_hand_built_runfiles(tmp_path):
    from bids_app.io.bids import RunFiles

    side = tmp_path / "x_bold.json"
    side.write_text('{"RepetitionTime": 2.1}')
    assert RunFiles(entities={"sub": "01"}, bold_json=side).metadata("bold") == {
        "RepetitionTime": 2.1}
    assert RunFiles(entities={"sub": "01"}).metadata("eeg") == {}
    side.write_text("[1]")
    with pytest.raises(InputError, match="must hold a JSON object"):
        RunFiles(entities={"sub": "01"}, bold_json=side).metadata("bold")
