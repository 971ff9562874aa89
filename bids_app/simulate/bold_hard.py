"""Hard-mode BOLD: what real BOLD has and the coupling GLM does not assume.

Every effect is a field of the ``# --- BOLD ---`` block of
:class:`bids_app.simulate.realism.Realism` (0 or False disables it) and is returned as a
fractional signal change of each voxel, so :func:`bids_app.simulate.bold.simulate_bold`
multiplies its baseline by ``1 + signal`` and the MNI-space test generators add
``baseline * signal``:

- ``bold_hrf_variable``: every region (planted source or non-planted cluster) of every run
  gets its own HRF: time to peak U(4, 8) s, dispersion (gamma scale) U(0.8, 1.25),
  undershoot 10 s after the peak with a ratio U(0.1, 0.35) (the SPM canonical HRF: 5 s,
  1.0, 1/6; Handwerker et al. 2004 report peaks of 4-8 s across regions and subjects);
- ``bold_ar1`` / ``bold_ar1_sd``: AR(1) noise, coefficient U(rho - 0.15, rho + 0.15) per
  voxel, and ``bold_pink_sd``: 1/f^b noise, b U(0.5, 1.5) per voxel (Zarahn et al. 1997);
  with ``bold_noise_fwhm_mm`` both are spatially smooth (:func:`spatially_smooth`): the
  noise of unsmoothed EPI is correlated over neighbouring voxels (point-spread function,
  interpolation in realignment and normalisation, physiological origin), which is what
  the smoothness estimates of random-field and cluster inference measure (Friston et al.
  1994; Cox et al. 2017);
- ``bold_physio_sd``: cardiac (0.9-1.3 Hz) and respiratory (0.2-0.33 Hz) fluctuations with
  wandering rates, sampled at each voxel's slice acquisition time, so they alias into the
  0-0.24 Hz band of a 2.1 s TR (Glover et al. 2000); per-voxel amplitude log-normal;
- ``bold_drift_sd``: slow drift (three cosines with periods 150-600 s, per-voxel weights);
- ``bold_global_sd``: a global signal (slow 1/f series) with per-voxel loadings N(1, 0.3);
- ``bold_spikes`` / ``bold_spike_mm``: sudden head movements of one volume (translation of
  this size in a random direction, back at the next volume) returned as motion parameters,
  with a spin-history signal drop (up to 2 % at the spike, half at the next volume);
- ``bold_clusters`` / ``bold_cluster_sd``: spatially structured non-planted signal:
  spherical clusters (radius 10 mm, >= 30 mm from every planted source) driven,
  alternately, by the band-power envelope of an EEG rhythm the tested bands do not
  contain (log-normal, < 0.1 Hz) and by a stimulus-like feature with shot cuts; neither is
  linked to the planted EEG sources.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, sparse, spatial, stats

from bids_app.simulate.realism import Realism

#: Rate (Hz) at which cluster drivers are generated and convolved.
DRIVER_SFREQ = 10.0
CLUSTER_RADIUS_MM = 10.0
CLUSTER_MIN_DISTANCE_MM = 30.0


@dataclass(frozen=True)
class HRF:
    """Parameters of a double-gamma HRF.

    Attributes
    ----------
    peak_s : float
        Time to peak of the response.
    dispersion : float
        Scale of the response gamma (1.0 is SPM's).
    undershoot : float
        Undershoot amplitude ratio (SPM: 1/6); the undershoot peaks 10 s after the response.
    delay_s : float
        Pure delay of the whole response (onset later by this much).
    """

    peak_s: float = 5.0
    dispersion: float = 1.0
    undershoot: float = 1 / 6
    delay_s: float = 0.0

    def kernel(self, dt: float, length_s: float = 40.0) -> np.ndarray:
        """The HRF sampled every ``dt`` seconds, unit sum."""
        t = np.arange(0.0, length_s, dt) - self.delay_s
        d = self.dispersion
        h = stats.gamma.pdf(t, self.peak_s / d + 1, scale=d)
        h -= self.undershoot * stats.gamma.pdf(t, (self.peak_s + 10.0) / d + 1, scale=d)
        h = np.where(t > 0, h, 0.0)
        return h / h.sum()


def draw_hrf(rng: np.random.Generator) -> HRF:
    """A region's HRF (see the module docstring for the ranges)."""
    return HRF(float(rng.uniform(4.0, 8.0)), float(rng.uniform(0.8, 1.25)),
               float(rng.uniform(0.1, 0.35)))


@dataclass
class HardBold:
    """Hard-mode BOLD effects of one run.

    Attributes
    ----------
    signal : ndarray, shape (n_volumes, n_vox), float32
        Fractional signal change of every voxel.
    motion : ndarray, shape (n_volumes, 6)
        Motion spikes (mm, rad) to add to the planted motion.
    spike_volumes : ndarray of int
        Volumes with a sudden movement.
    clusters : list of dict
        Non-planted clusters: ``centre_mm``, ``radius_mm``, ``driver`` ("eeg_band" or
        "stimulus"), ``hrf`` (peak_s, dispersion, undershoot).
    components : dict
        Effect name -> its part of ``signal`` (only with ``keep_components=True``).
    """

    signal: np.ndarray
    motion: np.ndarray
    spike_volumes: np.ndarray
    clusters: list[dict] = field(default_factory=list)
    components: dict[str, np.ndarray] = field(default_factory=dict)


def bold_effects_on(realism: Realism) -> bool:
    """Whether any additive BOLD effect of ``realism`` is switched on."""
    return any((realism.bold_ar1_sd, realism.bold_pink_sd, realism.bold_physio_sd,
                realism.bold_drift_sd, realism.bold_global_sd, realism.bold_spikes,
                realism.bold_clusters))


def _pink(rng: np.random.Generator, n: int, n_series: int, exponent: np.ndarray
          ) -> np.ndarray:
    """Unit-variance 1/f^exponent series, shape (n, n_series)."""
    freqs = np.fft.rfftfreq(2 * n)
    spec = np.fft.rfft(rng.standard_normal((2 * n, n_series)), axis=0)
    spec *= np.maximum(freqs, freqs[1])[:, None] ** (-np.asarray(exponent) / 2)
    out = np.fft.irfft(spec, n=2 * n, axis=0)[:n]
    out -= out.mean(0)
    return out / out.std(0)


def _ar1(rng: np.random.Generator, n: int, rho: np.ndarray) -> np.ndarray:
    """Unit-variance AR(1) series, one column per coefficient, stationary from the start."""
    out = np.empty((n, len(rho)))
    out[0] = rng.standard_normal(len(rho))
    innov = np.sqrt(1 - rho**2)
    for t in range(1, n):
        out[t] = rho * out[t - 1] + innov * rng.standard_normal(len(rho))
    return out


def _phase(rng: np.random.Generator, times: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Phase of a rhythm whose rate wanders in [lo, hi] Hz, evaluated at ``times`` (s)."""
    grid = np.arange(0.0, times.max() + 1.0, 0.05)
    rate = lo + (hi - lo) * (0.5 + 0.5 * np.sin(
        2 * np.pi * grid / rng.uniform(40.0, 90.0) + rng.uniform(0, 2 * np.pi)))
    phase = 2 * np.pi * np.cumsum(rate) * 0.05 + rng.uniform(0, 2 * np.pi)
    return np.interp(times, grid, phase)


def _driver(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    """Cluster driver at ``DRIVER_SFREQ``: an uncoupled band's power or a stimulus feature."""
    if kind == "eeg_band":  # log-normal amplitude process below 0.1 Hz, squared (power)
        slow = ndimage.gaussian_filter1d(rng.standard_normal(n), 1.6 * DRIVER_SFREQ)
        return np.exp(2 * slow / slow.std() * 0.5)
    cuts = np.cumsum(rng.uniform(3.0, 8.0, n) * DRIVER_SFREQ).astype(int)  # shot cuts
    level = rng.standard_normal(len(cuts) + 1)[np.searchsorted(cuts, np.arange(n), "right")]
    return level + 0.5 * ndimage.gaussian_filter1d(rng.standard_normal(n), DRIVER_SFREQ)


def convolved(series: np.ndarray, hrf: HRF, times_s: np.ndarray) -> np.ndarray:
    """Standardised HRF convolution of a ``DRIVER_SFREQ`` series, sampled at ``times_s``."""
    series = np.asarray(series, float)
    conv = np.convolve(series - series.mean(), hrf.kernel(1.0 / DRIVER_SFREQ))[: len(series)]
    conv = (conv - conv.mean()) / max(conv.std(), 1e-12)
    return np.interp(times_s, np.arange(len(conv)) / DRIVER_SFREQ, conv)


def smoothing_kernel(xyz_mm: np.ndarray, fwhm_mm: float) -> sparse.csr_matrix | None:
    """Gaussian kernel on a point set (truncated at 3 sigma), rows scaled to unit sum of
    squares so that independent, equal-variance noise keeps its variance; None for 0 FWHM.

    Parameters
    ----------
    xyz_mm : ndarray, shape (n_vox, 3)
        Voxel positions.
    fwhm_mm : float
        FWHM of the kernel.

    Returns
    -------
    scipy.sparse.csr_matrix, shape (n_vox, n_vox), or None
    """
    if not fwhm_mm:
        return None
    xyz_mm = np.asarray(xyz_mm, float)
    sigma = fwhm_mm / np.sqrt(8 * np.log(2))
    pairs = spatial.cKDTree(xyz_mm).query_pairs(3 * sigma, output_type="ndarray")
    dist = np.linalg.norm(xyz_mm[pairs[:, 0]] - xyz_mm[pairs[:, 1]], axis=1)
    w = np.exp(-(dist**2) / (2 * sigma**2))
    n_vox = len(xyz_mm)
    rows = np.r_[pairs[:, 0], pairs[:, 1], np.arange(n_vox)]
    cols = np.r_[pairs[:, 1], pairs[:, 0], np.arange(n_vox)]
    kernel = sparse.csr_matrix((np.r_[w, w, np.ones(n_vox)], (rows, cols)), (n_vox, n_vox))
    norm = np.sqrt(np.asarray(kernel.multiply(kernel).sum(axis=1))).ravel()
    return sparse.diags(1.0 / norm) @ kernel


def spatially_smooth(noise: np.ndarray, xyz_mm: np.ndarray, fwhm_mm: float) -> np.ndarray:
    """Gaussian spatial smoothing of noise on a point set, keeping each voxel's variance.

    Parameters
    ----------
    noise : ndarray, shape (n, n_vox)
        Noise of independent voxels.
    xyz_mm : ndarray, shape (n_vox, 3)
        Voxel positions.
    fwhm_mm : float
        FWHM of the Gaussian kernel (:func:`smoothing_kernel`); 0 returns ``noise``.

    Returns
    -------
    ndarray, shape (n, n_vox)
    """
    return _smoothed(noise, smoothing_kernel(xyz_mm, fwhm_mm))


def _smoothed(noise: np.ndarray, kernel: sparse.csr_matrix | None) -> np.ndarray:
    """``kernel`` (:func:`smoothing_kernel`) applied to every time point of ``noise``."""
    return noise if kernel is None else np.asarray((kernel @ np.asarray(noise, float).T).T)


def hard_bold(xyz_mm: np.ndarray, slice_of: np.ndarray, acq_times: np.ndarray,
              rng: np.random.Generator, realism: Realism, *,
              avoid_mm: list | tuple = (), keep_components: bool = False) -> HardBold:
    """Draw every switched-on BOLD effect of ``realism`` for one run.

    Parameters
    ----------
    xyz_mm : ndarray, shape (n_vox, 3)
        Voxel positions (MNI mm: cluster centres are chosen among them).
    slice_of : ndarray of int, shape (n_vox,)
        Slice (column of ``acq_times``) each voxel is acquired in.
    acq_times : ndarray, shape (n_volumes, n_slices)
        Acquisition time (s) of every slice of every volume.
    rng : numpy.random.Generator
        The only source of randomness.
    realism : Realism
        Switches and sizes of the effects.
    avoid_mm : sequence of 3-tuples
        Planted source centres; clusters stay ``CLUSTER_MIN_DISTANCE_MM`` away.
    keep_components : bool
        Also return each effect's part of the signal.

    Returns
    -------
    HardBold
    """
    xyz_mm = np.asarray(xyz_mm, float)
    slice_of = np.asarray(slice_of, int)
    n, n_vox = acq_times.shape[0], len(xyz_mm)
    vox_times = acq_times[:, slice_of]
    signal = np.zeros((n, n_vox), np.float32)
    parts: dict[str, np.ndarray] = {}

    def add(name: str, part: np.ndarray) -> None:
        signal[...] += part.astype(np.float32)
        if keep_components:
            parts[name] = part

    kernel = smoothing_kernel(xyz_mm, realism.bold_noise_fwhm_mm)  # one for every component
    if realism.bold_ar1_sd:
        rho = np.clip(realism.bold_ar1 + rng.uniform(-0.15, 0.15, n_vox), 0.0, 0.95)
        add("ar1", realism.bold_ar1_sd * _smoothed(_ar1(rng, n, rho), kernel))
    if realism.bold_pink_sd:
        exponent = rng.uniform(0.5, 1.5, n_vox)
        add("pink", realism.bold_pink_sd * _smoothed(_pink(rng, n, n_vox, exponent), kernel))
    if realism.bold_physio_sd:
        physio = np.zeros((n, n_vox))
        for lo, hi in ((0.9, 1.3), (0.2, 0.33)):  # cardiac, respiratory
            amp = rng.lognormal(0.0, 0.5, n_vox)
            physio += amp * np.cos(_phase(rng, vox_times, lo, hi) + rng.uniform(0, 2 * np.pi,
                                                                               n_vox))
        add("physio", realism.bold_physio_sd * physio / physio.std())
    if realism.bold_drift_sd:
        t = vox_times - acq_times.min()
        drift = np.zeros((n, n_vox))
        for _ in range(3):
            period = rng.uniform(150.0, 600.0)
            drift += rng.standard_normal(n_vox) * np.cos(2 * np.pi * t / period
                                                         + rng.uniform(0, 2 * np.pi))
        add("drift", realism.bold_drift_sd * drift / max(drift.std(), 1e-12))
    if realism.bold_global_sd:
        glob = _pink(rng, n, 1, np.array([1.0]))[:, 0]
        add("global", realism.bold_global_sd * glob[:, None] * rng.normal(1.0, 0.3, n_vox))
    motion = np.zeros((n, 6))
    spikes = np.zeros(0, int)
    if realism.bold_spikes and n > 10:
        spikes = np.sort(rng.choice(np.arange(5, n - 1), min(realism.bold_spikes, n - 6),
                                    replace=False))
        history = np.zeros((n, n_vox))
        for vol in spikes:
            direction = rng.standard_normal(3)
            motion[vol, :3] = realism.bold_spike_mm * direction / np.linalg.norm(direction)
            drop = -0.02 * rng.uniform(0.0, 1.0, n_vox)
            history[vol] += drop
            history[vol + 1] += 0.5 * drop
        add("spin_history", history)
    clusters: list[dict] = []
    if realism.bold_clusters:
        cluster_signal, clusters = _clusters(xyz_mm, acq_times, vox_times, rng, realism,
                                             avoid_mm)
        add("clusters", cluster_signal)
    return HardBold(signal, motion, spikes, clusters, parts)


def _clusters(xyz_mm: np.ndarray, acq_times: np.ndarray, vox_times: np.ndarray,
              rng: np.random.Generator, realism: Realism, avoid_mm) -> tuple[np.ndarray, list]:
    """Non-planted clusters: signal (n, n_vox) and their description."""
    n, n_vox = vox_times.shape
    avoid = np.asarray(avoid_mm, float).reshape(-1, 3)
    far = np.ones(n_vox, bool)
    for point in avoid:
        far &= np.linalg.norm(xyz_mm - point, axis=1) >= CLUSTER_MIN_DISTANCE_MM
    signal = np.zeros((n, n_vox))
    described = []
    n_drv = int(np.ceil((acq_times.max() + 40.0) * DRIVER_SFREQ))
    for k in range(realism.bold_clusters):
        if not far.any():
            break
        centre = xyz_mm[rng.choice(np.flatnonzero(far))]
        inside = np.linalg.norm(xyz_mm - centre, axis=1) <= CLUSTER_RADIUS_MM
        far &= np.linalg.norm(xyz_mm - centre, axis=1) >= 2 * CLUSTER_RADIUS_MM
        kind = ("eeg_band", "stimulus")[k % 2]
        hrf = draw_hrf(rng) if realism.bold_hrf_variable else HRF()
        regressor = convolved(_driver(rng, kind, n_drv), hrf, vox_times[:, inside])
        signal[:, inside] += realism.bold_cluster_sd * rng.choice([-1.0, 1.0]) * regressor
        described.append({"centre_mm": [round(float(c), 2) for c in centre],
                          "radius_mm": CLUSTER_RADIUS_MM, "driver": kind,
                          "hrf": [hrf.peak_s, hrf.dispersion, hrf.undershoot]})
    return signal, described
