"""Hostile inputs caught by the pre-flight (issue 19): one broken thing per case.

Each case damages a fresh copy of the tiny dataset (or passes a hostile option) and runs
the full command line. It asserts the exit code, one ``eegfmri: error:`` sentence on one
line that names the file or option, no traceback, no output at all (the pre-flight runs
before the output folder is created) and an input tree unchanged by the run. The cases
run with ``--skip-bids-validation`` (eegfmri's own checks must catch them); the eight
failures of the issue run again with the validator on.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from bidstree import TR, slice_timing, tree_hash

from bids_app.cli import main

SUB = "sub-01/ses-01"
STEM = "sub-01_ses-01_task-checker"


def eeg_file(root: Path, ext: str = ".vhdr") -> Path:
    return root / SUB / "eeg" / f"{STEM}_eeg{ext}"


def func_file(root: Path, suffix_ext: str) -> Path:
    return root / SUB / "func" / f"{STEM}_{suffix_ext}"


def set_json(path: Path, text: str | None = None, **changes) -> None:
    """Change keys of a JSON file (``text``: raw replacement, e.g. with NaN)."""
    if text is None:
        data = json.loads(path.read_text())
        data.update(changes)
        text = json.dumps(data)
    path.write_text(text)


def replace_by_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "inside.txt").write_text("not a file\n")


def replace_by_broken_link(path: Path) -> None:
    """DataLad/git-annex style: a symbolic link into an annex object never fetched."""
    path.unlink()
    path.symlink_to(f"../../../.git/annex/objects/Xy/Zw/MD5E-s1--0.{path.name}/x")


def edit_vhdr(root: Path, key: str, value: str) -> None:
    vhdr = eeg_file(root)
    text = re.sub(rf"(?m)^{key}=.*$", f"{key}={value}", vhdr.read_text())
    vhdr.write_text(text)


def flip_middle(path: Path, n: int = 16) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + n] = bytes(b ^ 0xFF for b in data[mid : mid + n])
    path.write_bytes(bytes(data))


def rename_subject(root: Path, new: str) -> None:
    old = root / "sub-01"
    for path in sorted(old.rglob("*sub-01*"), key=lambda p: -len(p.parts)):
        path.rename(path.with_name(path.name.replace("sub-01", new)))
    old.rename(root / new)


# --- the eight failures of the issue -------------------------------------------------------
def bold_json_is_directory(root):
    replace_by_dir(func_file(root, "bold.json"))
    return f"{STEM}_bold.json is a directory, not a file"


def vhdr_datafile_absolute_outside(root):
    edit_vhdr(root, "DataFile", "/etc/hostname")
    return f"{STEM}_eeg.vhdr points to DataFile /etc/hostname, outside the dataset"


def bold_flipped_bytes(root):
    flip_middle(func_file(root, "bold.nii.gz"))
    return f"{STEM}_bold.nii.gz is truncated or corrupt (gzip"


def repetition_time_infinity(root):
    path = func_file(root, "bold.json")
    set_json(path, json.dumps(json.loads(path.read_text()) | {"RepetitionTime": 1e400}))
    return f"{STEM}_bold.json has no valid RepetitionTime (inf)"


def slice_timing_nan(root):
    path = func_file(root, "bold.json")
    timing = slice_timing(6)
    set_json(path, json.dumps({"TaskName": "checker", "RepetitionTime": TR,
                               "SliceTiming": [*timing[:-1], float("nan")]}))
    return f"{STEM}_bold.json has SliceTiming entries that are not finite numbers (nan)"


def subject_label_unicode(root):
    rename_subject(root, "sub-ü01")
    return "sub-ü01 has an invalid name: the label 'ü01' of entity 'sub'"


FAILURES = [bold_json_is_directory, vhdr_datafile_absolute_outside, bold_flipped_bytes,
            repetition_time_infinity, slice_timing_nan, subject_label_unicode]


# --- unclear or missing messages ----------------------------------------------------------
def eeg_vhdr_is_directory(root):
    for ext in (".vhdr", ".eeg", ".vmrk"):
        eeg_file(root, ext).unlink()
    eeg_file(root).mkdir()
    return f"Input file {eeg_file(root)} is a directory, not a file"


def eeg_vhdr_broken_symlink(root):
    replace_by_broken_link(eeg_file(root))
    return f"{STEM}_eeg.vhdr is a broken symbolic link"


def bold_broken_symlink(root):
    replace_by_broken_link(func_file(root, "bold.nii.gz"))
    return "run 'datalad get' on it first"


def eeg_data_broken_symlink(root):
    replace_by_broken_link(eeg_file(root, ".eeg"))
    return f"{STEM}_eeg.eeg is a broken symbolic link"


def sampling_interval_zero(root):
    edit_vhdr(root, "SamplingInterval", "0")
    return f"{STEM}_eeg.vhdr has SamplingInterval=0; it must be the positive time"


def channel_count_mismatch(root):
    edit_vhdr(root, "NumberOfChannels", "8")
    return f"{STEM}_eeg.vhdr declares NumberOfChannels=8 but lists 7 channels"


def markers_past_the_end(root):
    vmrk = eeg_file(root, ".vmrk")
    lines = []
    for line in vmrk.read_text().splitlines():
        if line.startswith("Mk") and ",R128," in line:
            fields = line.split(",")
            fields[2] = str(int(fields[2]) + 100_000)
            line = ",".join(fields)
        lines.append(line)
    vmrk.write_text("\n".join(lines) + "\n")
    return f"{STEM}_eeg.vhdr has 8 R128 markers of which 8 lie after the end of its data"


def derivatives_as_bids_dir(root):
    set_json(root / "dataset_description.json", DatasetType="derivative",
             GeneratedBy=[{"Name": "fMRIPrep"}])
    return "is a BIDS derivatives dataset (DatasetType 'derivative' in " \
        "dataset_description.json), not raw data; give the raw EEG-fMRI dataset as " \
        "bids_dir and fMRIPrep outputs with --fmriprep-dir"


def sampling_frequency(value):
    def breaker(root):
        set_json(eeg_file(root, ".json"), SamplingFrequency=value)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return f"{STEM}_eeg.json has SamplingFrequency {value:g} Hz but the recording"
        return f"{STEM}_eeg.json has SamplingFrequency {value!r}; it must be a finite number"

    breaker.__name__ = f"sampling_frequency_{value}"
    return breaker


def channels_tsv(change):
    def breaker(root):
        path = eeg_file(root).with_name(f"{STEM}_channels.tsv")
        lines = path.read_text().splitlines()
        if change == "extra":
            lines.append("EOG\tEOG\tuV")
        elif change == "missing":
            lines = lines[:-1]
        else:
            lines[1] = lines[1].replace("Fp1", "AF7")
        path.write_text("\n".join(lines) + "\n")
        return f"{STEM}_channels.tsv lists"

    breaker.__name__ = f"channels_tsv_{change}"
    return breaker


def repetition_time_against_markers(root):
    set_json(func_file(root, "bold.json"), RepetitionTime=1.0,
             SliceTiming=slice_timing(6, tr=1.0))
    return (f"{STEM}_bold.json has RepetitionTime 1 s but the R128 markers of EEG file "
            f"{STEM}_eeg.vhdr are 2.1 s apart (median)")


UNCLEAR = [eeg_vhdr_is_directory, eeg_vhdr_broken_symlink, bold_broken_symlink,
           eeg_data_broken_symlink, sampling_interval_zero, channel_count_mismatch,
           markers_past_the_end, derivatives_as_bids_dir,
           *(sampling_frequency(v) for v in (0, -5000, 250, "100", True, None)),
           *(channels_tsv(c) for c in ("extra", "missing", "renamed")),
           repetition_time_against_markers]


# --- more hostile files --------------------------------------------------------------------
def vhdr_datafile_traversal(root):
    edit_vhdr(root, "DataFile", "../../../../../../../../etc/hostname")
    return "points to DataFile ../../../../../../../../etc/hostname, outside the dataset"


def vhdr_markerfile_outside(root):
    edit_vhdr(root, "MarkerFile", "/etc/passwd")
    return f"{STEM}_eeg.vhdr points to MarkerFile /etc/passwd, outside the dataset"


def sampling_interval_negative(root):
    edit_vhdr(root, "SamplingInterval", "-200")
    return "has SamplingInterval=-200; it must be the positive time"


def sampling_interval_text(root):
    edit_vhdr(root, "SamplingInterval", "fast")
    return "has SamplingInterval=fast"


def channel_count_text(root):
    edit_vhdr(root, "NumberOfChannels", "seven")
    return "declares NumberOfChannels=seven but lists 7 channels"


def vhdr_not_brainvision(root):
    eeg_file(root).write_text("[Common Infos]\nDataFile=x.eeg\n")
    return f"{STEM}_eeg.vhdr cannot be read (not a BrainVision header"


def channels_tsv_no_name(root):
    path = eeg_file(root).with_name(f"{STEM}_channels.tsv")
    path.write_text(path.read_text().replace("name\t", "label\t", 1))
    return f"{STEM}_channels.tsv has no 'name' column"


def unreadable(which: str, how: str):
    files = {
        "channels": lambda r: eeg_file(r).with_name(f"{STEM}_channels.tsv"),
        "eeg_events": lambda r: eeg_file(r).with_name(f"{STEM}_events.tsv"),
        "eeg_json": lambda r: eeg_file(r, ".json"),
        "bold_events": lambda r: func_file(r, "events.tsv"),
        "bold": lambda r: func_file(r, "bold.nii.gz"),
        "t1w": lambda r: r / SUB / "anat" / "sub-01_ses-01_T1w.nii.gz",
        "task_json": lambda r: r / "task-checker_bold.json",
    }

    def breaker(root):
        path = files[which](root)
        (replace_by_dir if how == "dir" else replace_by_broken_link)(path)
        return (f"{path.name} is a directory, not a file" if how == "dir"
                else f"{path.name} is a broken symbolic link")

    breaker.__name__ = f"{which}_{how}"
    return breaker


def t1w_flipped_bytes(root):
    flip_middle(root / SUB / "anat" / "sub-01_ses-01_T1w.nii.gz")
    return "T1w"


def bold_crc_flipped(root):
    path = func_file(root, "bold.nii.gz")
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF  # inside the CRC-32 of the gzip trailer
    path.write_bytes(bytes(data))
    return f"{STEM}_bold.nii.gz is truncated or corrupt (gzip"


def bold_json_value(key: str, value_text: str, fragment: str):
    def breaker(root):
        path = func_file(root, "bold.json")
        data = json.loads(path.read_text())
        data[key] = "@@"
        path.write_text(json.dumps(data).replace('"@@"', value_text))
        return f"{STEM}_bold.json {fragment}"

    breaker.__name__ = f"bold_json_{key}_{re.sub(r'[^a-zA-Z0-9]+', '_', value_text)}"
    return breaker


def eeg_json_not_object(root):
    eeg_file(root, ".json").write_text("[1, 2]")
    return f"{STEM}_eeg.json must hold a JSON object"


def eeg_json_invalid(root):
    eeg_file(root, ".json").write_text("{SamplingFrequency: 100")
    return f"{STEM}_eeg.json is not valid JSON"


def description_is_directory(root):
    replace_by_dir(root / "dataset_description.json")
    return "dataset_description.json is a directory, not a file"


def file_label_unicode(root):
    for path in (root / SUB / "eeg").glob(f"{STEM}_events.tsv"):
        path.rename(path.with_name(path.name.replace("checker", "chécker")))
    return "the label 'chécker' of entity 'task' uses characters BIDS does not allow"


def file_label_with_dash(root):
    path = func_file(root, "events.tsv")
    path.rename(path.with_name(path.name.replace("task-checker", "task-check-er")))
    return "the label 'check-er' of entity 'task'"


FILES = [
    vhdr_datafile_traversal, vhdr_markerfile_outside, sampling_interval_negative,
    sampling_interval_text, channel_count_text, vhdr_not_brainvision, channels_tsv_no_name,
    *(unreadable(w, h) for w in ("channels", "eeg_events", "eeg_json", "bold_events",
                                 "bold", "t1w", "task_json") for h in ("dir", "link")),
    t1w_flipped_bytes, bold_crc_flipped,
    bold_json_value("RepetitionTime", "NaN", "has no valid RepetitionTime (nan)"),
    bold_json_value("RepetitionTime", "-Infinity", "has no valid RepetitionTime (-inf)"),
    bold_json_value("RepetitionTime", '"2.1"', "has no valid RepetitionTime ('2.1')"),
    bold_json_value("RepetitionTime", "true", "has no valid RepetitionTime (True)"),
    bold_json_value("RepetitionTime", "0", "has no valid RepetitionTime (0)"),
    bold_json_value("SliceTiming", "[0, 0.3, 0.6, 0.9, 1.2, Infinity]",
                    "has SliceTiming entries that are not finite numbers (inf)"),
    bold_json_value("SliceTiming", '[0, 0.3, 0.6, 0.9, 1.2, "1.5"]',
                    "has SliceTiming entries that are not finite numbers ('1.5')"),
    bold_json_value("SliceTiming", "[0, 0.3, 0.6, 0.9, 1.2, -0.1]",
                    "has SliceTiming values outside [0, RepetitionTime=2.1)"),
    bold_json_value("SliceTiming", "0.5", "needs SliceTiming with one entry per slice (6)"),
    eeg_json_not_object, eeg_json_invalid, description_is_directory, file_label_unicode,
    file_label_with_dash,
]


def run_cli(argv: list, capsys, *, validate: bool = False) -> tuple[int, str]:
    argv = [str(a) for a in argv] + ["-q"] + ([] if validate else ["--skip-bids-validation"])
    code = main(argv)
    return code, capsys.readouterr().err


def assert_refused(code: int, err: str, fragment: str, out: Path, *, expected: int = 2):
    """Exit code, one one-line sentence naming the file, no traceback, no output."""
    assert code == expected, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    if lines[0].startswith("usage: "):  # argparse prints its usage above the sentence
        lines = [line for line in lines if not line.startswith(("usage: ", " "))]
    assert len(lines) == 1, err
    assert lines[0].startswith("eegfmri: error: "), lines[0]
    assert lines[0].endswith(".") or lines[0].startswith("eegfmri: error: argument "), lines[0]
    assert fragment in lines[0], (fragment, lines[0])
    assert not os.path.exists(out), sorted(out.rglob("*"))


@pytest.mark.parametrize("breaker", FAILURES + UNCLEAR + FILES, ids=lambda f: f.__name__)
def test_refused_before_any_output(breaker, copy_tree, tmp_path, capsys):
    root = copy_tree("one")
    fragment = breaker(root)
    if breaker is subject_label_unicode:
        fragment = f"{root / 'sub-ü01'} has an invalid name: the label 'ü01'"
    before = tree_hash(root)
    out = tmp_path / "out"
    code, err = run_cli([root, out, "participant"], capsys)
    assert_refused(code, err, fragment, out)
    assert tree_hash(root) == before


@pytest.mark.parametrize("breaker", FAILURES, ids=lambda f: f.__name__)
def test_failures_refused_with_the_validator_on(breaker, copy_tree, tmp_path, capsys):
    root = copy_tree("one")
    breaker(root)
    before = tree_hash(root)
    out = tmp_path / "out"
    code, err = run_cli([root, out, "participant"], capsys, validate=True)
    assert code == 2, err
    assert "Traceback" not in err and not os.path.exists(out)
    last = err.strip().splitlines()[-1]
    named = "sub-ü01" if breaker is subject_label_unicode else STEM
    assert last.startswith("eegfmri: error: ") and named in last, last
    assert tree_hash(root) == before


def long_path(tmp_path: Path, *, part: int, depth: int) -> Path:
    return tmp_path.joinpath(*["d" * part] * depth)


OPTIONS = {
    "work_dir_inside_input": (
        lambda root, tmp: ["-w", root / "work"],
        "Work directory (-w) {root}/work is inside the input BIDS directory {root}"),
    "work_dir_is_input": (
        lambda root, tmp: ["-w", root], "Work directory (-w) {root} is the input BIDS"),
    "work_dir_long": (
        lambda root, tmp: ["-w", long_path(tmp, part=200, depth=20)],
        "bytes long; eegfmri needs at most 3796 (the system limit 4096"),
    "output_dir_long": (
        lambda root, tmp: [], "bytes long; eegfmri needs at most 3796"),
    "output_dir_name_too_long": (
        lambda root, tmp: [], "has a folder name of 300 bytes, more than the file system "
        "allows (255)"),
    "output_inside_fmriprep_dir": (
        lambda root, tmp: ["--fmriprep-dir", tmp], "is inside the --fmriprep-dir folder"),
    "session_label_missing": (
        lambda root, tmp: ["--session-label", "99"],
        "Option --session-label 99 matches no ses-* label of sub-01 in {root}; existing: 01"),
    "session_label_prefixed": (
        lambda root, tmp: ["--session-label", "ses-02"],
        "Option --session-label 02 matches no ses-* label"),
    "participant_label_unicode": (
        lambda root, tmp: ["--participant-label", "ü01"],
        "argument --participant-label/--participant_label: label 'ü01' must be letters a-z, "
        "A-Z and digits "
        "only, as in BIDS"),
    "task_label_unicode": (
        lambda root, tmp: ["--task-label", "chécker"],
        "argument --task-label: label 'chécker' must be letters"),
}


@pytest.mark.parametrize("case", sorted(OPTIONS))
def test_hostile_options_refused(case, copy_tree, tmp_path, capsys):
    root = copy_tree("one")
    extra, fragment = OPTIONS[case]
    out = tmp_path / "out"
    if case == "output_dir_long":
        out = long_path(tmp_path, part=200, depth=20)
    elif case == "output_dir_name_too_long":
        out = tmp_path / ("o" * 300)
    before = tree_hash(root)
    code, err = run_cli([root, out, "participant", *extra(root, tmp_path)], capsys)
    assert_refused(code, err, fragment.format(root=root), out)
    assert tree_hash(root) == before


def test_unicode_where_bids_allows_it(clean_trees, tmp_path, capsys):
    """Unicode in the dataset's folder name and in sidecar text values is fine."""
    import shutil

    root = tmp_path / "données-ü" / "bids"
    shutil.copytree(clean_trees["one"], root)
    set_json(eeg_file(root, ".json"), TaskName="checker ü", InstitutionName="Zürich")
    code, err = run_cli([root, tmp_path / "sortie-é", "participant"], capsys)
    assert code == 0, err
    assert len(list((tmp_path / "sortie-é").rglob("*_desc-preproc_eeg.vhdr"))) == 1


