"""Issue 18: the converter handles every quirk of the released NATVIEW metadata.

The fixture (:mod:`natview_quirks`) injects each quirk into the simulated tiny release; the
converted dataset must have 0 validator errors, each quirk must be handled as documented
(docs/outputs.md, "Converting NATVIEW"), and the participant level must accept it without
``--skip-bids-validation``.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from natview_quirks import TP, make_quirky_release

from bids_app.cli import main
from bids_app.errors import InputError
from bids_app.io.validate import find_validator, run_validator
from bids_app.natview.convert import UNALIGNED_DIR, convert_natview, run_status
from bids_app.natview.markers import (
    UNKNOWN_TRIAL_TYPE,
    is_junk_marker,
    normalize_marker,
    repair_volume_markers,
    trial_type,
)

EEG1 = "sub-01/ses-01/eeg"


def _validator_available() -> bool:
    try:
        find_validator()
    except InputError:
        return False
    return True


needs_validator = pytest.mark.skipif(not _validator_available(),
                                     reason="bids-validator-deno is not installed")


@pytest.fixture(scope="module")
def quirky(tiny_release, tmp_path_factory):
    """(release, bids, report): the quirky release and its conversion."""
    base = tmp_path_factory.mktemp("quirks")
    release = make_quirky_release(tiny_release, base / "release")
    report = convert_natview(release, base / "bids")
    return release, base / "bids", report


def _events(bids: Path, stem: str) -> pd.DataFrame:
    sub, ses = stem.split("_")[:2]
    return pd.read_csv(bids / sub / ses / "eeg" / f"{stem}_events.tsv", sep="\t",
                       keep_default_na=False)  # fmt: skip


def _table(bids: Path) -> pd.DataFrame:
    return pd.read_csv(bids / "conversion.tsv", sep="\t", na_values=["n/a"],
                       keep_default_na=False).set_index("run")  # fmt: skip


@needs_validator
def test_quirky_release_converts_with_zero_validator_errors(quirky):
    _, bids, _ = quirky
    result = run_validator(bids)
    assert result.errors == [], result.summary("error")


def test_sync_markers_never_events_and_codes_named_per_task(quirky):
    _, bids, _ = quirky
    stems = ["sub-01_ses-01_task-rest", "sub-01_ses-01_task-peer", TP,
             "sub-01_ses-01_task-checkerout", "sub-02_ses-01_task-dme_run-01"]
    tables = {s: _events(bids, s) for s in stems}
    for stem, events in tables.items():
        assert not events["value"].str.contains("Sync|New Segment").any(), stem
        if "peer" not in stem:
            assert "fixation_dot" not in set(events["trial_type"]), stem
    peer = tables["sub-01_ses-01_task-peer"]
    dots = peer[peer["trial_type"] == "fixation_dot"]
    assert list(dots["value"]) == [f"S{k:>3}" for k in range(2, 25)]
    assert not {"task_start", "task_end"} & set(peer["trial_type"])  # none in the release
    rest = tables["sub-01_ses-01_task-rest"].set_index("value")
    assert rest.loc[["S255", "S 85", "S  4"], "trial_type"].tolist() == [UNKNOWN_TRIAL_TYPE] * 3
    assert set(rest.loc[["S  5"], "trial_type"]) == {"second"}
    checkerout = tables["sub-01_ses-01_task-checkerout"].set_index("value")
    assert checkerout.loc["S 10", "trial_type"] == "checker_rest_block"
    assert checkerout.loc["S 26", "trial_type"] == "checker_flicker_second"
    table = _table(bids)
    assert table.loc["sub-01_ses-01_task-rest", "unknown_codes"] == "S  4; S 85; S255"
    assert table.loc[TP, "unknown_codes"] == "S 85; S255"
    assert trial_type("S  5", "checker") == UNKNOWN_TRIAL_TYPE  # seconds are movie/rest codes


def test_marker_spellings():
    for junk in ("Sync Off", "Sync On", "SyncStatus", "New Segment", "boundary", " sync off "):
        assert is_junk_marker(junk), junk
    for code in ("S  1", "S255", "S 85", "R128", "Synchro"):
        assert not is_junk_marker(code), code
    assert [normalize_marker(m) for m in ("S1", "S 1", "S10", "R 128", "S255")] == [
        "S  1", "S  1", "S 10", "R128", "S255"]  # fmt: skip
    assert trial_type("S  2", "peer") == "fixation_dot"
    assert trial_type("S  2", "dme") == trial_type("S 25", "peer") == UNKNOWN_TRIAL_TYPE


def test_volume_markers_repaired_and_reported(quirky):
    _, bids, _ = quirky
    table = _table(bids)
    tp = table.loc[TP]
    assert (tp["volume_markers"], tp["bold_volumes"], tp["markers_written"]) == (11, 20, 19)
    assert (tp["duplicates_removed"], tp["gap_markers_added"]) == (1, 9)
    assert tp["status"] == "simultaneous" and "19 volume markers for 20" in tp["reason"]
    events = _events(bids, TP)
    samples = events.loc[events["value"] == "R128", "sample"].to_numpy()
    assert len(samples) == 19 and set(samples[1:] - samples[:-1]) == {10_500}
    samples, fix = repair_volume_markers([0, 100, 200, 350], 100.0)
    assert samples == [0, 100, 200, 350] and fix.unfilled_gaps == [(200, 350)]


def test_runs_without_alignable_markers_kept_eeg_only_or_skipped(quirky):
    _, bids, _ = quirky
    table = _table(bids)
    ses, aside = bids / "sub-01/ses-01", bids / UNALIGNED_DIR / "sub-01/ses-01"
    rest, inscapes = table.loc["sub-01_ses-01_task-rest"], table.loc["sub-01_ses-01_task-inscapes"]
    assert rest["status"] == "eeg_only" and rest["volume_markers"] == 0
    assert "0 volume markers for 12 BOLD volumes" in rest["reason"]
    assert (ses / "eeg/sub-01_ses-01_task-rest_eeg.vhdr").is_file()
    assert not list((ses / "func").glob("sub-01_ses-01_task-rest_*"))
    assert (aside / "func/sub-01_ses-01_task-rest_bold.nii.gz").is_file()
    assert inscapes["status"] == "skipped" and inscapes["volume_markers"] == 6
    assert "6 volume markers for 20 BOLD volumes" in inscapes["reason"]
    assert not list(ses.rglob("sub-01_ses-01_task-inscapes_*"))
    assert (aside / "eeg/sub-01_ses-01_task-inscapes_eeg.vhdr").is_file()
    assert (aside / "func/sub-01_ses-01_task-inscapes_bold.nii.gz").is_file()
    assert table.loc["sub-01_ses-01_task-checkerout", "status"] == "eeg_only"
    assert table.loc["sub-01_ses-01_task-peer", "status"] == "simultaneous"
    assert not (bids / "task-rest_bold.json").exists()
    mismatched = {r for r, row in table.iterrows()
                  if pd.notna(row["bold_volumes"])
                  and row["volume_markers"] != row["bold_volumes"]}  # fmt: skip
    listed = {r for r, row in table.iterrows() if pd.notna(row["reason"])}
    assert mismatched == {TP, "sub-01_ses-01_task-rest", "sub-01_ses-01_task-inscapes"}
    assert mismatched <= listed


@pytest.mark.parametrize(("task", "markers", "volumes", "status"), [
    ("dme", 288, 289, "simultaneous"), ("tp", 126, 127, "simultaneous"),
    ("monkey1", 145, 146, "simultaneous"), ("inscapes", 288, 293, "simultaneous"),
    ("checker", 103, 98, "simultaneous"),  # sub-17 ses-02
    ("monkey2", 96, 146, "skipped"), ("checker", 28, 98, "skipped"),  # sub-15, sub-16
    ("rest", 262, 288, "skipped"),  # sub-16 ses-02
    ("rest", 0, 288, "eeg_only"),  # sub-12 ses-01, sub-06 ses-02, ...
    ("checkerout", 0, None, "eeg_only"), ("dme", None, 289, "bold_only"),
])  # fmt: skip
def test_run_status_of_the_release_counts(task, markers, volumes, status):
    """The marker/volume counts found in the release (NATVIEW.md) and what becomes of them."""
    got, reason = run_status(task, markers, volumes)
    assert got == status
    if markers is not None and volumes is not None and markers != volumes:
        assert f"{markers} volume markers for {volumes} BOLD volumes" in reason


def test_converter_sidecars_win_over_the_release(quirky):
    _, bids, report = quirky
    eeg = bids / EEG1
    events_json = json.loads((eeg / f"{TP}_events.json").read_text())
    assert "Levels" not in events_json["value"]
    assert "first EEG sample" in events_json["onset"]["Description"]
    assert set(events_json["trial_type"]["Levels"]) == set(_events(bids, TP)["trial_type"])
    assert not list(bids.rglob("*_channels.json"))
    assert not (eeg / "sub-01_ses-01_electrodes.json").exists()
    assert not list(bids.rglob("*_electrodes.json"))
    for ses in ("sub-01/ses-01", "sub-02/ses-01"):  # sub-02 has no electrodes file at all
        prefix = ses.replace("/", "_")
        coords = json.loads((bids / ses / "eeg" / f"{prefix}_space-MNIColin27_coordsystem.json")
                            .read_text())  # fmt: skip
        assert coords["EEGCoordinateUnits"] == "m"
    text = "\n".join(report.repairs)
    assert "which the release lacks" in text and "electrodes.json" in text
    channels = pd.read_csv(eeg / f"{TP}_channels.tsv", sep="\t")
    assert list(channels.columns) == ["name", "type", "units", "reference", "status"]


def test_participants_levels_from_the_data(quirky):
    _, bids, report = quirky
    sidecar = json.loads((bids / "participants.json").read_text())
    table = pd.read_csv(bids / "participants.tsv", sep="\t")
    assert list(table["participant_id"]) == ["sub-01", "sub-02"]
    for column in ("sex", "race", "ethnicity", "handedness"):
        assert set(sidecar[column]["Levels"]) == set(table[column]), column
    assert "Levels" not in sidecar["height"] and sidecar["height"]["Units"] == "cm"
    assert sidecar["sex"]["Description"] == "sex of the participant"
    assert any("levels of 'sex'" in r for r in report.repairs)


def test_physio_flags_and_fixes(quirky):
    _, bids, _ = quirky
    ses = bids / "sub-02/ses-01"
    stem = "sub-02_ses-01_task-dme_run-01"
    assert not list((ses / "eeg").glob("*recording-respiratory*"))  # the func/ copy stays
    assert not list((ses / "eeg").glob("*recording-trigger*"))
    resp = json.loads((ses / "func" / f"{stem}_recording-respiratory_physio.json").read_text())
    assert resp["respiratory"] == {"Description": "belt", "Units": "a.u."}
    flags = _table(bids).loc[stem, "physio_flags"]
    assert "trigger: sparse: 153 rows for 241.0 s at 62.5 Hz (15063 expected)" in flags
    assert "eyetracking: time steps give 500 Hz, sidecar declares 1000 Hz" in flags
    assert pd.isna(_table(bids).loc[TP, "physio_flags"])  # 250 Hz, regular
    with gzip.open(bids / EEG1 / f"{TP}_recording-eyetracking_physio.tsv.gz", "rt") as f:
        assert "NaN" not in f.read()
    eyes = json.loads((bids / EEG1 / f"{TP}_recording-eyetracking_physio.json").read_text())
    assert eyes["StartTime"] == 18.456 and eyes["Columns"][0] == "Time"


def test_root_files_carried_over(quirky):
    release, bids, _ = quirky
    description = json.loads((bids / "dataset_description.json").read_text())
    assert description["BIDSVersion"] == "1.9.0" and "License" not in description
    assert description["Funding"] == ["NIMH R01MH111439"]
    assert description["HowToAcknowledge"].startswith("Cite Telesford")
    assert description["DatasetDOI"] == "10.15387/fcp_indi"
    assert description["SourceDatasets"][0]["DOI"] == "10.15387/fcp_indi"
    assert (bids / "README.md").read_text().startswith("# NATVIEW EEG-fMRI")
    assert not (bids / "README").exists()
    assert (bids / "code/eeg_preproc.m").read_text() == "% authors' preprocessing\n"
    for name in ("nycq", "psqi", "last_night_sleep"):
        table = pd.read_csv(bids / "phenotype" / f"{name}.tsv", sep="\t", keep_default_na=False)
        assert list(table["participant_id"]) == ["sub-01", "sub-02"]  # sub-03 not converted
        sidecar = json.loads((bids / "phenotype" / f"{name}.json").read_text())
        assert set(sidecar) == set(table.columns)
    psqi = pd.read_csv(bids / "phenotype/psqi.tsv", sep="\t", keep_default_na=False)
    assert psqi.loc[1, "psqi_quality"] == "n/a"  # the short row, padded
    assert {p.name for p in bids.glob("*.tsv")} == {"participants.tsv", "conversion.tsv"}


@needs_validator
def test_participant_level_accepts_the_converted_dataset(quirky, tmp_path, monkeypatch, capsys):
    """Without --skip-bids-validation; light stages (read the EEG back) keep it fast."""
    from bids_app.io.integrity import read_eeg
    from bids_app.workflows import participant as part_wf

    done = []

    def read_back(run, config, writer):
        raw = read_eeg(run.eeg)
        done.append(run.run_id)
        return raw.n_times

    monkeypatch.setitem(part_wf.STAGES, "eeg", read_back)
    for stage in ("fmri", "coupling", "report"):
        monkeypatch.setitem(part_wf.STAGES, stage, None)
    _, bids, _ = quirky
    code = main([str(bids), str(tmp_path / "out"), "participant", "-q", "--omp-nthreads", "1"])
    assert code == 0, capsys.readouterr().err
    assert len(done) == 6  # every EEG recording of the dataset, none rejected


def test_cli_prints_the_conversion_table(quirky, tmp_path, capsys):
    release, _, _ = quirky
    small = tmp_path / "release"
    shutil.copytree(release, small, copy_function=os.link,
                    ignore=shutil.ignore_patterns("sub-01", "sourcedata", "stimuli"))
    assert main(["convert", "natview", str(small), str(tmp_path / "bids")]) == 0
    out = capsys.readouterr().out
    assert "sub-02_ses-01_task-dme_run-01" in out and "simultaneous" in out
    assert (tmp_path / "bids/conversion.tsv").is_file()


@pytest.mark.parametrize("kind", ["symlink", "pointer", "empty"])
def test_placeholders_refused_first(tiny_release, tmp_path, capsys, kind):
    release = tmp_path / "release"
    shutil.copytree(tiny_release, release, copy_function=os.link,
                    ignore=shutil.ignore_patterns("sourcedata", "stimuli"))
    target = release / EEG1 / f"{TP}_eeg.set"
    target.unlink()
    if kind == "symlink":  # locked annex file, content not fetched
        os.symlink("../../../.git/annex/objects/Xk/3q/SHA256E-s61460096--ab.set/x.set", target)
    elif kind == "pointer":  # unlocked annex file
        target.write_text("/annex/objects/SHA256E-s61460096--abcdef.set\n")
    else:
        target.write_bytes(b"")
    out = tmp_path / "bids"
    with pytest.raises(InputError) as err:
        convert_natview(release, out)
    message = str(err.value)
    assert str(target) in message
    if kind == "empty":
        assert "is empty (0 bytes)" in message
    else:
        assert "git-annex pointer" in message and "datalad get" in message
        assert "git annex get" in message
    assert not out.exists()  # nothing written
    assert main(["convert", "natview", str(release), str(tmp_path / "b2")]) == 2
    assert not (tmp_path / "b2").exists()
