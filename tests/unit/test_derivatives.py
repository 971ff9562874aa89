"""DerivativesWriter: BIDS names, sidecars, dataset_description, atomic writes, lock."""

from __future__ import annotations

import json
import os
import stat

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import mne  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from bids_app import __version__  # noqa: E402
from bids_app.config import Config  # noqa: E402
from bids_app.errors import InputError  # noqa: E402
from bids_app.io import atomic  # noqa: E402
from bids_app.io.bids import parse_entities  # noqa: E402
from bids_app.io.derivatives import ENTITY_ORDER, DerivativesWriter, output_lock  # noqa: E402
from bids_app.io.validate import validate_derivatives  # noqa: E402


@pytest.fixture
def writer(tmp_path):
    bids_dir = tmp_path / "raw"
    bids_dir.mkdir()
    config = Config().replace("execution", bids_dir=bids_dir, output_dir=tmp_path / "out")
    return DerivativesWriter(tmp_path / "out", config)


def _bold(n_vols=5, tr=2.1):
    img = nib.Nifti1Image(np.random.default_rng(0).random((6, 7, 5, n_vols), np.float32),
                          np.diag([3.0, 3.0, 3.0, 1.0]))
    img.header["pixdim"][4] = tr
    return img


def test_build_path_orders_entities_and_folders(writer):
    path = writer.build_path({"desc": "preproc", "res": "3", "space": "MNI152NLin2009cAsym",
                              "task": "checker", "ses": "ses-01", "sub": "sub-01"},
                             suffix="bold", extension=".nii.gz", datatype="func")
    assert path == (writer.output_dir / "sub-01" / "ses-01" / "func" /
                    "sub-01_ses-01_task-checker_space-MNI152NLin2009cAsym_res-3_desc-preproc"
                    "_bold.nii.gz")
    group = writer.build_path({"stat": "q", "desc": "vaemask", "space": "MNI152NLin2009cAsym"},
                              suffix="statmap", extension=".nii.gz")
    assert group.parent == writer.output_dir / "group"
    assert group.name == "space-MNI152NLin2009cAsym_desc-vaemask_stat-q_statmap.nii.gz"
    with pytest.raises(ValueError, match="Invalid label"):
        writer.build_path({"sub": "01", "desc": "a_b"}, suffix="bold", extension=".nii.gz")
    with pytest.raises(ValueError, match="Unknown BIDS entities"):
        writer.build_path({"sub": "01", "foo": "x"}, suffix="bold", extension=".nii.gz")


