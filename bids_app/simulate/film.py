"""Time courses of the simulated movie features: scene and burst segments, and film statistics.

:mod:`bids_app.simulate.stimulus` draws ideal movie features from uniform segments
(:func:`segments`). Hard mode (``Realism.stimulus_movie``) draws them with the statistics
of real films (:func:`film_features`):

* **shots**: log-normal lengths (median ``SHOT_MEDIAN_S`` = 3.5 s, log-SD ``SHOT_SIGMA`` =
  0.8, so a mean of 4.8 s: the average shot length of recent Hollywood films, about 4-6 s;
  Cutting et al. 2011) whose log-lengths are half white, half 1/f across shots (shot-length
  sequences lie between white and 1/f, approaching 1/f in recent films; Cutting, DeLong &
  Nothelfer 2010); the cuts are the luminance onsets;
* **luminance**: a level per shot (a 1/f sequence across shots: neighbouring shots of a
  scene look alike) + a continuous fluctuation with a 1/f^``LUMINANCE_ALPHA`` (= 2) power
  spectrum, as the temporal spectrum of natural movies falls (Dong & Atick 1995: alpha
  about 1-2) + a slow linear trend over the run, squashed (tanh) into the ideal range
  0.21-0.69 so that the rendered frames never clip;
* **motion**: a continuous speed (a 1/f process through a tanh into 0-0.6: camera and
  object motion vary continuously) plus occasional bursts (gaps 5-15 s, 1-3 s long,
  raised-cosine ramps of 0.25 s, peak 0.6-1 of the remaining range), within 0-1; burst
  starts are the motion onsets.

References: Cutting, J. E., DeLong, J. E., & Nothelfer, C. E. (2010). Attention and the
evolution of Hollywood film. *Psychological Science*, 21(3), 432-439. Cutting, J. E.,
Brunick, K. L., DeLong, J. E., Iricinschi, C., & Candan, A. (2011). Quicker, faster,
darker: changes in Hollywood film over 75 years. *i-Perception*, 2(6), 569-576. Dong, D. W.,
& Atick, J. J. (1995). Statistics of natural time-varying images. *Network*, 6(3), 345-358.
"""

from __future__ import annotations

import numpy as np

BURST_S = (1.0, 3.0)  # length of a motion burst (s), ideal and hard
# hard mode (``Realism.stimulus_movie``; module docstring)
SHOT_MEDIAN_S = 3.5  # log-normal shot length: median (s) ...
SHOT_SIGMA = 0.8  # ... and SD of its logarithm (mean 3.5 * exp(0.32) = 4.8 s)
LUMINANCE_ALPHA = 2.0  # power-spectrum exponent of the continuous luminance fluctuation
LUMINANCE_RANGE = (0.21, 0.69)  # as ideal's levels +- drift: the renderer never clips
MOTION_BASE = 0.6  # continuous speed: 1/f process through a tanh into (0, MOTION_BASE)
MOTION_BURST_GAP_S = (5.0, 15.0)  # occasional bursts (starts = motion onsets) ...
BURST_RAMP_S = 0.25  # ... of BURST_S with raised-cosine ramps


def segments(duration: float, span: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Boundaries 0 < t1 < t2 ... < duration with gaps drawn uniformly from ``span``.

    Parameters
    ----------
    duration : float
        Length (s).
    span : tuple of float
        Shortest and longest gap (s).
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        The boundaries (s), increasing.
    """
    edges = [0.0]
    while edges[-1] < duration:
        edges.append(edges[-1] + rng.uniform(*span))
    return np.asarray(edges[1:-1])


def power_law_noise(n: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """Stationary Gaussian series with a 1/f^alpha power spectrum and unit variance.

    White noise shaped in the frequency domain (circular; no DC). The variance is the
    process's (sum of the squared gains), not the sample's, so a draw keeps its own slow
    excursions.

    Parameters
    ----------
    n : int
        Number of samples.
    alpha : float
        Exponent of the power spectrum.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        The series, shape ``(n,)``.
    """
    if n < 2:
        return np.zeros(n)
    f = np.fft.rfftfreq(n)
    gain = np.zeros_like(f)
    gain[1:] = f[1:] ** (-alpha / 2.0)
    x = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * gain, n)
    power = gain**2
    var = (2.0 * power[1:].sum() - (power[-1] if n % 2 == 0 else 0.0)) / n
    return x / np.sqrt(var)


def _shot_cuts(duration: float, rng: np.random.Generator) -> np.ndarray:
    """Cuts of log-normal shots with 1/f-correlated log-lengths (module docstring)."""
    n = int(2 * duration / SHOT_MEDIAN_S) + 8
    lengths = np.zeros(0)
    while lengths.sum() < duration:  # blocks of twice the shots a run needs on average
        z = (rng.standard_normal(n) + power_law_noise(n, 1.0, rng)) / np.sqrt(2.0)
        lengths = np.concatenate([lengths, SHOT_MEDIAN_S * np.exp(SHOT_SIGMA * z)])
    edges = np.cumsum(lengths)
    return edges[edges < duration]


def film_features(t: np.ndarray, duration: float, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hard-mode movie features with the statistics of real films (module docstring).

    Parameters
    ----------
    t : numpy.ndarray
        Sample times (s from task start).
    duration : float
        Task length (s).
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    cuts : numpy.ndarray
        Shot cuts (s): the luminance onsets.
    shot : numpy.ndarray of int
        Shot index of each sample.
    luminance, motion : numpy.ndarray
        Feature time courses at the times ``t``.
    onsets : numpy.ndarray
        Motion burst starts (s): the motion onsets.
    """
    cuts = _shot_cuts(duration, rng)
    shot = np.searchsorted(cuts, t, side="right")
    levels = 0.10 * power_law_noise(len(cuts) + 1, 1.0, rng)
    fluctuation = 0.06 * power_law_noise(len(t), LUMINANCE_ALPHA, rng)
    trend = rng.uniform(-0.08, 0.08) * (2 * t / duration - 1)
    lo, hi = LUMINANCE_RANGE
    half = (hi - lo) / 2
    luminance = lo + half + half * np.tanh((levels[shot] + fluctuation + trend) / half)
    motion = MOTION_BASE * (1 + np.tanh(power_law_noise(len(t), 1.0, rng))) / 2
    starts = segments(duration, MOTION_BURST_GAP_S, rng)
    envelope = np.zeros(len(t))
    kept = []
    for s in starts:
        length = rng.uniform(*BURST_S)
        peak = rng.uniform(0.6, 1.0)
        rise = np.clip((t - s) / BURST_RAMP_S, 0, 1)
        fall = np.clip((s + length - t) / BURST_RAMP_S, 0, 1)
        bump = peak * np.sin(np.pi / 2 * np.minimum(rise, fall)) ** 2
        if bump.any():
            envelope = np.maximum(envelope, bump)
            kept.append(s)
    motion = motion + (1 - motion) * envelope
    return cuts, shot, luminance, motion, np.asarray(kept)
