"""All coupling statistics of one run: every band, one declared FDR family.

For each band: the global and source-resolved GLM tests (:mod:`bids_app.coupling.glm`),
signed z scores of their p-values, the local correlation map, and the source<->channel
table. The q-values of a run come from one Benjamini-Hochberg correction over every test
the run reports: 2 models (global, source-resolved) x bands x voxels
(:data:`FDR_FAMILY`), so a q-value means the same thing in every map of the run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse, stats

from bids_app.coupling.design import residualize, standardize
from bids_app.coupling.glm import CouplingGLM, fit_coupling_glm
from bids_app.coupling.tables import power_peaks, source_channel_table

logger = logging.getLogger(__name__)

#: Declared Benjamini-Hochberg family of the q-values (written in every sidecar).
FDR_FAMILY = ("one family per run: the global and the source-resolved test of every band "
              "and every in-mask voxel (2 x bands x voxels tests)")


@dataclass
class BandCoupling:
    """Coupling results of one band (voxel arrays follow the source grid's voxel order).

    Attributes
    ----------
    band : str
        Band name.
    z, p, q : ndarray, shape (n_vox,)
        Global band-power test: signed z, circular-shift p, family q.
    local_r : ndarray, shape (n_vox,)
        Correlation of each voxel's BOLD with its source's canonical regressor.
    table : DataFrame
        Source <-> channel correlations.
    regressor : ndarray, shape (n_frames,)
        Standardised canonical global regressor.
    local_z, local_p, local_q : ndarray, shape (n_vox,)
        Source-resolved test (beyond the band power of the other sources): signed z, p,
        family q.
    glm : CouplingGLM
        F statistics, parametric p-values, AR order and shifts.
    """

    band: str
    z: np.ndarray
    q: np.ndarray
    local_r: np.ndarray
    table: pd.DataFrame
    regressor: np.ndarray
    p: np.ndarray
    local_z: np.ndarray
    local_p: np.ndarray
    local_q: np.ndarray
    glm: CouplingGLM


def fdr_bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values of a p-value array (any shape)."""
    p = np.asarray(p, float)
    flat = p.ravel()
    order = np.argsort(flat)
    ranked = flat[order] * len(flat) / np.arange(1, len(flat) + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(flat)
    out[order] = np.clip(q, 0, 1)
    return out.reshape(p.shape)


def z_to_q(z: np.ndarray) -> np.ndarray:
    """Two-sided p-values of z scores, corrected with :func:`fdr_bh`."""
    return fdr_bh(2 * stats.norm.sf(np.abs(np.asarray(z, float))))


def signed_z(p: np.ndarray, sign: np.ndarray) -> np.ndarray:
    """z score with two-sided tail probability ``p`` and the given sign."""
    return np.asarray(sign, float) * stats.norm.isf(np.asarray(p, float) / 2)


def local_correlation(bold: np.ndarray, voxel_regressors: np.ndarray,
                      nuisance: pd.DataFrame, *, regressors_residualized: bool = False
                      ) -> np.ndarray:
    """Pearson r between each voxel's BOLD and its own (co-located source) regressor.

    Parameters
    ----------
    bold : ndarray, shape (n_frames, n_vox)
        BOLD of in-mask voxels.
    voxel_regressors : ndarray, shape (n_frames, n_vox)
        HRF-convolved power of the source at each voxel's position.
    nuisance : DataFrame
        Confounds and drifts removed from both before correlating.
    regressors_residualized : bool
        The regressors already had ``nuisance`` removed (residualising is linear, so it
        can be done on the source grid before interpolation, which is much cheaper).

    Returns
    -------
    ndarray, shape (n_vox,)
    """
    design = nuisance.to_numpy(float)
    a = residualize(np.asarray(bold, float), design)
    b = np.asarray(voxel_regressors, float)
    if not regressors_residualized:
        b = residualize(b, design)
    a -= a.mean(0)
    b -= b.mean(0)
    den = np.sqrt((a**2).sum(0) * (b**2).sum(0))
    return np.where(den > 0, (a * b).sum(0) / np.where(den > 0, den, 1), 0.0)


def couple_bands(power: Mapping[str, tuple[np.ndarray, ...]], *, bold: np.ndarray,
                 hrf: np.ndarray, weights: sparse.spmatrix, nuisance: pd.DataFrame,
                 rr_mm: np.ndarray, ch_names: list[str], window_s: float, n_peaks: int = 5,
                 n_shifts: int = 20, min_shift_s: float = 30.0, max_ar_order: int = 4,
                 n_null_voxels: int = 10000, shapes: np.ndarray | None = None
                 ) -> dict[str, BandCoupling]:
    """All coupling statistics of one run, q-values from one FDR family.

    Parameters
    ----------
    power : mapping
        Band -> (source power (n_win, n_src), channel power (n_win, n_ch)[, remainder
        power (n_win, n_src)]) (:meth:`bids_app.eeg.source.SourceMaps.coupling_power`).
        With the remainder power, each voxel's source-resolved test holds fixed the
        mean-channel power without its source's cross-talk neighbourhood; without it, the
        global band power.
    bold : ndarray, shape (n_frames, n_vox)
        In-mask BOLD (voxel order of ``weights``).
    hrf : ndarray, shape (n_basis, n_frames, n_win)
        From :func:`bids_app.coupling.design.hrf_matrix` (first basis: canonical).
    weights : sparse matrix, shape (n_vox, n_src)
        Source grid -> voxel interpolation (``SourceGrid.weights``).
    nuisance : DataFrame
        From :func:`bids_app.coupling.design.nuisance_design`.
    rr_mm : ndarray, shape (n_src, 3)
        Source positions.
    ch_names : list of str
        Channel names.
    window_s : float
        Volume window length (TR).
    n_peaks : int
        Source peaks tabulated against channels.
    n_shifts, min_shift_s : int, float
        Circular shifts of the null (:func:`bids_app.coupling.glm.circular_shifts`).
    max_ar_order : int
        Highest AR order of the noise model.
    n_null_voxels : int
        Voxels whose shifted statistics form the pooled null.
    shapes : ndarray, shape (n_shapes, n_frames, n_win), optional
        HRF shapes of the max-t test (:func:`bids_app.coupling.design.hrf_shapes`; the
        pipeline's default); None: F test of the basis.

    Returns
    -------
    dict
        Band -> :class:`BandCoupling`.
    """
    design = nuisance.to_numpy(float)
    fits = {}
    for band, (source_power, channel_power, *remainder) in power.items():
        global_power = standardize(np.nanmean(channel_power, axis=1))
        glm = fit_coupling_glm(bold, hrf, global_power, standardize(source_power), weights,
                               design, window_s=window_s, n_shifts=n_shifts,
                               min_shift_s=min_shift_s, max_ar_order=max_ar_order,
                               n_null_voxels=n_null_voxels, shapes=shapes,
                               covariate_power=standardize(remainder[0]) if remainder else None)
        canonical = residualize(hrf[0] @ standardize(source_power), design)
        local_r = local_correlation(bold, (weights @ canonical.T).T, nuisance,
                                    regressors_residualized=True)
        peaks = power_peaks(rr_mm, np.nanmean(source_power, axis=0), n_peaks=n_peaks)
        table = source_channel_table(band, source_power, channel_power, rr_mm, ch_names, peaks)
        fits[band] = (glm, local_r, table, standardize(hrf[0] @ global_power))
    family = np.concatenate([np.r_[g.global_test.p, g.local_test.p] for g, *_ in fits.values()])
    q_all = fdr_bh(family).reshape(len(fits), 2, -1) if len(family) else family
    out = {}
    for (band, (glm, local_r, table, regressor)), q in zip(fits.items(), q_all):
        g, loc = glm.global_test, glm.local_test
        out[band] = BandCoupling(band, signed_z(g.p, g.sign), q[0], local_r, table, regressor,
                                 g.p, signed_z(loc.p, loc.sign), loc.p, q[1], glm)
        logger.info("Band %s (AR(%d), %d shifts): %d voxels with q < 0.05 globally, %d "
                    "source-resolved.", band, glm.ar_order, len(glm.shifts),
                    int((q[0] < 0.05).sum()), int((q[1] < 0.05).sum()))
    return out
