"""Simulated neural activity: planted dipoles and background brain noise on the scalp.

The planted sources of :mod:`bids_app.simulate.scenario` are dipoles at their MNI positions,
projected to the 61 NATVIEW EEG channels (reference FCz) through a 4-shell spherical head
(:func:`bids_app.eeg.forward.make_head_model` with ``simulation=True``) that differs from
the 3-shell sphere the inverse uses, so source imaging is never tested on its own model.

Waveforms
---------
* spontaneous sources (alpha): a narrow-band oscillation (random-walk phase) whose
  amplitude is a slow log-normal process (< 0.1 Hz);
* the SSVEP source: a phase-locked 12 Hz oscillation during checkerboard flicker;
* feature sources: an oscillation whose amplitude follows the driving stimulus feature, plus
  an evoked transient (Hann-shaped, inside ``scenario.RESPONSE_WINDOW_S``) after each onset.
  With ``null=True`` they run on an independent slow random amplitude and have no
  transients (no link to the stimulus);
* background: pink (1/f) activity of many random dipoles. Because the dipoles are
  independent with equal spectra, their scalp projection is Gaussian with covariance
  ``L L^T``; it is generated exactly in channel space as ``U sqrt(S) w(t)`` (61 pink series),
  which costs 61 series instead of hundreds.

Hard mode (``realism`` with ``eeg_*`` switches, :mod:`bids_app.simulate.eeg_realism`):
jittered electrodes and a further-shifted sphere (for the planted sources and the
background alike), patches of dipoles instead of point sources, amplitude-modulated and
frequency-drifting rhythms.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any

import mne
import numpy as np
import pandas as pd
from scipy import signal

from bids_app.eeg import forward
from bids_app.natview import facts as nv
from bids_app.simulate import eeg_realism, scenario
from bids_app.simulate.realism import Realism, resolve_realism

logger = logging.getLogger(__name__)

#: Rate of the source power envelopes handed to the BOLD simulator.
POWER_SFREQ = 10.0
#: Number of random background dipoles and RMS of their scalp activity (volts).
N_BACKGROUND = 300
BACKGROUND_RMS_V = 8e-6
#: Peak amplitude of evoked transients relative to the oscillation amplitude.
TRANSIENT_GAIN = 1.5
#: Number of cached random background-dipole layouts (one is drawn per call).
N_LAYOUTS = 8
#: Samples assembled at a time.
CHUNK = 262_144


@dataclass
class NeuralSim:
    """Simulated EEG and its planted truth.

    Attributes
    ----------
    eeg : ndarray, shape (61, n_times)
        Scalp potentials in volts, FCz reference, ``natview_facts.EEG_CHANNELS`` order.
    source_waveforms : ndarray, shape (n_src, n_times)
        Dipole moments (A*m) of the planted sources.
    source_names : tuple of str
        Names of the planted sources (rows of ``source_waveforms``).
    source_power : dict
        Source name -> power envelope ((nA*m)^2) of the source's oscillation (the power in
        its band, evoked transients excluded) at ``power_sfreq`` (10 Hz); this is what
        drives the BOLD of the coupled voxels.
    dependency_windows : DataFrame
        Columns onset_s, duration_s, feature, source (stimulus time).
    sfreq : float
        EEG sampling rate.
    t0_s : float
        Stimulus time of EEG sample 0.
    power_sfreq : float
        Rate of ``source_power``; sample j of it is at stimulus time ``t0_s + j / 10``.
    gain : ndarray, shape (61, n_src)
        Simulation lead field (V per A*m) of each planted source along its orientation
        (hard mode: the mean over its patch, through the jittered, shifted head).
    """

    eeg: np.ndarray
    source_waveforms: np.ndarray
    source_names: tuple[str, ...]
    source_power: dict[str, np.ndarray]
    dependency_windows: pd.DataFrame
    sfreq: float
    t0_s: float
    power_sfreq: float = POWER_SFREQ
    gain: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    ch_names: tuple[str, ...] = nv.EEG_CHANNELS


@functools.lru_cache(maxsize=4)
def _simulation_model() -> tuple[Any, Any]:
    info = forward.make_eeg_info(list(nv.EEG_CHANNELS) + [nv.EEG_REFERENCE])
    return info, forward.make_head_model(info, simulation=True)


def simulation_model(real: Realism, rng: np.random.Generator | None) -> tuple[Any, Any]:
    """Electrodes (info) and head (sphere model) that one recording is simulated with.

    The template cap on the 4-shell simulation sphere; with hard-mode EEG switches, the
    electrodes are jittered and the sphere centre moved further (drawn from ``rng``).
    """
    if not (real.eeg_electrode_jitter_mm or real.eeg_head_offset_mm):
        return _simulation_model()
    info, _ = _simulation_model()
    offset = eeg_realism.head_offset(real.eeg_head_offset_mm, rng)
    bem = forward.make_head_model(info, simulation=True, extra_offset_m=offset)
    centre, _ = forward.fit_head_sphere(info)
    template = np.array([ch["loc"][:3] for ch in info["chs"]])
    moved = eeg_realism.jitter_positions(template, centre, real.eeg_electrode_jitter_mm, rng)
    jittered = mne.create_info(list(info.ch_names), info["sfreq"], "eeg")
    jittered.set_montage(mne.channels.make_dig_montage(
        ch_pos=dict(zip(info.ch_names, moved)), coord_frame="head"))
    return jittered, bem


def planted_gain(rr_mm: np.ndarray, nn: np.ndarray, model: tuple[Any, Any] | None = None
                 ) -> np.ndarray:  # fmt: skip
    """Lead field (61, n) of dipoles at MNI positions with orientations ``nn`` (FCz ref.).

    Parameters
    ----------
    rr_mm : ndarray, shape (n, 3)
        Positions in MNI millimetres.
    nn : ndarray, shape (n, 3)
        Dipole orientations (normalised here).
    model : tuple | None
        (info, sphere model) from :func:`simulation_model` (None: the template cap).

    Returns
    -------
    ndarray, shape (61, n)
        Volts per A*m at the EEG channels, referenced to FCz.
    """
    info, bem = model if model is not None else _simulation_model()
    nn = np.asarray(nn, float)
    nn = nn / np.linalg.norm(nn, axis=1, keepdims=True)
    fwd = forward.make_volume_forward(info, rr_mm, bem)
    g = fwd["sol"]["data"].reshape(len(info.ch_names), -1, 3)
    g = np.einsum("cnk,nk->cn", g, nn)
    return g[:-1] - g[-1:]  # reference to FCz (last row)


@functools.lru_cache(maxsize=N_LAYOUTS)
def _background_mixing(seed: int) -> np.ndarray:
    """Channel-space mixing matrix of ``N_BACKGROUND`` random dipoles (unit RMS output)."""
    return background_mixing(seed, _simulation_model())


def background_mixing(seed: int, model: tuple[Any, Any]) -> np.ndarray:
    """Mixing matrix of ``N_BACKGROUND`` random dipoles of layout ``seed`` through ``model``."""
    _, bem = model
    r0, rad = forward.inner_radius(bem)
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(N_BACKGROUND, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    radius = rad * (0.3 + 0.6 * rng.uniform(size=N_BACKGROUND) ** (1 / 3))
    rr = (r0 + d * radius[:, None]) * 1000
    nn = rng.normal(size=(N_BACKGROUND, 3))
    lead = planted_gain(rr, nn, model)
    cov = lead @ lead.T / N_BACKGROUND
    evals, evecs = np.linalg.eigh(cov)
    mixing = evecs * np.sqrt(np.clip(evals, 0, None))
    return mixing / np.sqrt(np.trace(cov) / len(cov))


def pink_noise(n_series: int, n_times: int, sfreq: float, rng: np.random.Generator,
               *, fmin: float = 0.5) -> np.ndarray:
    """Unit-variance Gaussian noise with a 1/f power spectrum above ``fmin``."""
    freqs = np.fft.rfftfreq(n_times, 1 / sfreq)
    shape = 1 / np.sqrt(np.maximum(freqs, fmin))
    shape[0] = 0.0
    out = np.empty((n_series, n_times), np.float32)
    for i in range(n_series):
        spec = (rng.normal(size=len(freqs)) + 1j * rng.normal(size=len(freqs))) * shape
        x = np.fft.irfft(spec, n_times)
        out[i] = x / x.std()
    return out


def _slow_amplitude(n_times: int, sfreq: float, rng: np.random.Generator,
                    *, sigma: float = 0.6, cutoff_hz: float = 0.08) -> np.ndarray:
    """Log-normal amplitude (mean 1) varying below ``cutoff_hz``."""
    n_slow = int(np.ceil(n_times / sfreq * POWER_SFREQ)) + 2
    b, a = signal.butter(2, cutoff_hz / (POWER_SFREQ / 2))
    g = signal.filtfilt(b, a, rng.normal(size=n_slow + 200))[100:-100]
    g = (g - g.mean()) / g.std()
    slow = np.exp(sigma * g)
    slow /= slow.mean()
    return np.interp(np.arange(n_times) / sfreq * POWER_SFREQ, np.arange(n_slow), slow)


def _at_times(values: np.ndarray, fps: float, times: np.ndarray) -> np.ndarray:
    """Resample a stimulus series (fps) at stimulus times; zero outside the stimulus."""
    values = np.asarray(values, float)
    return np.interp(times, np.arange(len(values)) / fps, values, left=0.0, right=0.0)


def _transients(onsets: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Sum of Hann bumps filling ``RESPONSE_WINDOW_S`` after each onset."""
    lo, hi = scenario.RESPONSE_WINDOW_S
    out = np.zeros(len(times))
    step = times[1] - times[0] if len(times) > 1 else 1.0
    for onset in np.asarray(onsets, float):
        i0 = int(np.ceil((onset + lo - times[0]) / step))
        i1 = int(np.floor((onset + hi - times[0]) / step))
        i0, i1 = max(i0, 0), min(i1, len(times) - 1)
        if i1 <= i0:
            continue
        phase = (times[i0:i1 + 1] - onset - lo) / (hi - lo)
        out[i0:i1 + 1] += np.sin(np.pi * phase) ** 2
    return out


