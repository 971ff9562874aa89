"""Validity rows for source localisation and bad-channel detection (issue 16).

- localisation: each planted source of the ``checker`` and ``tp`` tasks simulated by
  :func:`bids_app.simulate.neural.simulate_neural` (ideal or hard realism; hard: with the
  film-like stimulus features of :func:`bids_app.simulate.stimulus.simulate_stimulus`
  too), imaged with the
  pipeline's defaults (:func:`bids_app.eeg.source.compute_source_maps`: eLORETA, diagonal
  noise covariance, ``SourceConfig.bands``, power above each source's aperiodic (1/f)
  background) and scored by
  :func:`bids_app.simulate.scenario.localisation_error` in the default band holding the
  source. Baseline: MNE's sLORETA (:func:`mne.minimum_norm.apply_inverse_cov`) on the same
  electrodes, head model, grid, noise covariance and band (total band power), scored the
  same way.
- bad channels: % of the 61 channels flagged on clean simulated EEG (brain activity only,
  after the pipeline's band-pass), eegfmri's pyprep criteria beside MNE's local outlier
  factor (:func:`mne.preprocessing.find_bad_channels_lof`).
"""

from __future__ import annotations

import mne
import numpy as np
from nilearn import datasets

from bids_app.config import EEGConfig, SourceConfig
from bids_app.eeg import forward, source
from bids_app.eeg.clean import find_bad_channels
from bids_app.natview import facts as nv
from bids_app.simulate import scenario
from bids_app.simulate.neural import simulate_neural
from bids_app.simulate.stimulus import simulate_stimulus

SFREQ, DURATION = 250.0, 120.0
TASKS = ("checker", "tp")
BASELINE = "MNE sLORETA (apply_inverse_cov, same forward/bands)"


def simulate_raw(task: str, realism: str, seed: int):
    """Simulated brain EEG (61 channels, 250 Hz, 120 s) and its stimulus."""
    stim = simulate_stimulus(task, DURATION, 10.0, (32, 24), np.random.default_rng(seed),
                             render=False, realism=realism)  # fmt: skip
    sim = simulate_neural(task, stim, SFREQ, int(DURATION * SFREQ), 0.0,
                          np.random.default_rng(seed + 1000), realism=realism)  # fmt: skip
    raw = mne.io.RawArray(sim.eeg.astype(float),
                          mne.create_info(list(nv.EEG_CHANNELS), SFREQ, "eeg"), verbose="error")
    return raw, stim


def _sloreta_power(raw, mask, bands, windows) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Band power (n_windows, n_sources) from MNE's sLORETA on band covariances; grid."""
    raw = raw.copy()
    forward.set_positions(raw)
    raw.set_eeg_reference("average", projection=True, verbose="error")
    bem = forward.make_head_model(raw.info)
    grid = forward.make_source_grid(mask, spacing_mm=SourceConfig().source_spacing_mm, bem=bem)
    fwd = forward.make_volume_forward(raw.info, grid.rr_mm, bem)
    noise = source.make_noise_cov(raw)
    with mne.utils.use_log_level("error"):
        inv = mne.minimum_norm.make_inverse_operator(raw.info, fwd, noise, loose=1.0)
    out = {}
    for name, lo, hi in bands:
        data = raw.copy().filter(lo, hi, verbose="error").get_data()
        data -= data.mean(axis=0, keepdims=True)
        rows = []
        for sl in windows:
            x = data[:, sl]
            cov = mne.Covariance(x @ x.T / x.shape[1], raw.ch_names, [], raw.info["projs"],
                                 nfree=x.shape[1] - 1)  # fmt: skip
            with mne.utils.use_log_level("error"):
                stc = mne.minimum_norm.apply_inverse_cov(cov, raw.info, inv, nave=1,
                                                         lambda2=1 / 9, method="sLORETA")
            rows.append(stc.data[:, 0])
        out[name] = np.array(rows)
    return out, grid.rr_mm


def localisation_errors(realism: str, seed: int) -> list[tuple[str, str, float]]:
    """(source, method, error mm) for every planted source of ``TASKS``."""
    mask = datasets.load_mni152_brain_mask(resolution=3)
    bands = SourceConfig().bands
    found = []
    for task in TASKS:
        raw, stim = simulate_raw(task, realism, seed)
        onsets = np.arange(0, DURATION - nv.TR, nv.TR)
        starts = np.round(onsets * SFREQ).astype(int)
        windows = [slice(a, a + int(nv.TR * SFREQ)) for a in starts]
        flicker = np.interp(onsets + nv.TR / 2, np.arange(len(stim.checker_on)) / stim.fps,
                            stim.checker_on.astype(float)) > 0.5  # fmt: skip
        maps = source.compute_source_maps(raw, onsets, nv.TR, mask, bands=bands)
        base, rr = _sloreta_power(raw, mask, bands, windows)
        for src in scenario.sources_for_task(task):
            band = scenario.band_of(src, bands)
            found.append((src.name, "eegfmri", scenario.localisation_error(
                src, maps.source_power[band], maps.grid.rr_mm, flicker)))
            found.append((src.name, BASELINE, scenario.localisation_error(
                src, base[band], rr, flicker)))
    return found


def localisation_rows(seeds: list[int]) -> list[dict]:
    """Median and max error per planted source and over all, on ideal and hard data."""
    rows = []
    for realism in ("ideal", "hard"):
        found = [f for seed in seeds for f in localisation_errors(realism, seed)]
        for method in ("eegfmri", BASELINE):
            mine = [(s, e) for s, m, e in found if m == method]
            groups = {"all sources": [e for _, e in mine]}
            for name in dict.fromkeys(s for s, _ in mine):
                groups[name] = [e for s, e in mine if s == name]
            for name, errs in groups.items():
                for stat, value in (("median", np.median(errs)), ("max", np.max(errs))):
                    rows.append({"check": f"localisation, {name}",
                                 "metric": f"localisation {stat} error (mm)",
                                 "realism": realism, "method": method,
                                 "value": round(float(value), 2)})  # fmt: skip
    return rows


def bad_channel_rows(seeds: list[int]) -> list[dict]:
    """% of clean simulated channels flagged bad, eegfmri (pyprep) beside MNE's LOF."""
    cfg = EEGConfig()
    rows = []
    for realism in ("ideal", "hard"):
        flagged = {"eegfmri": [], "MNE find_bad_channels_lof": []}
        for seed in seeds:
            for task in TASKS:
                raw, _ = simulate_raw(task, realism, seed)
                raw.filter(cfg.l_freq, cfg.h_freq, verbose="error")
                forward.set_positions(raw)
                flagged["eegfmri"].append(len(find_bad_channels(raw, random_state=seed)))
                with mne.utils.use_log_level("error"):
                    lof = mne.preprocessing.find_bad_channels_lof(raw)
                flagged["MNE find_bad_channels_lof"].append(len(lof))
        for method, counts in flagged.items():
            rows.append({"check": "bad channels on clean simulated EEG",
                         "metric": "channels flagged (%), max over recordings",
                         "realism": realism, "method": method,
                         "value": round(100.0 * max(counts) / len(nv.EEG_CHANNELS), 2)})
    return rows
