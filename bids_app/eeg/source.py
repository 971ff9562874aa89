"""EEG source imaging on the fMRI grid: inverse kernel, band power per volume, NIfTI maps.

The volume source space is laid on the fMRI brain mask (MNI) at ``source.source_spacing_mm``
(:func:`bids_app.eeg.forward.make_source_grid`), the head model is a 3-shell sphere fitted to
the electrodes (or a user fsaverage BEM), and the inverse is eLORETA by default (sLORETA,
dSPM, MNE selectable). Band power of each source over each volume window is computed from
window band covariances as ``sum_orientations diag(K C K^T)``, then interpolated to every
in-mask voxel of the fMRI grid. By default each source's aperiodic (1/f) background is
fitted to its spectrum over the run and its share of the band power subtracted
(:func:`subtract_aperiodic`), so a rhythm is mapped by its power above the background and
not lost under the 1/f power of a broad low band.

For the source-resolved coupling test, each source also gets its *remainder power*
(:func:`remainder_power`): the mean-channel band power of the data after removing the
forward projection of the estimated activity of the sources that leak into the source's
estimate (its cross-talk neighbourhood, :func:`crosstalk_neighbourhoods`), i.e. the global
band power without the source's own share.

References
----------
Pascual-Marqui RD (2007) arXiv:0710.3341 (eLORETA). Pascual-Marqui RD (2002) Methods Find
Exp Clin Pharmacol 24D:5-12 (sLORETA). Dale AM et al. (2000) Neuron 26:55-67 (dSPM).
Donoghue T et al. (2020) Nat Neurosci 23:1655-1665 (aperiodic fit, spectral
parameterisation). Hauk O, Stenroos M, Treder MS (2022) NeuroImage 255:119177 (cross-talk
functions and their spatial extent).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import mne
import nibabel as nib
import numpy as np

from bids_app.eeg import features, forward

logger = logging.getLogger(__name__)

METHODS = ("eLORETA", "sLORETA", "dSPM", "MNE")
NOISE_COV_KINDS = ("diagonal", "adhoc", "baseline")
BACKGROUNDS = ("aperiodic", "none")
#: Welch segment length of the aperiodic fit (s): 0.5 Hz resolution.
APERIODIC_SEGMENT_S = 2.0
#: Fraction of its peak at which a source's cross-talk function bounds its neighbourhood.
CROSSTALK_LEVEL = 0.5
#: Methods whose kernel is an unnormalised (weighted) minimum-norm estimate.
UNNORMALISED = ("eLORETA", "MNE")


@dataclass
class SourceMaps:
    """Band power of channels and sources for each fMRI volume window.

    Attributes
    ----------
    grid : forward.SourceGrid
        Source positions and interpolator to the fMRI voxels.
    window_onsets_s : ndarray
        Start of each window (EEG time) = volume onset.
    window_length_s : float
        Window length (the TR).
    source_power : dict
        Band -> (n_win, n_src) power (squared inverse units); with the default
        ``background="aperiodic"`` of :func:`compute_source_maps` the power above each
        source's aperiodic (1/f) background, so windows can be negative.
    channel_power : dict
        Band -> (n_win, n_ch) power in V^2.
    remainder_power : dict
        Band -> (n_win, n_src) mean-channel power (V^2) without each source's cross-talk
        neighbourhood (:func:`remainder_power`).
    ch_names : list of str
        Channel names.
    method : str
        Inverse method.
    background : str
        ``"aperiodic"`` when ``source_power`` is the power above each source's aperiodic
        (1/f) background, ``"none"`` for total band power.
    """

    grid: forward.SourceGrid
    window_onsets_s: np.ndarray
    window_length_s: float
    source_power: dict[str, np.ndarray]
    channel_power: dict[str, np.ndarray]
    remainder_power: dict[str, np.ndarray]
    ch_names: list[str]
    method: str
    background: str = "none"

    def coupling_power(self, band: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Source, channel and remainder power of a band, as
        :func:`bids_app.coupling.couple_bands` takes them."""
        return (self.source_power[band], self.channel_power[band],
                self.remainder_power[band])

    def power_img(self, band: str) -> nib.Nifti1Image:
        """4D image (one volume per window) of the band's source power on the fMRI grid."""
        return self.grid.to_img(np.nan_to_num(self.source_power[band]))

    def mean_power(self, band: str) -> np.ndarray:
        """Mean band power of each source over the windows (n_src,)."""
        return np.nanmean(self.source_power[band], axis=0)