def test_dataset_description_and_bidsignore(writer, tmp_path):
    desc = json.loads((writer.output_dir / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["BIDSVersion"] == "1.10.0"
    generated = desc["GeneratedBy"][0]
    assert generated["Name"] == "eegfmri" and generated["Version"] == __version__
    assert generated["Container"] == {"Type": "docker", "Tag": f"eegfmri/eegfmri:{__version__}"}
    assert desc["SourceDatasets"][0]["URL"] == "bids:raw"
    assert desc["DatasetLinks"]["raw"] == (tmp_path / "raw").absolute().as_uri()
    writer.build_path({"sub": "01", "desc": "alpha", "stat": "z"}, suffix="statmap",
                      extension=".nii.gz", datatype="func")
    writer.build_path({"sub": "01", "desc": "preproc"}, suffix="bold", extension=".nii.gz")
    ignore = (writer.output_dir / ".bidsignore").read_text().splitlines()
    assert "*_statmap.nii.gz" in ignore and "logs/" in ignore and "figures" in ignore
    assert not any("bold" in line for line in ignore)
    assert len(ignore) == len(set(ignore))
    assert writer.raw_uri(tmp_path / "raw" / "sub-01" / "x_bold.nii.gz") == \
        "bids:raw:sub-01/x_bold.nii.gz"


def test_write_tsv_and_nifti_sidecars(writer):
    path = writer.build_path({"sub": "01", "task": "rest", "desc": "confounds"},
                             suffix="timeseries", extension=".tsv", datatype="func")
    table = pd.DataFrame({"framewise_displacement": [np.nan, 0.1], "trans_x": [0.0, 0.2]})
    cols = {c: {"LongName": c, "Description": f"{c} per volume", "Units": "mm"}
            for c in table.columns}
    writer.write_tsv(path, table, columns=cols)
    assert path.read_text().splitlines()[1].split("\t") == ["n/a", "0.0"]
    back = pd.read_csv(path, sep="\t", na_values="n/a")
    np.testing.assert_allclose(back.to_numpy(), table.to_numpy())
    assert json.loads(path.with_suffix(".json").read_text()) == cols

    bold_path = writer.build_path({"sub": "01", "task": "rest", "space": "MNI152NLin2009cAsym",
                                   "res": "3", "desc": "preproc"}, suffix="bold",
                                  extension=".nii.gz", datatype="func")
    img = _bold()
    writer.write_nifti(bold_path, img,
                       sources=["bids:raw:sub-01/func/sub-01_task-rest_bold.nii.gz"])
    np.testing.assert_array_equal(nib.load(bold_path).get_fdata(), img.get_fdata())
    meta = json.loads(bold_path.with_name(bold_path.name.replace(".nii.gz", ".json")).read_text())
    assert meta["Sources"][0].startswith("bids:raw:sub-01/")
    assert meta["SkullStripped"] is False
    assert "3 mm" in meta["Resolution"] and meta["RepetitionTime"] == pytest.approx(2.1)
    assert meta["TaskName"] == "rest"
    # outputs get the umask's permissions, not mkstemp's owner-only 0600
    umask = os.umask(0)
    os.umask(umask)
    for written in (path, bold_path):
        assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~umask


def test_write_brainvision_roundtrip(writer):
    rng = np.random.default_rng(1)
    info = mne.create_info(["Cz", "Pz", "ECG"], 250.0, ["eeg", "eeg", "ecg"])
    raw = mne.io.RawArray(rng.normal(0, 20e-6, (3, 1000)), info, verbose="error")
    raw.set_annotations(mne.Annotations([1.0, 2.0], 0.0, ["Response/R128", "Stimulus/S  1"]))
    path = writer.build_path({"sub": "01", "task": "rest", "desc": "preproc"}, suffix="eeg",
                             extension=".vhdr", datatype="eeg")
    writer.write_raw_brainvision(path, raw, sidecar={"EEGReference": "average"})
    assert {p.suffix for p in path.parent.iterdir()} == {".vhdr", ".vmrk", ".eeg", ".json"}
    back = mne.io.read_raw_brainvision(path, preload=True, verbose="error")
    # BrainVision stores float32 microvolts: relative error below 1e-6.
    assert np.max(np.abs(back.get_data() - raw.get_data())) < 1e-6 * np.abs(raw.get_data()).max()
    assert list(back.annotations.description) == ["Response/R128", "Stimulus/S  1"]
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["SamplingFrequency"] == 250.0 and meta["EEGChannelCount"] == 2
    assert meta["EEGReference"] == "average" and meta["TaskName"] == "rest"
    assert atomic.leftover_temporaries(writer.output_dir) == []


def test_crash_mid_write_leaves_no_partial_file(writer, monkeypatch):
    path = writer.build_path({"sub": "01", "task": "rest", "desc": "preproc"}, suffix="bold",
                             extension=".nii.gz", datatype="func")
    writer.write_nifti(path, _bold(n_vols=3))
    before = path.read_bytes()

    def half_save(img, filename):
        with open(filename, "wb") as fh:
            fh.write(b"\x1f\x8b partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nib, "save", half_save)
    with pytest.raises(OSError, match="No space"):
        writer.write_nifti(path, _bold(n_vols=9))
    assert path.read_bytes() == before  # old version intact
    new = path.with_name(path.name.replace("rest", "task2"))
    with pytest.raises(OSError):
        writer.write_nifti(new, _bold())
    assert not new.exists()

    def half_export(fname, raw, **kwargs):
        fname.with_suffix(".vhdr").write_text("partial header")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mne.export, "export_raw", half_export)
    info = mne.create_info(["Cz"], 100.0, "eeg")
    eeg_path = writer.build_path({"sub": "01", "task": "rest", "desc": "preproc"},
                                 suffix="eeg", extension=".vhdr", datatype="eeg")
    with pytest.raises(OSError):
        writer.write_raw_brainvision(eeg_path, mne.io.RawArray(np.zeros((1, 100)), info,
                                                               verbose="error"))
    assert not eeg_path.parent.exists() or list(eeg_path.parent.iterdir()) == []
    assert atomic.leftover_temporaries(writer.output_dir) == []


def test_figure_bytes_and_escape(writer):
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    path = writer.write_figure(fig, "sub-01", "eeg_psd")
    plt.close(fig)
    assert path == writer.output_dir / "sub-01" / "figures" / "eeg_psd.svg"
    assert path.read_text().lstrip().startswith("<?xml")
    assert writer.write_bytes("group/models/vae1.pt", b"abc").read_bytes() == b"abc"
    with pytest.raises(ValueError, match="outside"):
        writer.write_bytes("../evil.txt", b"x")


def test_outputs_pass_bids_validator(writer):
    ents = {"sub": "01", "ses": "01", "task": "checker"}
    bold = writer.build_path({**ents, "space": "MNI152NLin2009cAsym", "res": "3",
                              "desc": "preproc"}, suffix="bold", extension=".nii.gz",
                             datatype="func")
    writer.write_nifti(bold, _bold(), sources=["bids:raw:sub-01/ses-01/func/x_bold.nii.gz"])
    mask = writer.build_path({**ents, "space": "MNI152NLin2009cAsym", "res": "3",
                              "desc": "brain"}, suffix="mask", extension=".nii.gz",
                             datatype="func")
    writer.write_nifti(mask, nib.Nifti1Image(np.ones((6, 7, 5), np.uint8), np.eye(4)))
    stat = writer.build_path({**ents, "desc": "alpha", "stat": "z"}, suffix="statmap",
                             extension=".nii.gz", datatype="func")
    writer.write_nifti(stat, nib.Nifti1Image(np.zeros((6, 7, 5), np.float32), np.eye(4)))
    conf = writer.build_path({**ents, "desc": "confounds"}, suffix="timeseries",
                             extension=".tsv", datatype="func")
    writer.write_tsv(conf, pd.DataFrame({"a": [1.0]}),
                     columns={"a": {"LongName": "a", "Description": "a", "Units": "mm"}})
    corr = writer.build_path({**ents, "desc": "sourcechannel"}, suffix="corr",
                             extension=".tsv", datatype="eeg")
    writer.write_tsv(corr, pd.DataFrame({"r": [0.5]}),
                     columns={"r": {"LongName": "r", "Description": "r", "Units": "1"}})
    writer.write_bytes("logs/x.log", b"log")
    fig, ax = plt.subplots()
    writer.write_figure(fig, "01", "sub-01_ses-01_task-checker_desc-carpet_bold.png")
    plt.close(fig)
    writer.write_bytes("sub-01.html", b"<html></html>")
    # The default --work-dir lies inside the output: nested scratch files are ignored.
    scratch = writer.output_dir / "work" / "sub-01" / "fmri_wf"
    scratch.mkdir(parents=True)
    (scratch / "bold_ref.nii.gz").write_bytes(b"scratch")
    result = validate_derivatives(writer.output_dir)
    assert result.errors == [], result.summary()


def test_output_lock_is_exclusive_per_part(tmp_path):
    out = tmp_path / "out"
    with output_lock(out, ["sub-01"]):
        with pytest.raises(InputError, match=r"in use by another eegfmri run \(sub-01"):
            with output_lock(out, ["group", "sub-01", "sub-02"]):
                pass
        with output_lock(out, ["sub-02"]):  # another subject: allowed (job arrays)
            pass
    with output_lock(out, ["group", "sub-01", "sub-02"]):  # released after the blocks
        pass


_labels = st.text(alphabet="abcXYZ0123456789", min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(entities=st.dictionaries(st.sampled_from(ENTITY_ORDER), _labels, min_size=1),
       suffix=st.sampled_from(["bold", "eeg", "statmap", "timeseries"]),
       extension=st.sampled_from([".nii.gz", ".tsv", ".json", ".vhdr"]))
def test_build_path_round_trips_through_parse_entities(tmp_path_factory, entities, suffix,
                                                      extension):
    writer = _SHARED.setdefault("w", DerivativesWriter(tmp_path_factory.mktemp("h"), None))
    path = writer.build_path(entities, suffix=suffix, extension=extension, datatype="func")
    parsed, parsed_suffix, parsed_ext = parse_entities(path.name)
    assert parsed == entities and (parsed_suffix, parsed_ext) == (suffix, extension)
    order = [ENTITY_ORDER.index(k) for k in parsed]
    assert order == sorted(order)
    assert path.is_relative_to(writer.output_dir)


_SHARED: dict = {}
