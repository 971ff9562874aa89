"""The validation layer directly: validator failures, per-file checks on edge cases."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bidstree import make_bids_tree

from bids_app.errors import InputError
from bids_app.io import validate
from bids_app.io.integrity import check_events, check_nifti, read_brainvision_header
from bids_app.io.validate import ValidationResult, run_validator


def test_validator_missing_broken_or_hanging(tmp_path, monkeypatch):
    root = make_bids_tree(tmp_path / "ds")
    assert run_validator(root).ok
    monkeypatch.setattr(validate.shutil, "which", lambda name: None)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "nowhere" / "python"))
    with pytest.raises(InputError, match="is not installed"):
        validate.find_validator()
    monkeypatch.undo()

    def garbage(*args, **kwargs):
        return subprocess.CompletedProcess(args, 3, stdout="not json", stderr="deno panic")

    monkeypatch.setattr(validate.subprocess, "run", garbage)
    with pytest.raises(InputError, match=r"validator failed on .* \(deno panic\)"):
        run_validator(root)

    def hang(*args, **kwargs):
        raise subprocess.TimeoutExpired(args, 1)

    monkeypatch.setattr(validate.subprocess, "run", hang)
    with pytest.raises(InputError, match="did not finish"):
        run_validator(root, timeout=1)


def test_validation_summary_groups_by_code():
    result = ValidationResult(
        dataset=Path("/d"),
        errors=[{"code": "NOT_INCLUDED", "location": f"/f{i}"} for i in range(7)]
        + [{"code": "JSON_INVALID", "location": "/x.json", "subCode": "k"}],
        messages={"NOT_INCLUDED": "Files with such naming scheme are not part of BIDS.\nMore"},
    )
    lines = result.summary(limit=3)
    assert lines[0] == ("NOT_INCLUDED: Files with such naming scheme are not part of BIDS — "
                        "/f0, /f1, /f2 and 4 more.")
    assert lines[1] == "JSON_INVALID — /x.json (k)."
    assert not result.ok


def test_nifti_checks_accept_complete_files(tmp_path):
    img = nib.Nifti1Image(np.zeros((4, 5, 6, 3), np.int16), np.eye(4))
    for name in ("a.nii", "a.nii.gz"):
        nib.save(img, tmp_path / name)
        assert check_nifti(tmp_path / name, ndim=4).shape == (4, 5, 6, 3)
    with pytest.raises(InputError, match="expected a 3D image"):
        check_nifti(tmp_path / "a.nii", ndim=3, label="T1w")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="empty.nii.gz cannot be read as NIfTI"):
        check_nifti(tmp_path / "empty.nii.gz")


def test_events_and_header_edge_cases(tmp_path):
    ok = tmp_path / "ok_events.tsv"
    ok.write_text("onset\tduration\ttrial_type\n1.0\tn/a\ta\n1.0\t0\tb\n3.5\t1\tc\n")
    check_events(ok)  # ties and n/a durations are valid BIDS
    empty = tmp_path / "empty_events.tsv"
    empty.write_text("onset\tduration\n")
    check_events(empty)
    binary = tmp_path / "bin_events.tsv"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError, match="bin_events.tsv"):
        check_events(binary)
    vhdr = tmp_path / "x.vhdr"
    vhdr.write_text("Brain Vision Data Exchange Header File Version 1.0\n[Common Infos]\n"
                    "DataFile=x.eeg\nMarkerFile=x.vmrk\n")
    (tmp_path / "x.eeg").write_bytes(b"")
    with pytest.raises(InputError, match="points to MarkerFile x.vmrk"):
        read_brainvision_header(vhdr)
    (tmp_path / "x.vmrk").write_text("")
    with pytest.raises(InputError, match="has SamplingInterval=None; it must be"):
        read_brainvision_header(vhdr)
    vhdr.write_text(vhdr.read_text() + "SamplingInterval=200\nNumberOfChannels=1\n"
                    "[Channel Infos]\n; comment\nCh1=Cz,,0.1,µV\n")
    sections = read_brainvision_header(vhdr)
    assert sections["Channel Infos"] == {"Ch1": "Cz,,0.1,µV"}
