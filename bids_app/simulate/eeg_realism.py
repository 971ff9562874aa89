"""Hard-mode EEG effects: misplaced electrodes, head-model mismatch, extended sources, drift.

The switches live in :class:`bids_app.simulate.realism.Realism` (fields ``eeg_*``); this
module draws each effect from its own random stream so that switching one on leaves the
other simulated signals unchanged:

- :func:`jitter_positions`: each electrode moves tangentially on the head sphere by a
  2-D Gaussian step of RMS length ``eeg_electrode_jitter_mm`` (cap placement, 5-10 mm in
  practice) away from the template the inverse uses;
- :func:`head_offset`: the simulation sphere's centre moves a further
  ``eeg_head_offset_mm`` in a random direction (head shape the inverse does not know);
- :func:`source_patch`: each planted source becomes ``eeg_patch_dipoles`` dipoles spread
  uniformly in a ball of ``eeg_patch_radius_mm`` (centroid at the planted position) with
  orientations scattered about the planted one (30 % relative SD per component);
- :func:`amplitude_modulation` and :func:`frequency_drift`: rhythms wax and wane
  (band-limited 0.2-2 Hz modulation of relative depth ``eeg_amplitude_modulation``) and
  their frequency wanders slowly (< 0.05 Hz) within ``eeg_frequency_drift_hz``.
"""

from __future__ import annotations

import numpy as np
from scipy import signal


def jitter_positions(positions: np.ndarray, centre: np.ndarray, rms_mm: float,
                     rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Electrode positions moved tangentially on their sphere about ``centre``.

    Parameters
    ----------
    positions : ndarray, shape (n, 3)
        Template positions (metres).
    centre : ndarray, shape (3,)
        Centre of the head sphere (metres).
    rms_mm : float
        Root-mean-square length of the tangential displacement (mm).
    rng : numpy.random.Generator
        Random generator.

    Returns
    -------
    ndarray, shape (n, 3)
        Moved positions at the same distance from ``centre`` as before.
    """
    rel = np.asarray(positions, float) - centre
    radius = np.linalg.norm(rel, axis=1, keepdims=True)
    unit = rel / radius
    step = rng.standard_normal(rel.shape)
    step -= (step * unit).sum(axis=1, keepdims=True) * unit  # tangential part (2 DOF)
    step *= rms_mm / 1000.0 / np.sqrt(2.0)
    moved = rel + step
    return centre + moved / np.linalg.norm(moved, axis=1, keepdims=True) * radius


def head_offset(size_mm: float, rng: np.random.Generator) -> np.ndarray:
    """A displacement (metres) of length ``size_mm`` in a uniformly random direction."""
    d = rng.standard_normal(3)
    return d / np.linalg.norm(d) * size_mm / 1000.0


def source_patch(centre_mm: np.ndarray, orientation: np.ndarray, n: int, radius_mm: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Positions (MNI mm) and unit orientations of an extended source of ``n`` dipoles.

    Parameters
    ----------
    centre_mm : ndarray, shape (3,)
        Planted position (the centroid of the patch).
    orientation : ndarray, shape (3,)
        Planted orientation.
    n : int
        Number of dipoles (1: the point source itself).
    radius_mm : float
        Radius of the ball the dipoles fill.
    rng : numpy.random.Generator
        Random generator.

    Returns
    -------
    rr_mm, nn : ndarray, shape (n, 3)
    """
    centre = np.asarray(centre_mm, float)
    ori = np.asarray(orientation, float)
    ori = ori / np.linalg.norm(ori)
    if n <= 1:
        return centre[None], ori[None]
    d = rng.standard_normal((n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    rr = d * (radius_mm * rng.uniform(size=(n, 1)) ** (1 / 3))
    rr += centre - rr.mean(axis=0)
    nn = ori + 0.3 * rng.standard_normal((n, 3))
    return rr, nn / np.linalg.norm(nn, axis=1, keepdims=True)


def amplitude_modulation(n_times: int, sfreq: float, depth: float,
                         rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Non-negative multiplicative modulation (mean ~1) band-limited to 0.2-2 Hz.

    ``1 + depth * m(t)`` with ``m`` unit-variance noise filtered to 0.2-2 Hz, computed at
    50 Hz and interpolated; clipped at 0.
    """
    rate = 50.0
    n_slow = int(np.ceil(n_times / sfreq * rate)) + 2
    sos = signal.butter(2, (0.2, 2.0), "bandpass", fs=rate, output="sos")
    m = signal.sosfiltfilt(sos, rng.standard_normal(n_slow + 400))[200:-200]
    m /= m.std() or 1.0
    slow = np.clip(1.0 + depth * m, 0.0, None)
    return np.interp(np.arange(n_times) / sfreq * rate, np.arange(n_slow), slow)


def frequency_drift(n_times: int, sfreq: float, max_hz: float,
                    rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Slow frequency offset (Hz) per sample, varying below 0.05 Hz, ``|offset| <= max_hz``."""
    rate = 1.0
    n_slow = int(np.ceil(n_times / sfreq * rate)) + 2
    sos = signal.butter(2, 0.05, fs=rate, output="sos")
    d = signal.sosfiltfilt(sos, rng.standard_normal(n_slow + 200))[100:-100]
    d = d / (np.abs(d).max() or 1.0) * max_hz
    return np.interp(np.arange(n_times) / sfreq * rate, np.arange(n_slow), d)
