"""Source imaging on the fMRI grid: localisation of planted dipoles, grid, electrodes."""

from __future__ import annotations

import functools

import mne
import nibabel as nib
import numpy as np
import pytest
from nilearn import datasets

from bids_app.config import SourceConfig
from bids_app.eeg import forward, source
from bids_app.errors import InputError
from bids_app.natview import facts as nv
from bids_app.simulate import scenario
from bids_app.simulate.neural import simulate_neural
from bids_app.simulate.stimulus import simulate_stimulus

SFREQ, TR, DURATION = 250.0, nv.TR, 120.0


@pytest.fixture(scope="module")
def mask() -> nib.Nifti1Image:
    return datasets.load_mni152_brain_mask(resolution=3)


def _maps(task: str, mask, method: str = "eLORETA", noise_cov: str = "diagonal",
          background: str = "aperiodic"):
    stim = simulate_stimulus(task, DURATION, 10.0, (32, 24), np.random.default_rng(11),
                             render=False)
    sim = simulate_neural(task, stim, SFREQ, int(DURATION * SFREQ), 0.0,
                          np.random.default_rng(12))
    raw = mne.io.RawArray(sim.eeg.astype(float),
                          mne.create_info(list(nv.EEG_CHANNELS), SFREQ, "eeg"), verbose="error")
    onsets = np.arange(0, DURATION - TR, TR)
    bands = tuple((s.name, s.freq_hz - 1.0, s.freq_hz + 1.0)
                  for s in scenario.sources_for_task(task))
    maps = source.compute_source_maps(raw, onsets, TR, mask, bands=bands, method=method,
                                      noise_cov=noise_cov, noise_cov_baseline_s=(0.0, 30.0),
                                      background=background)
    on = np.interp(onsets + TR / 2, np.arange(len(stim.checker_on)) / stim.fps,
                   stim.checker_on.astype(float)) > 0.5
    return maps, on


@pytest.mark.parametrize("task", ["checker", "tp"])
def test_localisation_error_of_planted_sources(task, mask):
    maps, flicker = _maps(task, mask)
    for src in scenario.sources_for_task(task):
        power = maps.source_power[src.name]
        if src.feature == "checker":  # SSVEP: flicker minus rest blocks
            score = power[flicker].mean(0) - power[~flicker].mean(0)
        else:
            score = power.mean(0)
        peak = maps.grid.rr_mm[np.argmax(score)]
        error = np.linalg.norm(peak - np.array(src.mni_mm))
        assert error <= 20.0, (src.name, peak, error)  # measured 2.8-15.7 mm


@pytest.mark.parametrize("noise_cov", ["adhoc", "baseline"])
def test_noise_covariance_options_localise_alpha(noise_cov, mask):
    maps, _ = _maps("tp", mask, noise_cov=noise_cov)
    peak = maps.grid.rr_mm[np.argmax(maps.mean_power("alpha_occipital"))]
    assert np.linalg.norm(peak - np.array(scenario.PLANTED_SOURCES[0].mni_mm)) <= 20.0


def test_power_images_on_fmri_grid(mask):
    maps, _ = _maps("tp", mask, method="sLORETA", background="none")
    img = maps.power_img("alpha_occipital")
    assert img.shape == mask.shape + (len(maps.window_onsets_s),)
    np.testing.assert_array_equal(img.affine, mask.affine)
    inside = np.asarray(mask.dataobj) > 0
    data = img.get_fdata()
    assert np.all(data[~inside] == 0) and np.all(data[inside].mean(-1) > 0)
    # channel power is in V^2 at scalp level: a few (uV)^2 to tens of (uV)^2
    assert 1e-13 < np.median(maps.channel_power["alpha_occipital"]) < 1e-9
    above, _ = _maps("tp", mask, method="sLORETA")  # default: above the aperiodic fit
    assert above.background == "aperiodic" and maps.background == "none"
    total, periodic = (m.mean_power("alpha_occipital") for m in (maps, above))
    assert np.all(periodic >= -1e-9 * total.max()) and np.all(periodic <= total)
    # the background share is one constant per source: window-to-window changes are kept
    np.testing.assert_allclose(np.diff(above.source_power["alpha_occipital"], axis=0),
                               np.diff(maps.source_power["alpha_occipital"], axis=0),
                               rtol=1e-9, atol=1e-12 * total.max())
    np.testing.assert_array_equal(above.channel_power["alpha_occipital"],
                                  maps.channel_power["alpha_occipital"])


