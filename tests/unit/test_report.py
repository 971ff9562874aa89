"""Participant report: content, relative figure links, rendering in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import mne
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nilearn import datasets
from scipy import stats

from bids_app import coupling as cp
from bids_app.config import Config
from bids_app.eeg import forward, source
from bids_app.io.bids import RunFiles
from bids_app.io.derivatives import DerivativesWriter
from bids_app.natview import facts as nv
from bids_app.report import figures
from bids_app.report.participant import methods_text, write_participant_report
from bids_app.workflows.participant import Failure, RunOutcome


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _outcomes(tmp_path: Path, writer: DerivativesWriter) -> list[RunOutcome]:
    """Two runs: one complete (EEG, fMRI, coupling), one whose fMRI stage failed."""
    rng = np.random.default_rng(0)
    info = forward.make_eeg_info(list(nv.EEG_CHANNELS))
    outside = tmp_path / "work"  # EEG stage figures made outside the output folder
    outside.mkdir()
    fig = figures.plot_topomaps(rng.normal(size=(2, 61)), info, titles=["before", "after"])
    fig.savefig(outside / "psd.svg")
    plt.close(fig)
    raw = mne.io.RawArray(rng.normal(size=(61, 2500)) * 1e-5, info, verbose="error")
    eeg = SimpleNamespace(raw_clean=raw, volume_onsets_s=np.arange(20) * 2.1,
                          qc={"bad_channels": ["T7", "Fp1"], "ica_excluded": [0, 3],
                              "gradient": {"residual_rms_uv": 3.21, "harmonic_db": -31.5}},
                          steps=[{"name": "gradient", "window": 30}, {"name": "bcg"}],
                          figures={"psd": outside / "psd.svg"})
    mask = datasets.load_mni152_brain_mask(resolution=3)
    grid = forward.make_source_grid(mask, spacing_mm=15.0)
    n_vox = len(grid.voxel_ijk)
    z = rng.normal(size=n_vox)
    z[:200] += 8
    p = 2 * stats.norm.sf(np.abs(z))
    band = cp.BandCoupling("alpha", z, cp.z_to_q(z), rng.uniform(-0.5, 0.5, n_vox),
                           pd.DataFrame(), np.zeros(20), p=p, local_z=z, local_p=p,
                           local_q=cp.z_to_q(z), glm=SimpleNamespace(ar_order=2))
    maps = source.SourceMaps(grid, np.arange(20) * 2.1, 2.1, {}, {}, {}, list(nv.EEG_CHANNELS),
                             "eLORETA")
    zimg = nib.Nifti1Image(np.zeros(mask.shape, np.float32), mask.affine)
    zimg.get_fdata()[tuple(grid.voxel_ijk.T)] = z
    zfig = figures.plot_stat_map(zimg, title="alpha z", threshold=3.0)
    coupling = SimpleNamespace(bands={"alpha": band}, source_maps=maps,
                               fdr_threshold={"alpha": 3.0}, fdr_tests=2 * n_vox,
                               figures={"desc-alpha_zmap": writer.write_figure(
                                   zfig, "01", "task-tp_desc-alpha_zmap.png")})
    plt.close(zfig)
    mfig, ax = plt.subplots()
    ax.plot(rng.normal(size=50))
    fmri = SimpleNamespace(bold_mni=nib.Nifti1Image(np.zeros((4, 4, 4, 20), np.float32),
                                                    np.diag([3, 3, 3, 1])),
                           tr=2.1, confounds=pd.DataFrame({"framewise_displacement":
                                                           rng.uniform(0, 0.3, 20)}),
                           figures={"motion": writer.write_figure(mfig, "01", "task-tp_motion")})
    plt.close(mfig)
    ok = RunOutcome(run=RunFiles(entities={"sub": "01", "task": "tp", "run": "01"}), eeg=eeg,
                    fmri=fmri, coupling=coupling)
    crash = tmp_path / "out" / "logs" / "crash-sub-01-checker-fmri.txt"
    crash.parent.mkdir(parents=True, exist_ok=True)
    crash.write_text("Traceback ...")
    bad = RunOutcome(run=RunFiles(entities={"sub": "01", "task": "checker"}), eeg=eeg,
                     failures=[Failure("fmri", "The BOLD file is truncated.", crash)])
    return [ok, bad]


def _planted_region(coupling) -> dict[str, nib.Nifti1Image]:
    """The region of the 200 voxels the fixture's alpha map plants."""
    grid = coupling.source_maps.grid
    data = np.zeros(grid.mask_img.shape, np.uint8)
    data[tuple(grid.voxel_ijk[:200].T)] = 1
    return {"src": nib.Nifti1Image(data, grid.mask_img.affine)}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from bids_app.workflows.validation import coupling_checks

    tmp_path = tmp_path_factory.mktemp("report")
    config = Config()
    writer = DerivativesWriter(tmp_path / "out", config)
    outcomes = _outcomes(tmp_path, writer)
    coupling = outcomes[0].coupling
    checks = coupling_checks(coupling, _planted_region(coupling),
                             [{"name": "src", "band": "alpha"}], 0.05, "task-tp run-01")
    path = write_participant_report("sub-01", outcomes, config, writer, validation=checks)
    return path, writer


