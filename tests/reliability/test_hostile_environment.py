"""Hostile options and environments: bad paths, locks, full disks, read-only inputs.

All cases go through ``main`` (the full command line) except the video check, which is
tested at the validation layer as well.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import mne
import numpy as np
from bidstree import tree_hash

from bids_app.cli import main
from bids_app.io.atomic import leftover_temporaries
from bids_app.io.derivatives import output_lock
from bids_app.io.validate import check_stimulus_video, validate_derivatives


def run(argv, capsys):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


def test_option_and_path_errors_exit_2(copy_tree, tmp_path, capsys):
    root = copy_tree("one")
    flt = tmp_path / "filter.json"
    flt.write_text(json.dumps({"bold": {"task": "nothere"}, "eeg": {"task": "nothere"}}))
    bad_flt = tmp_path / "bad_filter.json"
    bad_flt.write_text("[1, 2]")
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[fmri]\nfwhm = 'wide'\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    out = tmp_path / "out"
    cases = [
        ([root, root, "participant"], "is the input BIDS directory"),
        ([root, root / "sub-01" / "o", "participant"], "inside the input BIDS directory"),
        ([root, out, "participant", "--participant-label", "../../etc"], "must not contain"),
        ([root, out, "participant", "--participant-label", "09"], "existing labels: 01"),
        ([root, out, "participant", "--bids-filter-file", flt], "no EEG or BOLD recordings"),
        ([root, out, "participant", "--bids-filter-file", bad_flt], "must be a JSON object"),
        ([root, out, "participant", "--task-label", "movie"],
         "Option --task-label movie matches no task-* label of sub-01"),
        ([root, out, "participant", "--config-file", bad_toml], "fwhm must be of type"),
        ([root, out, "participant", "--fmriprep-dir", tmp_path / "nope"], "does not exist"),
        ([empty, out, "participant"], "has no sub-* folders"),
        ([root, out, "participant", "--nprocs", "0"], "must be positive"),
        ([root, out, "participant", "--mem", "lots"], "is not a number"),
    ]
    for argv, message in cases:
        code, err = run(argv + ["-q", "--skip-bids-validation"], capsys)
        assert code == 2, (argv, err)
        assert message in last_line(err), (argv, err)
    assert not (root / "sub-01" / "o").exists()
    assert not list(out.glob("sub-*"))


def test_output_under_bids_derivatives_is_allowed(copy_tree, capsys):
    root = copy_tree("one")
    out = root / "derivatives" / "eegfmri"
    code, _ = run([root, out, "participant", "-q", "--omp-nthreads", "1"], capsys)
    assert code == 0  # BIDS convention; the validator ignores derivatives/
    assert len(list(out.rglob("*_desc-preproc_eeg.vhdr"))) == 1


def test_unwritable_output_exit_2(copy_tree, tmp_path, capsys):
    root = copy_tree("one")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = run([root, blocker / "out", "participant", "--skip-bids-validation"], capsys)
    assert code == 2 and "is not writable" in last_line(err)
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        code, err = run([root, locked / "out", "participant"], capsys)
        assert code == 2 and "is not writable" in last_line(err)


def test_read_only_bids_dir_works_and_is_untouched(copy_tree, tmp_path, capsys):
    root = copy_tree("two")
    before = tree_hash(root)
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        code, _ = run([root, tmp_path / "out", "participant", "-q"], capsys)
    finally:
        for path in [root, *root.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    assert code == 0
    assert tree_hash(root) == before
    assert len(list((tmp_path / "out").rglob("*_desc-preproc_eeg.vhdr"))) == 2
    result = validate_derivatives(tmp_path / "out")
    assert result.errors == [], result.summary()


def test_rerun_is_reproducible(copy_tree, tmp_path, capsys):
    root = copy_tree("two")
    out = tmp_path / "out"
    hashes = []
    for _ in range(2):
        code, _ = run([root, out, "participant", "-q", "--skip-bids-validation"], capsys)
        assert code == 0
        files = sorted(p for p in out.rglob("sub-*/**/*")
                       if p.is_file() and p.relative_to(out).parts[0] != "work")
        hashes.append({p.name: p.read_bytes() for p in files})
    assert hashes[0] == hashes[1] and len(hashes[0]) == 8


def test_disk_full_leaves_no_corrupt_files(copy_tree, tmp_path, capsys, monkeypatch):
    root = copy_tree("two")
    real_export = mne.export.export_raw
    calls = []

    def export_until_full(fname, raw, **kwargs):
        calls.append(Path(fname).name)
        if len(calls) == 1:  # first recording: half the header, then the disk is full
            Path(fname).write_text("Brain Vision Data Exchange Header File Version 1.0\n")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_export(fname, raw, **kwargs)

    monkeypatch.setattr(mne.export, "export_raw", export_until_full)
    out = tmp_path / "out"
    code, err = run([root, out, "participant", "-q", "--skip-bids-validation"], capsys)
    assert code == 1  # the first run failed, the second finished
    assert "No space left on device" in err
    written = sorted(p.name for p in out.rglob("*_desc-preproc_eeg.*"))
    assert written == ["sub-01_ses-01_task-tp_run-01_desc-preproc_eeg.eeg",
                       "sub-01_ses-01_task-tp_run-01_desc-preproc_eeg.json",
                       "sub-01_ses-01_task-tp_run-01_desc-preproc_eeg.vhdr",
                       "sub-01_ses-01_task-tp_run-01_desc-preproc_eeg.vmrk"]
    assert leftover_temporaries(out) == []
    crash = out / "logs" / "crash-sub-01_ses-01_task-checker-eeg.txt"
    assert "ENOSPC" in crash.read_text() or "No space" in crash.read_text()


def test_concurrent_runs_on_one_subject_are_refused(copy_tree, tmp_path, capsys):
    root = copy_tree("eegonly")
    out = tmp_path / "out"
    with output_lock(out, ["sub-01"]):  # another process is writing sub-01
        code, err = run([root, out, "participant", "--skip-bids-validation"], capsys)
        assert code == 2 and "in use by another eegfmri run (sub-01" in last_line(err)
        assert not list(out.glob("sub-*")) and not (out / "logs").exists()
    code, _ = run([root, out, "participant", "-q", "--skip-bids-validation"], capsys)
    assert code == 0  # the lock is released with the other process's block
    with output_lock(out, ["sub-01"]):  # group level never reads a subject being written
        code, err = run([root, out, "group"], capsys)
        assert code == 2 and "(sub-01, lock file" in last_line(err)
    with output_lock(out, ["sub-02"]):  # SLURM arrays: other subjects run in parallel
        code, _ = run([root, out, "participant", "-q", "--skip-bids-validation"], capsys)
        assert code == 0


def _write_video(path: Path) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, np.uint8),
                                               format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_undecodable_video_exit_2(copy_tree, tmp_path, capsys):
    root = copy_tree("one")
    out = tmp_path / "out"
    assert run([root, out, "participant", "-q", "--skip-bids-validation"], capsys)[0] == 0
    stimuli = tmp_path / "stimuli"
    stimuli.mkdir()
    check_stimulus_video(_write_video(stimuli / "The_Present_720x480.mp4"))  # decodes
    (stimuli / "Despicable_Me_720x480_English.avi").write_bytes(b"RIFF\x00\x00garbage" * 10)
    code, err = run([root, out, "group", "--stimuli-dir", stimuli], capsys)
    assert code == 2
    assert "Despicable_Me_720x480_English.avi cannot be decoded" in last_line(err)


def test_sigterm_mid_write_leaves_no_partial_file(copy_tree, tmp_path, capsys, monkeypatch):
    import signal

    from bids_app.workflows import participant as part_wf

    def killed_while_writing(run, config, writer):
        path = writer.build_path({**run.entities, "desc": "preproc"}, suffix="eeg",
                                 extension=".vhdr", datatype="eeg")
        with writer.atomic_path(path) as tmp:
            tmp.write_text("half a header")
            os.kill(os.getpid(), signal.SIGTERM)  # SLURM time limit
            tmp.write_text("never reached")

    monkeypatch.setitem(part_wf.STAGES, "eeg", killed_while_writing)
    before = signal.getsignal(signal.SIGTERM)
    root = copy_tree("two")
    out = tmp_path / "out"
    code, err = run([root, out, "participant", "-q", "--skip-bids-validation"], capsys)
    assert code == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in last_line(err)
    assert leftover_temporaries(out) == [] and not list(out.rglob("*_eeg.vhdr"))
    assert signal.getsignal(signal.SIGTERM) == before  # handler restored


def test_stale_temporaries_of_a_killed_run_are_removed(copy_tree, tmp_path, capsys):
    root = copy_tree("one")
    out = tmp_path / "out"
    stale = out / "sub-01" / "ses-01" / "eeg" / ".eegfmri-tmp-abc.vhdr"
    stale.parent.mkdir(parents=True)
    stale.write_text("partial")
    other = out / "sub-99" / ".eegfmri-tmp-def.nii.gz"  # another subject's job: untouched
    other.parent.mkdir(parents=True)
    other.write_text("in progress")
    code, _ = run([root, out, "participant", "-q", "--skip-bids-validation"], capsys)
    assert code == 0 and not stale.exists() and other.exists()