def test_source_grid_interpolation_is_exact_for_linear_fields(mask):
    grid = forward.make_source_grid(mask, spacing_mm=10.0)
    assert np.all(np.asarray(mask.dataobj)[tuple(np.round(nib.affines.apply_affine(
        np.linalg.inv(mask.affine), grid.rr_mm)).astype(int).T)] > 0)
    field = grid.rr_mm @ np.array([0.3, -0.2, 0.5]) + 4.0
    vox = grid.to_voxels(field)
    truth = grid.voxel_mm @ np.array([0.3, -0.2, 0.5]) + 4.0
    full = np.isclose(np.asarray(grid.weights.sum(1)).ravel(), 1.0)
    inner = full & (_corner_count(grid) == 8)  # interior voxels: all 8 cell corners present
    assert inner.mean() > 0.4
    np.testing.assert_allclose(vox[inner], truth[inner], atol=1e-3)
    assert np.corrcoef(vox, truth)[0, 1] > 0.99


def _corner_count(grid) -> np.ndarray:
    nodes = {tuple(np.round(r).astype(int)) for r in grid.rr_mm}
    base = np.floor(grid.voxel_mm / 10.0) * 10.0
    count = np.zeros(len(base), int)
    for corner in np.ndindex(2, 2, 2):
        keys = np.round(base + 10.0 * np.array(corner)).astype(int)
        count += np.array([tuple(k) in nodes for k in keys])
    return count


def test_electrodes_alignment(tmp_path, caplog):
    template = forward.template_positions("standard_1005")
    names = list(nv.EEG_CHANNELS)
    xyz = np.array([template[n] for n in names])
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                    [0, 0, 1]])
    measured = 1000 * xyz @ rot.T + np.array([5.0, -30.0, 40.0])  # mm, rotated, shifted
    path = tmp_path / "electrodes.tsv"
    lines = ["name\tx\ty\tz"] + [f"{n}\t{x}\t{y}\t{z}" for n, (x, y, z) in zip(names, measured)]
    path.write_text("\n".join(lines) + "\n")
    aligned = forward.read_electrodes(path, template)
    err = max(np.linalg.norm(aligned[n] - template[n]) for n in names)
    assert err < 1e-4  # 0.1 mm
    unit = xyz / np.linalg.norm(xyz, axis=1, keepdims=True)
    lines = ["name\tx\ty\tz"] + [f"{n}\t{x}\t{y}\t{z}" for n, (x, y, z) in zip(names, unit)]
    path.write_text("\n".join(lines) + "\n")
    assert np.allclose(forward.read_electrodes(path, template)["Oz"], template["Oz"])
    metres = xyz @ rot.T  # e.g. the NATVIEW converter's template positions (metres)
    lines = ["name\tx\ty\tz"] + [f"{n}\t{x}\t{y}\t{z}" for n, (x, y, z) in zip(names, metres)]
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level("INFO", logger=forward.logger.name):
        aligned = forward.read_electrodes(path, template)
    assert "unit sphere" not in caplog.text and "Aligned" in caplog.text
    assert max(np.linalg.norm(aligned[n] - template[n]) for n in names) < 1e-4
    path.write_text("name\tx\n")
    with pytest.raises(InputError, match="electrodes.tsv"):
        forward.read_electrodes(path, template)


def test_bad_options():
    info = forward.make_eeg_info(list(nv.EEG_CHANNELS))
    with pytest.raises(ValueError, match="Inverse method"):
        source.make_inverse_kernel(info, None, None, method="LORETA")
    with pytest.raises(InputError, match="no position"):
        forward.make_eeg_info(["Oz", "NotAChannel"])