def _render(path: Path, shot: Path) -> tuple[str, np.ndarray]:
    """DOM and screenshot of a report in headless Chromium (skips when not installed)."""
    browser = _chromium()
    if browser is None:
        pytest.skip("Chromium not found (apt-get install -y chromium); cannot render report.")
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              "--allow-file-access-from-files", "--virtual-time-budget=5000"]
    dom = subprocess.run([*common, "--dump-dom", path.as_uri()], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1280,1600",
                    path.as_uri()], capture_output=True, timeout=120, check=True)
    return dom, mpimg.imread(shot)[..., :3]


def _section(dom: str, anchor: str) -> str:
    """Text of the ``<section id=anchor>`` of a rendered DOM, tags removed."""
    match = re.search(rf'<section class="card" id="{anchor}">(.*?)</section>', dom, re.S)
    assert match, anchor
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", match.group(1)))


def test_report_content_and_links(report):
    path, writer = report
    assert path == writer.output_dir / "sub-01.html"
    html = path.read_text()
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == 4  # psd of both runs, motion, z map: every figure is linked
    for src in sources:
        assert not src.startswith("/") and (writer.output_dir / src).is_file(), src
        assert src.startswith("sub-01/figures/")
    for text in ("T7, Fp1", "residual_rms_uv", "The BOLD file is truncated.",
                 "logs/crash-sub-01-checker-fmri.txt", "eLORETA", "Benjamini",
                 "FDR q &lt; 0.05", "task-tp run-01", "Mean FD"):
        assert text in html, text
    # coupling summary: voxels with q < 0.05 counted from the z map
    count = re.search(r'<td>alpha</td><td class="num">(\d+)</td>', html)
    assert count and 200 <= int(count.group(1)) <= 230  # 200 planted + few false


def test_methods_follow_config():
    config = Config().replace("source", method="sLORETA").replace("eeg", ica=False)
    paragraphs, refs = methods_text(config)
    text = " ".join(paragraphs)
    assert "sLORETA" in text and "ICLabel" not in text
    assert not any("ICLabel" in r for r in refs)


def test_report_renders_in_headless_chromium(report, tmp_path):
    path, _ = report
    dom, pixels = _render(path, tmp_path / "shot.png")
    assert "Methods" in dom and dom.count("<img") == 4
    assert dom.count("onerror") == 4 and 'data-broken="1"' not in dom  # all images loaded
    # findings first, then the validation against the planted truth, both filled
    assert dom.index('id="findings"') < dom.index('id="validation"') < dom.index('id="summary"')
    findings = _section(dom, "findings")
    assert re.search(r"task-tp run-01, alpha band power: 2\d\d voxels couple with the BOLD",
                     findings), findings
    assert "task-checker: coupling was not computed" in findings
    validation = _section(dom, "validation")
    assert "2 of 2 checks pass" in validation, validation
    assert "coupling recall" in validation and "coupling false-positive rate" in validation
    assert pixels.shape[0] >= 1000
    assert pixels.std() > 0.05  # not blank
    assert (np.abs(pixels - pixels.mean((0, 1))).sum(-1) > 0.3).mean() > 0.01