def _feature_series(stimulus: Any, feature: str) -> np.ndarray:
    if feature in getattr(stimulus, "features", {}):
        return np.asarray(stimulus.features[feature], float)
    if feature == "checker" and getattr(stimulus, "checker_on", None) is not None:
        return np.asarray(stimulus.checker_on, float)
    raise KeyError(f"The stimulus has no feature '{feature}'.")


def _source_gains(sources, model, real: Realism, rng) -> np.ndarray:
    """Lead field (61, n_src) of each planted source: its dipole, or its patch's mean."""
    if not sources:
        return np.zeros((len(nv.EEG_CHANNELS), 0))
    n = max(1, real.eeg_patch_dipoles)
    patches = [eeg_realism.source_patch(np.array(s.mni_mm), np.array(s.orientation), n,
                                        real.eeg_patch_radius_mm, rng) for s in sources]
    rr = np.concatenate([p[0] for p in patches])
    nn = np.concatenate([p[1] for p in patches])
    gain = planted_gain(rr, nn, model)
    return gain.reshape(len(gain), len(sources), n).mean(axis=2)


def simulate_neural(task: str, stimulus: Any, sfreq: float, n_times: int, t0_s: float,
                    rng: np.random.Generator, null: bool = False,
                    realism: str | Realism = "ideal") -> NeuralSim:
    """Simulate scalp EEG of the planted sources of ``task`` plus background activity.

    Parameters
    ----------
    task : str
        NATVIEW task name (selects ``scenario.sources_for_task``).
    stimulus : StimulusSim
        Output of ``simulate_stimulus`` (``features``, ``onsets``, ``checker_on``, ``fps``).
    sfreq : float
        EEG sampling rate.
    n_times : int
        Number of EEG samples.
    t0_s : float
        Stimulus time of the first EEG sample (negative when EEG starts before the video).
    rng : numpy.random.Generator
        Random generator (the only source of randomness).
    null : bool
        Remove every stimulus -> source link.
    realism : {"ideal", "hard"} | Realism
        Hard-mode EEG effects (``eeg_*`` fields); drawn from a child stream of ``rng``, so
        the ideal draws are the same in both modes.

    Returns
    -------
    NeuralSim
    """
    real = resolve_realism(realism)
    hard_rng = rng.spawn(1)[0] if real.eeg_hard else None
    fps = float(getattr(stimulus, "fps", POWER_SFREQ))
    times = t0_s + np.arange(n_times) / sfreq
    sources = scenario.sources_for_task(task)
    waves = np.zeros((len(sources), n_times), np.float64)
    power = {}
    n_pow = int(np.ceil(n_times / sfreq * POWER_SFREQ))
    bins = np.minimum((np.arange(n_times) / sfreq * POWER_SFREQ).astype(int), n_pow - 1)
    counts = np.bincount(bins, minlength=n_pow)
    rows = []
    for k, src in enumerate(sources):
        amp_nam = src.amplitude_nam
        if src.feature is None or null:
            amplitude = _slow_amplitude(n_times, sfreq, rng)
            transient = np.zeros(n_times)
        else:
            feat = _at_times(_feature_series(stimulus, src.feature), fps, times)
            span = np.ptp(feat) or 1.0
            if src.feature == "checker":
                amplitude = (feat - feat.min()) / span
            else:
                amplitude = 0.15 + (feat - feat.min()) / span
            onsets = np.asarray(getattr(stimulus, "onsets", {}).get(src.feature, []), float)
            transient = _transients(onsets, times)
            lo, hi = scenario.RESPONSE_WINDOW_S
            rows += [(o + lo, hi - lo, src.feature, src.name) for o in onsets
                     if times[0] <= o + lo and o + hi <= times[-1]]
        if src.feature == "checker" and not null:
            phase = 2 * np.pi * src.freq_hz * times + rng.uniform(0, 2 * np.pi)
        else:  # narrow-band: phase random walk of ~0.5 Hz bandwidth
            jitter = np.cumsum(rng.normal(scale=2 * np.pi * 0.5 / np.sqrt(sfreq), size=n_times))
            phase = 2 * np.pi * src.freq_hz * times + jitter
        if real.eeg_frequency_drift_hz and src.feature != "checker":
            phase += 2 * np.pi * np.cumsum(eeg_realism.frequency_drift(
                n_times, sfreq, real.eeg_frequency_drift_hz, hard_rng)) / sfreq
        if real.eeg_amplitude_modulation:
            amplitude = amplitude * eeg_realism.amplitude_modulation(
                n_times, sfreq, real.eeg_amplitude_modulation, hard_rng)
        waves[k] = amp_nam * (amplitude * np.cos(phase) + TRANSIENT_GAIN * transient)
        inst = (amp_nam * amplitude) ** 2 / 2  # oscillation power in the source's band
        power[src.name] = np.bincount(bins, weights=inst, minlength=n_pow) / np.maximum(counts, 1)
    model = simulation_model(real, hard_rng)
    gain = _source_gains(sources, model, real, hard_rng)
    waves *= 1e-9  # nA*m -> A*m
    layout = int(rng.integers(N_LAYOUTS))
    mixing = BACKGROUND_RMS_V * (_background_mixing(layout) if model is _simulation_model()
                                 else background_mixing(layout, model))  # fmt: skip
    background = pink_noise(len(mixing), n_times, sfreq, rng)
    eeg = np.empty((len(gain), n_times), np.float32)
    for a in range(0, n_times, CHUNK):  # chunked: bounded memory at 5 kHz x 10 min
        b = min(a + CHUNK, n_times)
        eeg[:, a:b] = gain @ waves[:, a:b] + mixing @ background[:, a:b]
    del background
    windows = pd.DataFrame(rows, columns=["onset_s", "duration_s", "feature", "source"])
    logger.info("Simulated %d sources for task %s (null=%s): EEG RMS %.1f uV.",
                len(sources), task, null, 1e6 * float(np.sqrt(np.mean(eeg**2))))
    return NeuralSim(eeg=eeg, source_waveforms=waves.astype(np.float32),
                     source_names=tuple(s.name for s in sources), source_power=power,
                     dependency_windows=windows, sfreq=float(sfreq), t0_s=float(t0_s),
                     gain=gain)
