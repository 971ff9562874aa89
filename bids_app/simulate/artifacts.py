"""Simulate the artifacts of EEG recorded inside an MR scanner (64 NATVIEW channels, 5 kHz).

Components (all in volts, rows in ``natview_facts.CHANNEL_NAMES`` order):

- **gradient**: slice-wise imaging artifact. Each slice plays the same gradient waveform on
  three axes (slice-select ramps and spoilers on z, an EPI readout train of 64 lines on x,
  phase-encoding blips on y); the EEG leads pick up dG/dt, modelled as smooth pulses at every
  ramp (width set by the amplifier's anti-alias filter). Each channel sees a channel-specific
  mixture of the three axes (loop areas), peak 1-10 mV, slowly drifting (head motion) and with
  a slow global amplitude drift. The scanner clock is not the EEG clock: a volume starts a
  random fraction of a sample before its R128 marker and slices follow on the scanner clock
  (``clock_ppm``), so every slice onset falls between EEG samples.
- **bcg**: ballistocardiogram, three temporal components locked to the R-peaks with delays
  150-300 ms, channel-specific mixtures (peak 50-150 uV) and beat-to-beat amplitude changes.
- **ecg**: P-QRS-T complex at each R-peak (heart rate 60-75 bpm, respiratory sinus
  arrhythmia and random beat-to-beat variability), inverted polarity with probability 0.3.
- **eog**: blinks (EOGL, EOGU rows, opposite polarity around the eye).
- **line**: 60 Hz and 180 Hz mains interference, channel-specific amplitude and phase.
- **noise**: white + pink sensor noise; ``noise_rms`` is its exact RMS per channel.

``realism`` (:mod:`bids_app.simulate.realism`) switches on the hard-mode effects: per-slice
waveforms, volume-to-volume amplitude, a sudden head movement, vibration lines (added to
**line**), drifting clocks, and beat-to-beat latency, shape and respiratory changes of the
BCG. The ideal preset draws nothing extra: its output is unchanged by the switch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import signal

from bids_app.natview import facts as nv
from bids_app.simulate import realism as rl

logger = logging.getLogger(__name__)

_SLICE_WAVEFORM_S = 0.046  # the gradient waveform of one slice lasts 46 ms
_FINE = 100  # oversampling of the analytic slice waveform before interpolation


@dataclass
class ArtifactSim:
    """Simulated MR-related artifacts and their ground truth.

    Attributes
    ----------
    gradient, bcg, line, noise : ndarray, shape (64, n_times), float32
        Additive components in volts (``CHANNEL_NAMES`` order).
    ecg : ndarray, shape (n_times,), float32
        Electrocardiogram (to be added on the ECG channel).
    eog : ndarray, shape (2, n_times), float32
        Blink signals on EOGL and EOGU.
    r_peaks_s : ndarray
        True R-peak times (s).
    slice_onsets_s : ndarray
        True onset of every slice of every volume, in acquisition order (s, EEG clock).
    noise_rms : ndarray, shape (64,)
        RMS of ``noise`` per channel (V).
    ecg_polarity : int
        +1 or -1 (inverted ECG lead).
    """

    gradient: np.ndarray
    bcg: np.ndarray
    ecg: np.ndarray
    eog: np.ndarray
    line: np.ndarray
    noise: np.ndarray
    r_peaks_s: np.ndarray
    slice_onsets_s: np.ndarray
    noise_rms: np.ndarray
    ecg_polarity: int = 1


def _pulses(tau_ms: np.ndarray, centres: np.ndarray, amps: np.ndarray, sigma_ms: float):
    out = np.zeros_like(tau_ms)
    for c, a in zip(centres, amps):
        out += a * np.exp(-0.5 * ((tau_ms - c) / sigma_ms) ** 2)
    return out


def slice_waveforms(tau_s: np.ndarray, sigma_ms: float = 0.2) -> np.ndarray:
    """dG/dt of the three gradient axes of one EPI slice (arbitrary units).

    Parameters
    ----------
    tau_s : ndarray
        Time since the slice onset (s).
    sigma_ms : float
        Width of each ramp pulse (ramp time convolved with the amplifier's anti-alias filter).

    Returns
    -------
    ndarray, shape (3, len(tau_s))
        Rows z (slice select), x (readout), y (phase encoding).
    """
    t = np.asarray(tau_s, dtype=float) * 1e3
    esp, n_lines, t0 = 0.56, 64, 6.0
    bounds = t0 + esp * np.arange(n_lines + 1)
    ro_amp = 2.0 * (-1.0) ** np.arange(n_lines + 1)
    ro_amp[0], ro_amp[-1] = 1.0, -0.5 * ro_amp[-2]
    z = _pulses(t, np.array([0.3, 2.9, 3.2, 4.2, 43.5, 45.0]),
                np.array([1.0, -1.0, -0.5, 0.5, 0.8, -0.8]), sigma_ms)  # fmt: skip
    x = _pulses(t, np.concatenate([[4.5, 5.3], bounds]),
                np.concatenate([[-0.5, 0.5], ro_amp]), sigma_ms)  # fmt: skip
    blips = bounds[1:-1]
    y = _pulses(t, np.concatenate([[4.6, 5.4], blips - 0.1, blips + 0.1]),
                np.concatenate([[-0.6, 0.6], np.full(blips.size, 0.15),
                                np.full(blips.size, -0.15)]), sigma_ms)  # fmt: skip
    out = np.stack([z, x, y])
    out[:, (t < -3 * sigma_ms) | (t > _SLICE_WAVEFORM_S * 1e3)] = 0.0
    return out


def _slow(rng: np.random.Generator, times: np.ndarray, n: int) -> np.ndarray:
    """``n`` smooth zero-mean unit-scale signals (periods 30-200 s) sampled at ``times``."""
    periods = rng.uniform(30.0, 200.0, (n, 3))
    phases = rng.uniform(0, 2 * np.pi, (n, 3))
    out = np.zeros((n, times.size))
    for k in range(3):
        out += np.sin(2 * np.pi * times[None, :] / periods[:, k : k + 1] + phases[:, k : k + 1])
    return out / np.sqrt(1.5)


def _gradient(n_times, sfreq, volume_onsets_s, slice_times, rng, real: rl.Realism, hard_rng):
    n_ch = len(nv.CHANNEL_NAMES)
    order = np.sort(np.asarray(slice_times, dtype=float))
    jitter = rng.uniform(0.0, 1.0, len(volume_onsets_s)) / sfreq
    vol_true = np.asarray(volume_onsets_s, dtype=float) - jitter
    onsets = (vol_true[:, None] + order[None, :] * (1.0 + real.clock_ppm * 1e-6)).ravel()
    gains = np.ones((onsets.size, 3))  # per slice and axis (hard mode)
    if hard_rng is not None:
        gains = np.tile(rl.slice_gains(hard_rng, order.size, real.slice_waveform_sd),
                        (len(vol_true), 1))  # fmt: skip
        gains *= np.repeat(rl.volume_gains(hard_rng, len(vol_true), real.volume_amplitude_sd),
                           order.size)[:, None]  # fmt: skip
    # the analytic waveform on a fine grid, then interpolated at each sample's exact lag
    fine_t = np.arange(-0.002, _SLICE_WAVEFORM_S + 0.001, 1.0 / (sfreq * _FINE))
    fine = slice_waveforms(fine_t)
    n_win = int(np.ceil((_SLICE_WAVEFORM_S + 0.003) * sfreq))
    starts = np.ceil((onsets - 0.002) * sfreq).astype(np.int64)
    idx = starts[:, None] + np.arange(n_win)[None, :]
    tau = idx / sfreq - onsets[:, None]
    keep = (idx >= 0) & (idx < n_times)
    axes = np.zeros((3, n_times))
    for a in range(3):
        vals = np.interp(tau[keep], fine_t, fine[a], left=0.0, right=0.0)
        if hard_rng is not None:
            vals *= np.broadcast_to(gains[:, a : a + 1], keep.shape)[keep]
        np.add.at(axes[a], idx[keep], vals)
    times = np.arange(n_times) / sfreq
    drift = 1.0 + 0.01 * _slow(rng, times, 1)[0]
    axes *= drift[None, :]
    mix0 = rng.normal(size=(n_ch, 3)) * np.array([1.0, 1.0, 0.4])
    peak = np.abs(mix0 @ fine).max(axis=1)
    target = np.exp(rng.uniform(np.log(1e-3), np.log(1e-2), n_ch))
    mix0 *= (target / peak)[:, None]
    motion = _slow(rng, times, 2)
    out = (mix0 @ axes).astype(np.float32)
    for k in range(2):
        mix = 0.01 * rng.normal(size=(n_ch, 3)) * np.abs(mix0).mean(axis=1, keepdims=True)
        out += (mix @ (axes * motion[k][None, :])).astype(np.float32)
    if hard_rng is not None and real.head_jump:
        at, dmix = rl.jump(hard_rng, n_times, mix0, real.head_jump)
        out[:, at:] += (dmix @ axes[:, at:]).astype(np.float32)
    return out, onsets


def _heartbeats(n_times, sfreq, rng):
    hr = rng.uniform(60.0, 75.0)
    rr0 = 60.0 / hr
    duration = n_times / sfreq
    r = [rng.uniform(0.1, rr0)]
    ar = 0.0
    while r[-1] < duration + 2.0:
        ar = 0.7 * ar + rng.normal(0, 0.03)
        rr = rr0 * (1 + 0.04 * np.sin(2 * np.pi * 0.25 * r[-1]) + ar)
        r.append(r[-1] + float(np.clip(rr, 0.6 * rr0, 1.4 * rr0)))
    return np.asarray(r)


def _place(n_times, sfreq, events_s, amps, kernel, lag_s):
    """Sum of ``kernel`` copies scaled by ``amps`` at ``events_s + lag_s`` (FFT convolution)."""
    train = np.zeros(n_times + kernel.size)
    pos = np.round((events_s + lag_s) * sfreq).astype(np.int64)
    ok = (pos >= 0) & (pos < train.size)
    np.add.at(train, pos[ok], amps[ok])
    return signal.oaconvolve(train, kernel)[:n_times]


def _bcg_kernel(k_t: np.ndarray, width: float, k: int) -> np.ndarray:
    """Pulse-artifact component ``k`` (0, 2: Gaussian; 1: its derivative) at times ``k_t``."""
    if k == 1:
        return -k_t / width * np.exp(0.5 - 0.5 * (k_t / width) ** 2)
    return np.exp(-0.5 * (k_t / width) ** 2)


def _place_varied(n_times, sfreq, r_peaks, amps, width, k, delay, latency, stretch):
    """Component ``k`` beat by beat, each with its own latency and width (hard mode)."""
    out = np.zeros(n_times)
    half = int(0.3 * sfreq)
    for b, r in enumerate(r_peaks):
        centre = (r + delay + latency[b]) * sfreq
        start = int(np.floor(centre)) - half
        idx = np.arange(max(start, 0), min(start + 2 * half, n_times))
        if idx.size:
            out[idx] += amps[b] * _bcg_kernel((idx - centre) / sfreq, width * stretch[b], k)
    return out


def _cardiac(n_times, sfreq, r_peaks, rng, real: rl.Realism, hard_rng):
    n_ch = len(nv.CHANNEL_NAMES)
    k_t = np.arange(int(0.6 * sfreq)) / sfreq - 0.3  # kernels centred on their lag
    bcg_comp = np.zeros((3, n_times))
    delays = np.sort(rng.uniform(0.15, 0.30, 3))
    beats = None if hard_rng is None else rl.beat_variation(hard_rng, r_peaks, 3, real)
    for k in range(3):
        width = rng.uniform(0.03, 0.06)
        kernel = _bcg_kernel(k_t, width, k)
        resp = 1 + 0.1 * np.sin(2 * np.pi * 0.25 * r_peaks + rng.uniform(0, 2 * np.pi))
        amps = resp * (1 + 0.15 * rng.normal(size=r_peaks.size))
        if beats is None:
            bcg_comp[k] = _place(n_times, sfreq, r_peaks, amps, kernel, delays[k] - 0.3)
        else:  # the respiratory modulation of hard mode replaces the ideal 10 %
            latency, stretch, resp_amp = (v[k] for v in beats)
            amps = resp_amp * amps / resp
            bcg_comp[k] = _place_varied(n_times, sfreq, r_peaks, amps, width, k, delays[k],
                                        latency, stretch)  # fmt: skip
    weights = rng.normal(size=(n_ch, 3))
    bcg = weights @ bcg_comp
    # every channel's typical (median over beats) peak amplitude is 50-150 uV
    pos = np.round(r_peaks[r_peaks < n_times / sfreq - 0.6] * sfreq).astype(np.int64)
    win = pos[:, None] + np.arange(int(0.6 * sfreq))[None, :]
    peak = np.median(np.abs(bcg[:, win]).max(axis=2), axis=1)
    bcg = (bcg * (rng.uniform(50e-6, 150e-6, n_ch) / peak)[:, None]).astype(np.float32)
    # ECG: P, Q, R, S, T waves
    e_t = np.arange(int(0.8 * sfreq)) / sfreq - 0.3
    waves = ((-0.16, 0.1, 0.025), (-0.03, -0.15, 0.008), (0.0, 1.0, 0.009),
             (0.03, -0.25, 0.009), (0.25, 0.3, 0.04))  # fmt: skip
    kernel = sum(a * np.exp(-0.5 * ((e_t - c) / w) ** 2) for c, a, w in waves)
    polarity = -1 if rng.uniform() < 0.3 else 1
    amp = rng.uniform(0.5e-3, 2e-3) * (1 + 0.05 * rng.normal(size=r_peaks.size))
    ecg = polarity * _place(n_times, sfreq, r_peaks, amp, kernel, -0.3)
    return bcg, ecg.astype(np.float32), polarity


def _blinks(n_times, sfreq, rng):
    duration = n_times / sfreq
    onsets = np.cumsum(rng.exponential(4.0, int(duration / 2) + 10))
    onsets = onsets[onsets < duration]
    b_t = np.arange(int(0.6 * sfreq)) / sfreq - 0.3
    kernel = np.exp(-0.5 * (b_t / 0.07) ** 2)
    amps = rng.uniform(100e-6, 300e-6, onsets.size)
    blink = _place(n_times, sfreq, onsets, amps, kernel, 0.0)
    return np.stack([-0.6 * blink, blink]).astype(np.float32)  # EOGL below, EOGU above


def _line_and_noise(n_times, sfreq, rng):
    n_ch = len(nv.CHANNEL_NAMES)
    t = np.arange(n_times) / sfreq
    line = np.zeros((n_ch, n_times), dtype=np.float32)
    for freq, scale in ((nv.POWER_LINE_FREQUENCY, 1.0), (3 * nv.POWER_LINE_FREQUENCY, 0.2)):
        amp = rng.uniform(0.5e-6, 3e-6, n_ch) * scale
        phase = rng.uniform(0, 2 * np.pi, n_ch)
        c, s = np.cos(2 * np.pi * freq * t), np.sin(2 * np.pi * freq * t)
        line += (amp * np.cos(phase))[:, None] * c.astype(np.float32)
        line -= (amp * np.sin(phase))[:, None] * s.astype(np.float32)
    # pink noise by Kellet's 1/f filter, white noise on top
    b = [0.049922035, -0.095993537, 0.050612699, -0.004408786]
    a = [1.0, -2.494956002, 2.017265875, -0.522189400]
    noise = signal.lfilter(b, a, rng.standard_normal((n_ch, n_times), dtype=np.float32), axis=1)
    noise = noise.astype(np.float32)
    noise /= noise.std(axis=1, keepdims=True)
    noise += rng.standard_normal((n_ch, n_times), dtype=np.float32)
    target = rng.uniform(1.0e-6, 2.0e-6, n_ch).astype(np.float32)
    noise *= (target / noise.std(axis=1))[:, None]
    noise_rms = np.sqrt(np.mean(noise.astype(np.float64) ** 2, axis=1))
    return line, noise, noise_rms


def simulate_artifacts(
    n_times: int,
    sfreq: float,
    volume_onsets_s: np.ndarray,
    slice_times,
    rng: np.random.Generator,
    *,
    realism: str | rl.Realism = "ideal",
) -> ArtifactSim:
    """Simulate gradient, BCG, ECG, EOG, line noise and sensor noise for 64 channels.

    Parameters
    ----------
    n_times : int
        Number of EEG samples.
    sfreq : float
        EEG sampling rate (Hz).
    volume_onsets_s : ndarray
        Times of the R128 volume markers (s, EEG clock). The true volume start lies a random
        fraction of a sample before each marker.
    slice_times : sequence of float
        BIDS SliceTiming of one volume (s); slices are played in increasing time order.
    rng : numpy.random.Generator
        Source of randomness (the result is a deterministic function of its state).
    realism : "ideal" | "hard" | Realism
        Artifact realism (:mod:`bids_app.simulate.realism`); hard-mode effects draw from
        a generator spawned from ``rng``, so the ideal output does not depend on them.

    Returns
    -------
    ArtifactSim
        Components (volts) and truth: ``r_peaks_s``, ``slice_onsets_s``, ``noise_rms``.
    """
    volume_onsets_s = np.asarray(volume_onsets_s, dtype=float)
    real = rl.resolve_realism(realism)
    hard_rng = rng.spawn(1)[0] if real.hard else None
    gradient, slice_onsets = _gradient(n_times, sfreq, volume_onsets_s, slice_times, rng,
                                       real, hard_rng)  # fmt: skip
    r_peaks = _heartbeats(n_times, sfreq, rng)
    bcg, ecg, polarity = _cardiac(n_times, sfreq, r_peaks, rng, real, hard_rng)
    eog = _blinks(n_times, sfreq, rng)
    line, noise, noise_rms = _line_and_noise(n_times, sfreq, rng)
    if hard_rng is not None and real.vibration_uv:
        line += rl.vibration_lines(hard_rng, line.shape[0], n_times, sfreq, real.vibration_uv)
    r_peaks = r_peaks[r_peaks < n_times / sfreq]
    logger.debug("Simulated %d slices and %d heartbeats", slice_onsets.size, r_peaks.size)
    return ArtifactSim(
        gradient=gradient, bcg=bcg, ecg=ecg, eog=eog, line=line, noise=noise,
        r_peaks_s=r_peaks, slice_onsets_s=slice_onsets, noise_rms=noise_rms,
        ecg_polarity=polarity,
    )  # fmt: skip


@dataclass
class Recording:
    """A simulated in-scanner recording with its components kept apart (for tests/benchmarks).

    Attributes
    ----------
    raw : mne.io.RawArray
        64 channels (``CHANNEL_NAMES``), R128 annotations (``Response/R128``).
    art : ArtifactSim
        The artifacts and their truth.
    neural : ndarray, shape (64, n_times)
        Neural EEG (zero on ECG/EOG rows).
    clean : ndarray, shape (64, n_times)
        Everything except the gradient artifact and the sensor noise.
    volume_onsets : ndarray
        R128 samples.
    sidecar_slice_timing : list of float | None
        The SliceTiming a BOLD sidecar would list (see ``Realism.sidecar_slice_timing``).
    realism : Realism
        The effects simulated.
    """

    raw: object
    art: ArtifactSim
    neural: np.ndarray
    clean: np.ndarray
    volume_onsets: np.ndarray
    sidecar_slice_timing: list | None = None
    realism: rl.Realism = rl.REALISM["ideal"]


def simulate_recording(
    n_volumes: int = 20, seed: int = 0, *, bcg: bool = True, extra_s: float = 3.0,
    sfreq: float = nv.EEG_SFREQ, realism: str | rl.Realism = "ideal",
) -> Recording:  # fmt: skip
    """A NATVIEW-like in-scanner recording with a simple neural background.

    The neural part is a 1/f^2 background (10 uV RMS, high-passed at 0.5 Hz) on every EEG
    channel plus a 10 Hz alpha (10 uV) and a 12 Hz SSVEP (4 uV) on occipital channels; the
    full simulator (``bids_app.simulate.dataset``) uses dipolar sources instead.

    Parameters
    ----------
    n_volumes : int
        Volumes (TR 2.1 s); ``extra_s`` of EEG before the first and after the last.
    seed : int
        Seed of :func:`numpy.random.default_rng`.
    bcg : bool
        Add the pulse artifact.
    extra_s : float
        EEG recorded outside the scan at each end (s).
    sfreq : float
        Sampling rate.
    realism : "ideal" | "hard" | Realism
        Artifact realism (:mod:`bids_app.simulate.realism`).

    Returns
    -------
    Recording
    """
    import mne

    rng = np.random.default_rng(seed)
    tr_samples = int(round(nv.TR * sfreq))
    extra = int(extra_s * sfreq)
    n_times = 2 * extra + tr_samples * n_volumes
    real = rl.resolve_realism(realism)
    onsets = rl.volume_marker_samples(extra, n_volumes, tr_samples, real)
    art = simulate_artifacts(n_times, sfreq, onsets / sfreq, nv.slice_timing(), rng,
                             realism=real)  # fmt: skip
    names = nv.CHANNEL_NAMES
    eeg = [names.index(c) for c in nv.EEG_CHANNELS]
    neural = np.zeros((len(names), n_times))
    bg = signal.lfilter([1.0], [1.0, -0.999], rng.standard_normal((len(eeg), n_times)))
    bg = signal.sosfiltfilt(signal.butter(2, 0.5, "highpass", fs=sfreq, output="sos"), bg)
    neural[eeg] = 10e-6 * bg / bg.std(axis=1, keepdims=True)
    t = np.arange(n_times) / sfreq
    occ = [names.index(c) for c in ("O1", "O2", "Oz", "POz", "PO3", "PO4", "PO7", "PO8")]
    neural[occ] += 10e-6 * np.sin(2 * np.pi * 10.0 * t) + 4e-6 * np.sin(2 * np.pi * 12.0 * t)
    clean = neural + art.line
    if bcg:
        clean += art.bcg
    clean[names.index(nv.ECG_CHANNEL)] = art.ecg
    for row, name in zip(art.eog, nv.EOG_CHANNELS):
        clean[names.index(name)] += row
    data = clean + art.gradient + art.noise
    info = mne.create_info(list(names), sfreq, [nv.CHANNEL_TYPES[c] for c in names])
    raw = mne.io.RawArray(data, info, verbose=False)
    raw.set_annotations(mne.Annotations(onsets / sfreq, 0.0, "Response/R128"))
    sidecar = rl.sidecar_slice_timing(nv.slice_timing(), nv.TR, real)
    return Recording(raw, art, neural, clean, onsets, sidecar, real)
