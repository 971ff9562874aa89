"""Hostile inputs through the full command line (``main``): each case breaks one thing.

Every case asserts the exit code (2: nothing could be processed; 1: a run failed and the
others finished), one ``eegfmri: error:`` sentence naming the file for exit 2, no
traceback on stderr, and no partial or temporary file in the output directory.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bidstree import tree_hash, write_bold, write_eeg

from bids_app.cli import main
from bids_app.io.atomic import leftover_temporaries

SUB = "sub-01/ses-01"
STEM = "sub-01_ses-01_task-checker"


def _eeg(root: Path, ext: str = ".vhdr") -> Path:
    return root / SUB / "eeg" / f"{STEM}_eeg{ext}"


def _bold(root: Path) -> Path:
    return root / SUB / "func" / f"{STEM}_bold.nii.gz"


def _bold_json(root: Path) -> Path:
    return root / SUB / "func" / f"{STEM}_bold.json"


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


# --- breakers: take the dataset root, damage it, return a fragment the error must name ----
def no_description(root):
    (root / "dataset_description.json").unlink()
    return "not a BIDS dataset"


def bad_description(root):
    (root / "dataset_description.json").write_text("{oops")
    return "dataset_description.json is not valid JSON"


def no_subjects(root):
    for sub in root.glob("sub-*"):
        for p in sorted(sub.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        sub.rmdir()
    return "has no sub-* folders"


def no_eeg(root):
    for p in (root / SUB / "eeg").iterdir():
        p.unlink()
    return "has no EEG recordings"


def no_bold(root):
    for p in (root / SUB / "func").iterdir():
        p.unlink()
    return "has no BOLD runs"


def vhdr_missing_data(root):
    _eeg(root, ".eeg").unlink()
    return f"{STEM}_eeg.vhdr points to DataFile {STEM}_eeg.eeg"


def vhdr_missing_markers(root):
    _eeg(root, ".vmrk").unlink()
    return f"{STEM}_eeg.vhdr points to MarkerFile"


def vhdr_empty(root):
    _eeg(root).write_text("")
    return f"{STEM}_eeg.vhdr cannot be read"


def eeg_data_truncated(root):
    data = _eeg(root, ".eeg")
    data.write_bytes(data.read_bytes()[:1000])
    return f"{STEM}_eeg.vhdr"


def set_truncated(root):
    path = _eeg(root, ".set")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return f"{STEM}_eeg.set cannot be read"


def set_garbage(root):
    _eeg(root, ".set").write_text("this is not a MATLAB file")
    return f"{STEM}_eeg.set cannot be read"


def nan_samples(root):
    write_eeg(_eeg(root), n_vols=8, nan=True)
    return "NaN"


def no_markers(root):
    write_eeg(_eeg(root), n_vols=8, markers=False)
    return "has no R128 volume markers"


def marker_mismatch(root):
    write_eeg(_eeg(root), n_vols=8, n_markers=3)
    return "has 3 R128 markers but BOLD"


def eeg_shorter_than_bold(root):
    write_eeg(_eeg(root), n_vols=7, n_markers=8, extra_s=0.5)  # 15.7 s for 16.8 s of BOLD
    return "shorter than BOLD"


def bold_truncated(root):
    path = _bold(root)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return f"{STEM}_bold.nii.gz is truncated or corrupt"


def bold_not_gzip(root):
    _bold(root).write_bytes(np.random.default_rng(0).bytes(3000))
    return f"{STEM}_bold.nii.gz cannot be read as NIfTI"


def bold_uncompressed_truncated(root):
    loaded = nib.load(_bold(root))
    img = nib.Nifti1Image(np.asarray(loaded.dataobj), loaded.affine, loaded.header)
    _bold(root).unlink()
    plain = root / SUB / "func" / f"{STEM}_bold.nii"
    nib.save(img, plain)
    plain.write_bytes(plain.read_bytes()[:-500])
    return f"{STEM}_bold.nii is truncated"


def bold_3d(root):
    write_bold(_bold(root), n_vols=8, ndim=3)
    return "has 3 dimensions"


def no_repetition_time(root):
    _edit_json(_bold_json(root), RepetitionTime=None)
    return f"{STEM}_bold.json has no valid RepetitionTime"


def negative_repetition_time(root):
    _edit_json(_bold_json(root), RepetitionTime=-2.1)
    return "no valid RepetitionTime"


def no_slice_timing(root):
    _edit_json(_bold_json(root), SliceTiming=None)
    return f"{STEM}_bold.json needs SliceTiming"


def short_slice_timing(root):
    _edit_json(_bold_json(root), SliceTiming=[0.0, 1.0])
    return "one entry per slice (6)"


def slice_timing_beyond_tr(root):
    _edit_json(_bold_json(root), SliceTiming=[0.0, 0.5, 1.0, 1.5, 2.0, 5.0])
    return "outside [0, RepetitionTime=2.1)"


def bold_sidecar_invalid(root):
    _bold_json(root).write_text("{RepetitionTime: 2.1")
    return f"{STEM}_bold.json is not valid JSON"


def bold_sidecar_missing(root):
    _bold_json(root).unlink()
    (root / "task-checker_bold.json").unlink()  # nothing to inherit from either
    return "has no JSON sidecar"


def bold_sidecar_only_inherited(root):
    _bold_json(root).unlink()  # the top-level task-checker_bold.json has no timing
    return "task-checker_bold.json has no valid RepetitionTime"


def events_backwards(root):
    (root / SUB / "func" / f"{STEM}_events.tsv").write_text(
        "onset\tduration\ttrial_type\n4.0\t1\ta\n2.0\t1\tb\n")
    return f"{STEM}_events.tsv has onsets that go backwards (line 3)"


def events_no_onset(root):
    (root / SUB / "eeg" / f"{STEM}_events.tsv").write_text("time\tduration\n1\t1\n")
    return "has no 'onset' column"


def events_text_onset(root):
    (root / SUB / "func" / f"{STEM}_events.tsv").write_text("onset\tduration\nsoon\t1\n")
    return "has non-numeric onsets"


def t1w_truncated(root):
    path = root / SUB / "anat" / "sub-01_ses-01_T1w.nii.gz"
    path.write_bytes(path.read_bytes()[:400])
    return "sub-01_ses-01_T1w.nii.gz"


def t1w_missing(root):
    (root / SUB / "anat" / "sub-01_ses-01_T1w.nii.gz").unlink()
    return f"{STEM}_bold.nii.gz has no T1w image"


def t1w_4d(root):
    path = root / SUB / "anat" / "sub-01_ses-01_T1w.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), path)
    return "T1w"


def bold_gzip_trailer_wrong(root):
    path = _bold(root)
    payload = gzip.decompress(path.read_bytes())[:-200]
    path.write_bytes(gzip.compress(payload))
    return "is truncated or corrupt"


EXIT_2 = [
    no_description, bad_description, no_subjects, no_eeg, no_bold, vhdr_missing_data,
    vhdr_missing_markers, vhdr_empty, eeg_data_truncated, nan_samples, no_markers,
    marker_mismatch, eeg_shorter_than_bold, bold_truncated, bold_not_gzip,
    bold_uncompressed_truncated, bold_3d, no_repetition_time, negative_repetition_time,
    no_slice_timing, short_slice_timing, slice_timing_beyond_tr, bold_sidecar_invalid,
    bold_sidecar_missing, bold_sidecar_only_inherited, events_backwards, events_no_onset,
    events_text_onset, t1w_truncated, t1w_missing, t1w_4d, bold_gzip_trailer_wrong,
]


def run_cli(root: Path, out: Path, *extra: str, validate: bool = False):
    argv = [str(root), str(out), "participant", "-q", *extra]
    if not validate:
        argv.append("--skip-bids-validation")
    return main(argv)


def assert_clean(code, err, expected, fragment, out):
    assert code == expected, err
    assert "Traceback" not in err, err
    if expected == 2:
        last = err.strip().splitlines()[-1]
        assert last.startswith("eegfmri: error: "), err
        assert fragment in last, (fragment, last)
        assert not list(out.glob("sub-*")), "exit 2 must not write subject outputs"
    if out.exists():
        assert leftover_temporaries(out) == []


@pytest.mark.parametrize("breaker", EXIT_2, ids=lambda f: f.__name__)
def test_broken_input_exit_2(breaker, copy_tree, tmp_path, capsys):
    root = copy_tree("set" if "set_" in breaker.__name__ else "one")
    fragment = breaker(root)
    code = run_cli(root, tmp_path / "out")
    assert_clean(code, capsys.readouterr().err, 2, fragment, tmp_path / "out")


def test_not_bids_caught_with_validation_on(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = run_cli(tmp_path / "empty", tmp_path / "out", validate=True)
    assert_clean(code, capsys.readouterr().err, 2, "not a BIDS dataset", tmp_path / "out")


def test_validator_errors_exit_2_unless_skipped(copy_tree, tmp_path, capsys):
    root = copy_tree("one")
    (root / SUB / "func" / f"{STEM}_bolt.nii.gz").write_bytes(_bold(root).read_bytes())
    code = run_cli(root, tmp_path / "out", validate=True)
    err = capsys.readouterr().err
    assert_clean(code, err, 2, "validator error", tmp_path / "out")
    assert "--skip-bids-validation" in err.strip().splitlines()[-1]
    assert run_cli(root, tmp_path / "out2") == 0


@pytest.mark.parametrize("which", ["eeg_without_bold", "bold_without_eeg", "broken_second"])
def test_one_bad_run_others_finish_exit_1(which, copy_tree, tmp_path, capsys):
    root = copy_tree("two")
    tp = root / SUB
    stem = "sub-01_ses-01_task-tp_run-01"
    if which == "eeg_without_bold":
        for p in (tp / "func").glob(f"{stem}_*"):
            p.unlink()
        fragment = f"{stem}_eeg.vhdr has 8 R128 volume markers but no matching BOLD"
    elif which == "bold_without_eeg":
        for p in (tp / "eeg").glob(f"{stem}_*"):
            p.unlink()
        fragment = f"{stem}_bold.nii.gz has no matching EEG"
    else:
        (tp / "eeg" / f"{stem}_eeg.eeg").unlink()
        fragment = f"{stem}_eeg.vhdr points to DataFile"
    out = tmp_path / "out"
    before = tree_hash(root)
    code = run_cli(root, out, "-v")
    err = capsys.readouterr().err
    assert tree_hash(root) == before  # the input dataset is never modified
    assert_clean(code, err, 1, fragment, out)
    assert fragment in err
    done = [p.name for p in out.rglob("*_desc-preproc_eeg.vhdr")]
    assert done == ["sub-01_ses-01_task-checker_desc-preproc_eeg.vhdr"]


def test_eeg_only_task_is_processed(copy_tree, tmp_path):
    root = copy_tree("eegonly")
    assert run_cli(root, tmp_path / "out") == 0
    done = sorted(p.name for p in (tmp_path / "out").rglob("*_desc-preproc_eeg.vhdr"))
    assert done == ["sub-01_ses-01_task-checker_desc-preproc_eeg.vhdr",
                    "sub-01_ses-01_task-checkerout_desc-preproc_eeg.vhdr"]