def test_stat_map_mosaic_puts_a_blob_where_it_is():
    """The mosaic samples the map on template slices at the right MNI position."""
    mask = datasets.load_mni152_brain_mask(resolution=3)
    ijk = np.indices(mask.shape).reshape(3, -1).T
    xyz = nib.affines.apply_affine(mask.affine, ijk)
    centre = np.array([30.0, -60.0, 20.0])
    blob = np.exp(-((xyz - centre) ** 2).sum(1) / (2 * 6.0**2)).reshape(mask.shape)
    img = nib.Nifti1Image(blob.astype(np.float32), mask.affine)
    bg, z_mm, plane = figures._axial_background(7)
    over = figures._axial_overlay(img, z_mm, plane)
    assert over.shape == bg.shape
    k = int(np.argmax(over.max(axis=(1, 2))))
    row, col = np.unravel_index(np.argmax(over[k]), over[k].shape)
    tpl = figures._template()
    x, y, _ = nib.affines.apply_affine(tpl.affine, plane[:, row, col])
    print(f"blob peak drawn at ({x:.0f}, {y:.0f}, {z_mm[k]:.0f}) mm, planted at {centre}")
    assert abs(z_mm[k] - centre[2]) <= np.diff(z_mm).max() / 2
    assert np.hypot(x - centre[0], y - centre[1]) <= 3.0
    fig = figures.plot_stat_maps({"a": img, "b": img}, titles={"a": "A", "b": "B"},
                                 thresholds={"a": 0.5, "b": np.inf}, cmap="hot",
                                 symmetric=False)
    shown = [np.asarray(ax.images[0].get_array()) for ax in fig.axes if ax.images]
    assert len(shown) == 2
    # the thresholded row differs from the template only where the blob is; "b" shows none
    assert np.abs(shown[0] - shown[1]).max() > 0.3 and (np.abs(shown[0] - shown[1]) > 0.05
                                                         ).mean() < 0.02


def test_group_findings_say_what_was_annotated_where_and_when():
    from bids_app.report.group import feature_counts, findings, readable_run

    eeg = pd.DataFrame({"unit": [3, 4, 9], "features": ["luminance", "luminance+motion",
                                                        "motion"],
                        "run": ["01/01/tp/01", "01/01/tp/01", "02/01/tp/02"],
                        "time_s": [12.0, 12.04, 40.5]})
    vox = pd.DataFrame({"voxel": [7, 8], "features": ["luminance", "luminance"],
                        "atlas_label": ["Visual (occipital)", "Visual (occipital)"]})
    masking = SimpleNamespace(annotations={"eeg": eeg, "fmri": vox})
    claims = [{"metric": "EEG explained variance", "beats_all_baselines": True,
               "best_baseline": "per-modality PCA"},
              {"metric": "fMRI from EEG", "beats_all_baselines": False,
               "best_baseline": "band-power ridge"}]
    models = SimpleNamespace(metrics={"vae1": {"baseline_comparison": claims}})
    assert feature_counts(eeg) == {"luminance": 2, "motion": 2}
    assert readable_run("01/01/checker/n/a") == "sub-01 ses-01 task-checker"
    lines = findings(models, masking, 0.05)
    assert lines[0] == ("3 EEG timestamp(s) annotated in 2 run(s): sub-01 ses-01 task-tp "
                        "run-01 12.0-12.0 s; sub-02 ses-01 task-tp run-02 40.5-40.5 s; "
                        "stimulus features: luminance (2), motion (2).")
    assert lines[1] == ("2 voxel(s) annotated; stimulus features: luminance (2); regions: "
                        "Visual (occipital) (2).")
    assert lines[2] == ("VAE-1 on held-out runs: beats every baseline on EEG explained "
                        "variance, but not on fMRI from EEG (best baseline: band-power "
                        "ridge).")
    empty = SimpleNamespace(annotations={"eeg": eeg.iloc[:0], "fmri": vox.iloc[:0]})
    assert findings(None, empty, 0.05)[0].startswith("No EEG timestamp and no voxel")


def test_group_findings_explain_empty_annotations_by_the_matched_unit_bound():
    """Nothing annotated: the findings say how far even a matched unit stays from BH's
    threshold, feature by feature, and which features no unit can reach."""
    from bids_app.masking.power import power_summary
    from bids_app.report.group import findings

    power = power_summary(np.array([0.069, 0.016, 0.001]), ["checker", "luminance",
                          "motion"], n_tests=99_684, alpha=0.05)
    summary = {"fmri/vae2/stimulus": {"tests": 99_684, "power": power},
               "annotated": {"eeg": 0, "fmri": 0}}
    empty = SimpleNamespace(annotations={"eeg": pd.DataFrame(), "fmri": pd.DataFrame()},
                            summary=summary)
    lines = findings(None, empty, 0.05)
    assert lines[1].startswith("On these held-out windows even a voxel whose masking "
                               "tracked a stimulus feature exactly would reach at best p = "
                               "motion 0.001 (1,994 pairs that strong needed), luminance "
                               "0.016 (31,899 pairs that strong needed), checker 0.069 "
                               "(137,564 pairs that strong needed) among 99,684 voxel x "
                               "feature tests at q < 0.05; no voxel can reach p < 0.05 for "
                               "checker."), lines[1]
    assert len(lines) == 2  # no EEG stimulus head in the summary: no sentence
    # voxels that cannot move VAE-1's EEG prediction (fMRI expert not in cross_experts)
    inert = SimpleNamespace(units=np.arange(4), effect=np.zeros((4, 1)))
    moving = SimpleNamespace(units=np.arange(4), effect=np.array([[0.0], [0.1], [0], [0]]))
    empty.head = lambda kind, model, head: {"fmri": inert, "eeg": moving}[kind]
    lines = findings(None, empty, 0.05)
    assert lines[2] == ("Masking voxels leaves VAE-1's EEG prediction exactly unchanged "
                        "(every effect is 0): the fMRI expert adds nothing to the other "
                        "modality unless `[model] cross_experts` includes \"fmri\", so no "
                        "voxel can be annotated."), lines
    assert len(lines) == 3