def test_bad_segments_are_left_out_of_window_power():
    from bids_app.eeg import features

    rng = np.random.default_rng(3)
    info = mne.create_info(["Oz", "Pz"], 100.0, "eeg")
    data = rng.normal(size=(2, 6000))
    data[:, 1000:1100] *= 100  # a burst inside window 1 ...
    raw = mne.io.RawArray(data, info, first_samp=300, verbose="error")  # cropped recording
    raw.set_annotations(mne.Annotations([10.0, 40.0], [1.0, 20.0], ["BAD_burst", "BAD_acq"]))
    bounds = features.window_bounds(np.arange(0, 60, 5.0), 5.0, 100.0, 6000)
    covs = features.window_covariances(data, bounds, features.good_samples(raw))
    power = features.channel_power(covs)
    assert np.all(power[2] < 1.5)  # ... is excluded (window 10-15 s keeps 4 s)
    assert np.isnan(power[8:12]).all()  # windows fully inside the 40-60 s bad segment
    np.testing.assert_allclose(power[0], data[:, :500].var(1), rtol=0.05)



def test_welch_csd_diagonal_is_scipy_welch():
    from scipy import signal

    from bids_app.eeg import features

    rng = np.random.default_rng(0)
    data = rng.normal(size=(3, 5000))
    freqs, csd = features.welch_csd(data, 250.0, fmin=1.0, fmax=45.0)
    f, psd = signal.welch(data, 250.0, nperseg=500)
    keep = (f >= 1.0) & (f <= 45.0)
    np.testing.assert_allclose(freqs, f[keep])
    np.testing.assert_allclose(np.einsum("fcc->cf", csd), psd[:, keep], rtol=1e-10)
    good = np.ones(5000, bool)
    good[:600] = False  # the first two segments are left out
    _, part = features.welch_csd(data, 250.0, fmin=1.0, fmax=45.0, good=good)
    _, rest = features.welch_csd(data[:, 750:], 250.0, fmin=1.0, fmax=45.0)
    np.testing.assert_allclose(part, rest)


def test_aperiodic_fit_ignores_rhythms_and_leaves_the_periodic_power():
    freqs = np.arange(1.0, 45.5, 0.5)
    background = 10.0 ** (2.0 - 1.5 * np.log10(freqs))
    peak = 20.0 * np.exp(-0.5 * ((freqs - 6.0) / 1.0) ** 2)
    spectra = np.stack([background, background + peak])
    offset, exponent = source.fit_aperiodic(freqs, spectra)
    np.testing.assert_allclose(exponent, 1.5, atol=0.05)
    np.testing.assert_allclose(offset, 2.0, atol=0.1)
    gain = ((freqs >= 4.0) & (freqs < 8.0)).astype(float)
    share = source.aperiodic_share(freqs, spectra, offset, exponent, gain)
    assert abs(share[0] - 1.0) < 0.05  # no rhythm: all of it is background
    truth = (background * gain).sum() / ((background + peak) * gain).sum()
    assert abs(share[1] - truth) < 0.05


def test_background_option():
    with pytest.raises(ValueError, match="background"):
        source.compute_source_maps(None, np.zeros(1), 2.0, None, bands=(), background="1/f")


@functools.lru_cache(maxsize=8)
def _hard_errors(task: str, seed: int, neural_seed: int | None = None) -> dict[str, float]:
    """Errors (mm) of the planted sources of ``task`` on hard-mode data, default bands.

    By default the recordings of ``benchmarks/validity.py --checks localisation``
    (stimulus seed ``seed``, neural seed ``seed + 1000``).
    """
    mask = datasets.load_mni152_brain_mask(resolution=3)
    stim = simulate_stimulus(task, DURATION, 10.0, (32, 24), np.random.default_rng(seed),
                             render=False)  # fmt: skip
    neural_seed = seed + 1000 if neural_seed is None else neural_seed
    sim = simulate_neural(task, stim, SFREQ, int(DURATION * SFREQ), 0.0,
                          np.random.default_rng(neural_seed), realism="hard")  # fmt: skip
    raw = mne.io.RawArray(sim.eeg.astype(float),
                          mne.create_info(list(nv.EEG_CHANNELS), SFREQ, "eeg"), verbose="error")
    onsets = np.arange(0, DURATION - TR, TR)
    bands = SourceConfig().bands  # the pipeline's bands, not planted frequency +- 1 Hz
    maps = source.compute_source_maps(raw, onsets, TR, mask, bands=bands)
    flicker = np.interp(onsets + TR / 2, np.arange(len(stim.checker_on)) / stim.fps,
                        stim.checker_on.astype(float)) > 0.5  # fmt: skip
    return {src.name: scenario.localisation_error(
        src, maps.source_power[scenario.band_of(src, bands)], maps.grid.rr_mm, flicker)
        for src in scenario.sources_for_task(task)}