def make_noise_cov(raw: mne.io.BaseRaw, *, kind: str = "diagonal",
                   baseline_s: tuple[float, float] | None = None) -> mne.Covariance:
    """Noise covariance for the inverse.

    Parameters
    ----------
    raw : mne.io.Raw
        EEG (average reference).
    kind : str
        ``"diagonal"`` (per-channel variance of the whole recording, no spatial structure),
        ``"adhoc"`` (MNE's fixed 0.2 uV), or ``"baseline"`` (shrunk empirical covariance of
        ``baseline_s``).
    baseline_s : tuple | None
        (start, stop) seconds of raw time for ``kind="baseline"`` (None: the whole run).

    Returns
    -------
    mne.Covariance
    """
    if kind not in NOISE_COV_KINDS:
        raise ValueError(f"Noise covariance kind must be one of {NOISE_COV_KINDS}, got {kind!r}.")
    picks = mne.pick_types(raw.info, eeg=True, exclude="bads")
    if kind == "adhoc":
        return mne.make_ad_hoc_cov(mne.pick_info(raw.info, picks), verbose="error")
    tmin, tmax = baseline_s if baseline_s is not None else (None, None)
    if kind == "baseline":
        return mne.compute_raw_covariance(raw, tmin=tmin or 0, tmax=tmax, picks=picks,
                                          method="shrunk", verbose="error")
    data = raw.get_data(picks=picks)
    names = [raw.ch_names[i] for i in picks]
    return mne.Covariance(np.diag(data.var(axis=1)), names, raw.info["bads"], raw.info["projs"],
                          nfree=data.shape[1] - 1)


def make_inverse_kernel(info: mne.Info, fwd: mne.Forward, noise_cov: mne.Covariance, *,
                        method: str = "eLORETA", snr: float = 3.0) -> np.ndarray:
    """Linear inverse kernel mapping channels to the 3 dipole components of each source.

    Obtained by applying the inverse operator to an identity "evoked" (one channel per
    column), so it includes the average-reference projection and the noise normalisation of
    dSPM/sLORETA.

    Parameters
    ----------
    info : mne.Info
        Info of the EEG channels, with an average-reference projector.
    fwd : mne.Forward
        Free-orientation volume forward.
    noise_cov : mne.Covariance
        Noise covariance.
    method : str
        One of ``METHODS``.
    snr : float
        Assumed SNR (lambda2 = 1 / snr**2).

    Returns
    -------
    ndarray, shape (n_src, 3, n_ch)
    """
    if method not in METHODS:
        raise ValueError(f"Inverse method must be one of {METHODS}, got {method!r}.")
    with mne.utils.use_log_level("error"):
        inv = mne.minimum_norm.make_inverse_operator(info, fwd, noise_cov, loose=1.0,
                                                     depth=0.8)
        eye = mne.EvokedArray(np.eye(len(info.ch_names)), info, tmin=0.0)
        stc = mne.minimum_norm.apply_inverse(eye, inv, lambda2=1.0 / snr**2, method=method,
                                             pick_ori="vector")
    return np.asarray(stc.data)


def source_power(kernel: np.ndarray, covs: np.ndarray) -> np.ndarray:
    """Band power of each source per window: sum over orientations of diag(K C K^T).

    Parameters
    ----------
    kernel : ndarray, shape (n_src, 3, n_ch)
        Inverse kernel.
    covs : ndarray, shape (n_win, n_ch, n_ch)
        Window band covariances.

    Returns
    -------
    ndarray, shape (n_win, n_src)
    """
    k = kernel.reshape(-1, kernel.shape[-1])
    out = np.empty((len(covs), kernel.shape[0]))
    for w, c in enumerate(covs):
        out[w] = np.einsum("sc,sc->s", k @ c, k).reshape(kernel.shape[0], 3).sum(1)
    return out


def referenced_gain(fwd: mne.Forward) -> np.ndarray:
    """Free-orientation gain matrix (n_ch, 3 * n_src) of ``fwd`` in the average reference
    of the inverse kernels."""
    gain = fwd["sol"]["data"]
    return gain - gain.mean(axis=0)


