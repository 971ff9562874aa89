"""EEG source imaging on the fMRI grid: inverse kernel, band power per volume, NIfTI maps.

The volume source space is laid on the fMRI brain mask (MNI) at ``source.source_spacing_mm``
(:func:`bids_app.eeg.forward.make_source_grid`), the head model is a 3-shell sphere fitted to
the electrodes (or a user fsaverage BEM), and the inverse is eLORETA by default (sLORETA,
dSPM, MNE selectable). Band power of each source over each volume window is computed from
window band covariances as ``sum_orientations diag(K C K^T)``, then interpolated to every
in-mask voxel of the fMRI grid.

References
----------
Pascual-Marqui RD (2007) arXiv:0710.3341 (eLORETA). Pascual-Marqui RD (2002) Methods Find
Exp Clin Pharmacol 24D:5-12 (sLORETA). Dale AM et al. (2000) Neuron 26:55-67 (dSPM).
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
        Band -> (n_win, n_src) power (squared inverse units).
    channel_power : dict
        Band -> (n_win, n_ch) power in V^2.
    ch_names : list of str
        Channel names.
    method : str
        Inverse method.
    """

    grid: forward.SourceGrid
    window_onsets_s: np.ndarray
    window_length_s: float
    source_power: dict[str, np.ndarray]
    channel_power: dict[str, np.ndarray]
    ch_names: list[str]
    method: str

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


def compute_source_maps(raw: mne.io.BaseRaw, window_onsets_s: np.ndarray, window_length_s: float,
                        mask_img: nib.Nifti1Image, *, bands: tuple, method: str = "eLORETA",
                        snr: float = 3.0, spacing_mm: float = 10.0, noise_cov: str = "diagonal",
                        noise_cov_baseline_s: tuple[float, float] | None = None,
                        montage: str = "standard_1005", electrodes=None,
                        subjects_dir=None) -> SourceMaps:
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

    Returns
    -------
    SourceMaps
    """
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
    covs = features.band_covariances(data, raw.info["sfreq"], bands, bounds,
                                     features.good_samples(raw))
    src_power = {b: source_power(kernel, c) for b, c in covs.items()}
    ch_power = {b: features.channel_power(c) for b, c in covs.items()}
    logger.info("Source maps (%s): %d sources, %d windows, bands %s.", method, len(grid.rr_mm),
                len(bounds), ", ".join(covs))
    return SourceMaps(grid, np.asarray(window_onsets_s, float), float(window_length_s),
                      src_power, ch_power, list(raw.ch_names), method)