#: Seeds of the validity benchmark's localisation recordings.
SEEDS = (0, 1, 2)


@pytest.mark.parametrize("seed", SEEDS)
def test_hard_mode_every_planted_source_within_25_mm(seed):
    """Issue 16 bound, on the benchmark's recordings: jittered electrodes, head-model
    mismatch, source patches, non-stationary rhythms, the pipeline's default bands."""
    errors = {**_hard_errors("checker", seed), **_hard_errors("tp", seed)}
    assert all(e <= 25.0 for e in errors.values()), errors


def _pooled_median() -> float:
    return float(np.median([e for seed in SEEDS for task in ("checker", "tp")
                            for e in _hard_errors(task, seed).values()]))


def test_hard_mode_median_localisation_error_within_15_mm():
    """Issue 16 bound (measured 12.2 mm; 15.1 mm before the aperiodic background was
    subtracted, MNE sLORETA baseline 12.2 mm)."""
    assert _pooled_median() <= 15.0


def test_hard_mode_theta_source_within_25_mm_in_every_realisation():
    """The realisation in which the 6 Hz source was lost to the 1/f background of the
    default 4-8 Hz band (113 mm with total band power; 20.2 mm above the aperiodic fit)."""
    assert _hard_errors("tp", 2, neural_seed=3)["motion_mt"] <= 25.0


def test_remainder_power_removes_the_sources_own_share(mask):
    """The remainder power of a source is the mean-channel power without the forward
    projection of its cross-talk neighbourhood: all of the power with an empty
    neighbourhood, almost none with every source; for data made by one dipole, at most 3/4
    of the power at that dipole's source (the dipole's point spread reaches beyond the
    neighbourhood) and more than 90 % at sources 80 mm or more from it."""
    raw = mne.io.RawArray(np.zeros((len(nv.EEG_CHANNELS), 10)),
                          forward.make_eeg_info(list(nv.EEG_CHANNELS)), verbose="error")
    info = raw.set_eeg_reference("average", projection=True, verbose="error").info
    bem = forward.make_head_model(info)
    grid = forward.make_source_grid(mask, spacing_mm=15.0, bem=bem)
    fwd = forward.make_volume_forward(info, grid.rr_mm, bem)
    cov = mne.make_ad_hoc_cov(info, verbose="error")
    kernel = source.make_inverse_kernel(info, fwd, cov)
    gain = source.referenced_gain(fwd)
    hoods = source.crosstalk_neighbourhoods(kernel, gain)
    assert all(len(h) >= 1 for h in hoods) and len(hoods) == len(grid.rr_mm)
    rng = np.random.default_rng(0)
    dipole = int(np.argmin(np.linalg.norm(grid.rr_mm - [0.0, -80.0, 10.0], axis=1)))
    amplitude = rng.normal(size=(3, 1)) * rng.normal(size=(1, 4000)) * 1e-8
    data = gain[:, 3 * dipole:3 * dipole + 3] @ amplitude
    covs = np.stack([data[:, :2000] @ data[:, :2000].T, data[:, 2000:] @ data[:, 2000:].T])
    mean_power = np.einsum("wcc->w", covs)[:, None] / len(info.ch_names)
    empty = [np.zeros(0, int)] * len(hoods)
    np.testing.assert_allclose(source.remainder_power(kernel, gain, covs, empty),
                               np.repeat(mean_power, len(hoods), axis=1), rtol=1e-10)
    every = [np.arange(len(hoods))]
    assert np.all(source.remainder_power(kernel, gain, covs, every) < 0.05 * mean_power)
    rem = source.remainder_power(kernel, gain, covs, hoods) / mean_power
    far = np.linalg.norm(grid.rr_mm - grid.rr_mm[dipole], axis=1) >= 80.0
    assert np.all(rem[:, dipole] <= 0.75), rem[:, dipole]
    assert np.median(rem[:, far]) > 0.9, np.median(rem[:, far])