def crosstalk_neighbourhoods(kernel: np.ndarray, gain: np.ndarray, *,
                             level: float = CROSSTALK_LEVEL, chunk: int = 256
                             ) -> list[np.ndarray]:
    """Sources that leak into each source's estimate: its cross-talk function above
    ``level`` times its peak.

    The cross-talk function of source s is row s of the resolution matrix ``K G``: the
    estimate at s of unit activity at every source (norm over the 3 x 3 orientation
    block). With ``level=0.5`` the neighbourhood is the region within the function's half
    maximum, the usual measure of its spatial extent (Hauk et al. 2022).

    Parameters
    ----------
    kernel : ndarray, shape (n_src, 3, n_ch)
        Inverse kernel.
    gain : ndarray, shape (n_ch, 3 * n_src)
        Free-orientation gain matrix, in the reference of the kernel.
    level : float
        Fraction of the peak.
    chunk : int
        Sources per block of the resolution matrix (bounds the memory).

    Returns
    -------
    list of ndarray of int
        Neighbourhood of each source (always includes its peak).
    """
    n_src = kernel.shape[0]
    out = []
    for start in range(0, n_src, chunk):
        rows = kernel[start:start + chunk]
        res = (rows.reshape(-1, rows.shape[-1]) @ gain).reshape(len(rows), 3, n_src, 3)
        ctf = np.sqrt((res**2).sum((1, 3)))
        out += [np.flatnonzero(row >= level * row.max()) for row in ctf]
    return out


def remainder_power(kernel: np.ndarray, gain: np.ndarray, covs: np.ndarray,
                    neighbourhoods: list[np.ndarray]) -> np.ndarray:
    """Mean-channel band power without each source's neighbourhood, per window.

    For source s with neighbourhood N, ``tr(M C M^T) / n_ch`` with
    ``M = I - G_N K_N``: the power left in the channels after removing the forward
    projection of the estimated activity of N. With an empty neighbourhood this is the
    mean-channel power ``tr(C) / n_ch``.

    Parameters
    ----------
    kernel : ndarray, shape (n_src, 3, n_ch)
        Unnormalised (weighted minimum-norm) inverse kernel.
    gain : ndarray, shape (n_ch, 3 * n_src)
        Free-orientation gain matrix, in the reference of the kernel.
    covs : ndarray, shape (n_win, n_ch, n_ch)
        Window band covariances.
    neighbourhoods : list of ndarray of int
        Sources removed for each source (:func:`crosstalk_neighbourhoods`).

    Returns
    -------
    ndarray, shape (n_win, n_src)
    """
    n_ch = kernel.shape[-1]
    flat_k = kernel.reshape(-1, n_ch)
    quad = np.empty((len(neighbourhoods), n_ch * n_ch))
    for s, hood in enumerate(neighbourhoods):
        cols = (3 * np.asarray(hood)[:, None] + np.arange(3)).ravel()
        m = np.eye(n_ch) - gain[:, cols] @ flat_k[cols]
        quad[s] = (m.T @ m).ravel() / n_ch  # tr(M C M^T) = <C, M^T M>
    return covs.reshape(len(covs), -1) @ quad.T


def source_spectra(kernel: np.ndarray, csd: np.ndarray) -> np.ndarray:
    """Power spectrum of each source: sum over orientations of diag(K S(f) K^T).

    Parameters
    ----------
    kernel : ndarray, shape (n_src, 3, n_ch)
        Inverse kernel.
    csd : ndarray, shape (n_freqs, n_ch, n_ch)
        Channel cross-spectral density (:func:`bids_app.eeg.features.welch_csd`).

    Returns
    -------
    ndarray, shape (n_src, n_freqs)
    """
    return source_power(kernel, csd).T