def test_group_report_opens_with_findings_and_validation_in_chromium(tmp_path):
    """group.html on masking results and a planted truth: findings, then validation."""
    from bids_app.report.group import write_group_report
    from bids_app.workflows.validation_group import validate_group

    folder = tmp_path / "bids" / "sourcedata" / "simulation" / "sub-01"
    folder.mkdir(parents=True)
    (folder.parent / "simulation.json").write_text('{"null": false}')
    pd.DataFrame({"onset_s": [12.0], "duration_s": [0.4], "feature": ["luminance"],
                  "source": ["lum"]}).to_csv(folder / "sub-01_ses-01_task-tp_run-01_"
                                             "dependencies.tsv", sep="\t", index=False)
    eeg = pd.DataFrame({"unit": [3, 9], "features": ["luminance", "motion"],
                        "run": ["01/01/tp/01", "01/01/tp/01"], "time_s": [12.1, 40.5],
                        "q_vae1": [0.01, 0.02], "q_vae2": [0.01, 0.03]})
    masking = SimpleNamespace(
        annotations={"eeg": eeg, "fmri": None}, paths={},
        summary={"eeg/vae2/stimulus": {"tests": 400, "significant": 2,
                                       "nominal_p_below_level": 25,
                                       "expected_under_null": 20.0},
                 "annotated": {"eeg": 2, "fmri": 0}})
    checks = validate_group(None, masking, tmp_path / "bids")
    config = Config()
    writer = DerivativesWriter(tmp_path / "out", config)
    path = write_group_report(None, masking, config, writer, validation=checks)
    dom, pixels = _render(path, tmp_path / "group.png")
    assert dom.index('id="findings"') < dom.index('id="validation"') < dom.index('id="models"')
    findings = _section(dom, "findings")
    assert "2 EEG timestamp(s) annotated in 1 run(s): sub-01 ses-01 task-tp run-01" in findings
    validation = _section(dom, "validation")
    assert "1 of 2 checks pass" in validation, validation
    assert "luminance -&gt; lum" in validation or "luminance -> lum" in validation
    assert "1 of 2 annotated units planted" in validation
    assert pixels.std() > 0.05  # not blank


def test_band_clusters_size_peak_and_region():
    """Two blobs of significant voxels: two clusters, largest first, signed peak z."""
    from bids_app.report.participant_findings import band_clusters, run_findings

    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    ijk = np.argwhere(np.ones((10, 10, 10), bool))
    grid = SimpleNamespace(voxel_ijk=ijk, mask_img=nib.Nifti1Image(
        np.ones((10, 10, 10), np.uint8), affine), voxel_mm=ijk * 3.0)
    n = len(ijk)
    big = np.all((ijk >= 1) & (ijk <= 3), axis=1)  # 27 voxels, global test
    small = np.all((ijk >= 6) & (ijk <= 7), axis=1)  # 8 voxels, source-resolved test
    z, local_z = np.zeros(n), np.zeros(n)
    z[big], local_z[small] = 4.0, -5.0
    z[np.flatnonzero(big)[5]] = 6.0
    res = SimpleNamespace(z=z, q=np.where(big, 0.01, 1.0), local_z=local_z,
                          local_q=np.where(small, 0.01, 1.0))
    regions = lambda mm: (np.array(["Visual"] * len(mm)), np.zeros(len(mm)))  # noqa: E731
    count, clusters = band_clusters(res, grid, 0.05, regions=regions)
    assert count == 35 and [c["size"] for c in clusters] == [27, 8]
    assert clusters[0]["peak_z"] == 6.0 and clusters[0]["map"] == "global"
    assert clusters[1]["peak_z"] == -5.0 and clusters[1]["map"] == "source-resolved"
    assert clusters[0]["region"] == "Visual"
    coupling = SimpleNamespace(bands={"alpha": res}, source_maps=SimpleNamespace(grid=grid))
    sentences, coupled = run_findings("task-tp", coupling, 0.05, regions)
    assert coupled and sentences[0].startswith("task-tp, alpha band power: 35 voxels couple")
    assert "27 voxels near Visual (peak z +6.0, global" in sentences[0]