def test_broken_second_run_is_named_and_the_first_finishes(copy_tree, tmp_path, capsys):
    root = copy_tree("two")
    stem = "sub-01_ses-01_task-tp_run-01"
    flip_middle(root / SUB / "func" / f"{stem}_bold.nii.gz")
    before = tree_hash(root)
    out = tmp_path / "out"
    code = main([str(root), str(out), "participant", "--skip-bids-validation"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert f"{stem}_bold.nii.gz is truncated or corrupt (gzip" in err
    done = [p.name for p in out.rglob("*_desc-preproc_eeg.vhdr")]
    assert done == [f"{STEM}_desc-preproc_eeg.vhdr"]
    assert tree_hash(root) == before


def test_broken_eeg_only_run_is_refused_and_the_other_finishes(copy_tree, tmp_path, capsys):
    """An EEG-only task's files are pre-flighted too (here its header is broken)."""
    root = copy_tree("eegonly")
    vhdr = root / SUB / "eeg" / "sub-01_ses-01_task-checkerout_eeg.vhdr"
    vhdr.write_text(re.sub(r"(?m)^SamplingInterval=.*$", "SamplingInterval=0",
                           vhdr.read_text()))
    before = tree_hash(root)
    code = main([str(root), str(tmp_path / "out"), "participant", "-q",
                 "--skip-bids-validation"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert f"{vhdr} has SamplingInterval=0" in err
    done = sorted(p.name for p in (tmp_path / "out").rglob("*_desc-preproc_eeg.vhdr"))
    assert done == [f"{STEM}_desc-preproc_eeg.vhdr"]
    assert tree_hash(root) == before


@pytest.mark.parametrize("level", ["participant", "group"])
def test_unimportable_stage_fails_loudly_before_any_output(level, copy_tree, tmp_path,
                                                           monkeypatch, capsys):
    """A broken installation is exit 1 naming the stage, not a stage silently skipped."""
    from bids_app.workflows import group as group_wf
    from bids_app.workflows import participant as part_wf

    root = copy_tree("one")
    out = tmp_path / "out"
    if level == "group":
        assert main([str(root), str(out), "participant", "-q",
                     "--skip-bids-validation"]) == 0
        monkeypatch.setitem(group_wf.STAGES, "masking",
                            ("bids_app.workflows.no_such_masking", "run"))
        stage = "masking"
    else:
        monkeypatch.setitem(part_wf.STAGES, "fmri", ("bids_app.workflows.fmri", "nothing"))
        stage = "fmri"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, err = run_cli([root, out, level], capsys)
    assert code == 1, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"eegfmri: error: Stage '{stage}' cannot be imported"), err
    assert lines[0].endswith("reinstall eegfmri or use the container image.")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