def fit_aperiodic(freqs: np.ndarray, spectra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Aperiodic (1/f) fit ``log10 P(f) = offset - exponent * log10 f`` of each spectrum.

    The robust fit of spectral parameterisation ("fixed" aperiodic mode, Donoghue et al.
    2020): a least-squares line in log-log coordinates, then a second fit to the frequencies
    at or below the first line, so that spectral peaks (rhythms) do not lift the background.

    Parameters
    ----------
    freqs : ndarray, shape (n_freqs,)
        Frequencies (Hz, > 0).
    spectra : ndarray, shape (n_spectra, n_freqs)
        Power spectra (> 0).

    Returns
    -------
    offset, exponent : ndarray, shape (n_spectra,)
    """
    x = np.log10(np.asarray(freqs, float))
    y = np.log10(np.maximum(np.asarray(spectra, float), np.finfo(float).tiny))
    design = np.stack([np.ones_like(x), -x], axis=1)
    coef = np.linalg.lstsq(design, y.T, rcond=None)[0]  # (2, n_spectra)
    below = y <= (design @ coef).T
    refit = np.empty_like(coef)
    for i, keep in enumerate(below):
        keep = keep if keep.sum() >= 3 else np.ones_like(keep)
        refit[:, i] = np.linalg.lstsq(design[keep], y[i, keep], rcond=None)[0]
    return refit[0], refit[1]


def aperiodic_share(freqs: np.ndarray, spectra: np.ndarray, offset: np.ndarray,
                    exponent: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Fraction of each source's band power that the aperiodic fit explains, in [0, 1].

    ``sum_f g(f) A(f) / sum_f g(f) P(f)`` with ``g`` the band filter's power gain, ``A`` the
    aperiodic fit and ``P`` the measured spectrum, over the fitted frequencies.

    Parameters
    ----------
    freqs : ndarray, shape (n_freqs,)
    spectra : ndarray, shape (n_src, n_freqs)
    offset, exponent : ndarray, shape (n_src,)
        From :func:`fit_aperiodic`.
    gain : ndarray, shape (n_freqs,)
        Power gain of the band filter (:func:`bids_app.eeg.features.band_gain`).

    Returns
    -------
    ndarray, shape (n_src,)
    """
    model = 10.0 ** (offset[:, None] - exponent[:, None] * np.log10(freqs)[None])
    total = spectra @ gain
    share = np.divide(model @ gain, total, out=np.ones_like(total), where=total > 0)
    return np.clip(share, 0.0, 1.0)


def subtract_aperiodic(kernel: np.ndarray, data: np.ndarray, sfreq: float, bands: tuple,
                       src_power: dict[str, np.ndarray], good: np.ndarray | None = None
                       ) -> dict[str, np.ndarray] | None:
    """Band power above the aperiodic (1/f) background of each source.

    The spectrum of each source over the whole run is fitted by :func:`fit_aperiodic`
    between the lowest and the highest band edge; in each band, the share of the source's
    mean window power that the fit explains (:func:`aperiodic_share`) is subtracted from
    every window. The mean over windows is then the periodic power of the band (the rhythm
    above the background); the window-to-window changes are untouched.

    Parameters
    ----------
    kernel : ndarray, shape (n_src, 3, n_ch)
        Inverse kernel.
    data : ndarray, shape (n_ch, n_times)
        Average-referenced channel data.
    sfreq : float
        Sampling rate.
    bands : tuple of (name, l_freq, h_freq)
        Frequency bands.
    src_power : dict
        Band -> (n_win, n_src) window band power (:func:`source_power`).
    good : ndarray of bool | None
        Good samples.

    Returns
    -------
    dict | None
        Band -> (n_win, n_src) power minus the aperiodic band power of each source; None
        (with a warning) when no segment of the run is free of bad samples.
    """
    fmin = max(min(lo for _, lo, _ in bands), 1.0 / APERIODIC_SEGMENT_S)
    fmax = min(max(hi for _, _, hi in bands), 0.45 * sfreq)
    freqs, csd = features.welch_csd(data, sfreq, fmin=fmin, fmax=fmax,
                                    segment_s=APERIODIC_SEGMENT_S, good=good)
    if not np.all(np.isfinite(csd)):
        logger.warning("No good %.0f s segment for the aperiodic fit; source power is "
                       "left with its 1/f background.", APERIODIC_SEGMENT_S)
        return None
    spectra = source_spectra(kernel, csd)
    offset, exponent = fit_aperiodic(freqs, spectra)
    out = {}
    for name, lo, hi in bands:
        share = aperiodic_share(freqs, spectra, offset, exponent,
                                features.band_gain(sfreq, lo, hi, freqs))
        power = src_power[name]
        mean = np.nanmean(power, axis=0) if np.isfinite(power).any() else np.zeros(
            power.shape[1])
        out[name] = power - share * np.nan_to_num(mean)
    logger.info("Aperiodic fit %.1f-%.1f Hz: exponent median %.2f (range %.2f-%.2f).", fmin,
                fmax, np.median(exponent), exponent.min(), exponent.max())
    return out


def compute_source_maps(raw: mne.io.BaseRaw, window_onsets_s: np.ndarray, window_length_s: float,
                        mask_img: nib.Nifti1Image, *, bands: tuple, method: str = "eLORETA",
                        snr: float = 3.0, spacing_mm: float = 10.0, noise_cov: str = "diagonal",
                        noise_cov_baseline_s: tuple[float, float] | None = None,
                        montage: str = "standard_1005", electrodes=None,
                        subjects_dir=None, background: str = "aperiodic") -> SourceMaps:
    """Band power of channels and of sources on the fMRI grid, per volume window.

    Parameters
    ----------
    raw : mne.io.Raw
        Clean EEG (EEG channels; average reference is (re)applied as a projector).
        Samples under ``BAD*``/``EDGE*`` annotations are left out of the window powers.
    window_onsets_s : ndarray
        Window starts in raw time (volume onsets).
    window_length_s : float
        Window length (TR).
    mask_img : nib.Nifti1Image
        fMRI brain mask in MNI space: the output grid.
    bands : tuple of (name, l_freq, h_freq)
        Frequency bands.
    method, snr : str, float
        Inverse method and SNR.
    spacing_mm : float
        Source grid spacing.
    noise_cov : str
        Noise covariance kind (see :func:`make_noise_cov`).
    noise_cov_baseline_s : tuple | None
        Baseline for ``noise_cov="baseline"``.
    montage : str
        Template montage for electrode positions when ``raw`` has none.
    electrodes : Path | None
        BIDS ``_electrodes.tsv`` of the session (see :func:`forward.read_electrodes`).
    subjects_dir : Path | None
        FreeSurfer directory with fsaverage (optional BEM).
    background : str
        ``"aperiodic"``: source power above each source's aperiodic (1/f) background
        (:func:`subtract_aperiodic`); ``"none"``: total band power.

    Returns
    -------
    SourceMaps
    """
    if background not in BACKGROUNDS:
        raise ValueError(f"Source background must be one of {BACKGROUNDS}, got {background!r}.")
    raw = raw.copy().pick("eeg", exclude="bads")
    forward.set_positions(raw, montage=montage, electrodes=electrodes)  # MNI-aligned frame
    raw.set_eeg_reference("average", projection=True, verbose="error")
    bem = forward.make_head_model(raw.info, subjects_dir=subjects_dir)
    grid = forward.make_source_grid(mask_img, spacing_mm=spacing_mm, bem=bem)
    fwd = forward.make_volume_forward(raw.info, grid.rr_mm, bem)
    cov = make_noise_cov(raw, kind=noise_cov, baseline_s=noise_cov_baseline_s)
    kernel = make_inverse_kernel(raw.info, fwd, cov, method=method, snr=snr)
    data = raw.get_data()
    data = data - data.mean(axis=0, keepdims=True)  # average reference applied to the data
    bounds = features.window_bounds(window_onsets_s, window_length_s, raw.info["sfreq"],
                                    data.shape[1], first_sample_s=0.0)
    good = features.good_samples(raw)
    covs = features.band_covariances(data, raw.info["sfreq"], bands, bounds, good)
    src_power = {b: source_power(kernel, c) for b, c in covs.items()}
    if background == "aperiodic":
        above = subtract_aperiodic(kernel, data, raw.info["sfreq"], bands, src_power, good)
        src_power, background = (src_power, "none") if above is None else (above, background)
    ch_power = {b: features.channel_power(c) for b, c in covs.items()}
    gain = referenced_gain(fwd)
    projector = kernel if method in UNNORMALISED else make_inverse_kernel(
        raw.info, fwd, cov, method="MNE", snr=snr)
    hoods = crosstalk_neighbourhoods(projector, gain)
    rem_power = {b: remainder_power(projector, gain, c, hoods) for b, c in covs.items()}
    logger.info("Source maps (%s): %d sources, %d windows, bands %s.", method, len(grid.rr_mm),
                len(bounds), ", ".join(covs))
    return SourceMaps(grid, np.asarray(window_onsets_s, float), float(window_length_s),
                      src_power, ch_power, rem_power, list(raw.ch_names), method, background)
