"""Figures of the participant report (plotting only: every statistic is computed elsewhere).

Each function returns a matplotlib Figure; the caller saves it through
``DerivativesWriter.write_figure`` and closes it.
"""

from __future__ import annotations

import functools
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mne  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


@functools.lru_cache(maxsize=1)
def _template() -> nib.Nifti1Image:
    """The MNI152 2009 T1 template bundled with nilearn (no download)."""
    from nilearn import datasets

    return datasets.load_mni152_template(resolution=2)


def plot_stat_map(img: nib.Nifti1Image, *, title: str, threshold: float | None = None,
                  cut_coords: int = 7, cmap: str = "cold_hot",
                  symmetric: bool = True) -> Figure:
    """Axial mosaic of a 3D statistical image on the MNI template.

    Parameters
    ----------
    img : nib.Nifti1Image
        3D map (MNI).
    title : str
        Figure title.
    threshold : float | None
        Values with ``|v| < threshold`` are transparent (e.g. the FDR threshold).
    cut_coords : int
        Number of axial slices.
    cmap : str
        Colour map.
    symmetric : bool
        Symmetric colour bar around zero.

    Returns
    -------
    Figure
    """
    from nilearn import plotting

    fig = plt.figure(figsize=(12, 2.6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plotting.plot_stat_map(img, bg_img=_template(), display_mode="z", cut_coords=cut_coords,
                               threshold=threshold, title=title, figure=fig, cmap=cmap,
                               symmetric_cbar=symmetric, black_bg=False, draw_cross=False)
    return fig


def plot_topomaps(values: np.ndarray, info: mne.Info, *, titles: list[str],
                  suptitle: str = "", cmap: str = "RdBu_r",
                  sphere: tuple[float, float, float, float] | None = None) -> Figure:
    """One scalp topography per row of ``values`` (e.g. source-channel correlations).

    Parameters
    ----------
    values : ndarray, shape (n_maps, n_ch)
        Values per channel of ``info``.
    info : mne.Info
        Channel positions.
    titles : list of str
        One title per map.
    suptitle : str
        Figure title.
    cmap : str
        Colour map (symmetric limits).
    sphere : tuple | None
        Head sphere (x, y, z, radius) in metres of the positions' frame (MNE default if None).

    Returns
    -------
    Figure
    """
    values = np.atleast_2d(values)
    n = len(values)
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n + 0.6, 2.6), squeeze=False)
    lim = float(np.nanmax(np.abs(values))) or 1.0
    for ax, row, title in zip(axes[0], values, titles):
        im, _ = mne.viz.plot_topomap(row, info, axes=ax, show=False, cmap=cmap,
                                     vlim=(-lim, lim), contours=0, sensors=True,
                                     sphere=sphere)
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.7, label="r")
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def plot_regressors(frame_times: np.ndarray, series: dict[str, np.ndarray], *,
                    title: str) -> Figure:
    """Stacked time courses (e.g. HRF-convolved band-power regressors)."""
    fig, ax = plt.subplots(figsize=(10, 2.8))
    for k, (name, y) in enumerate(series.items()):
        ax.plot(frame_times, np.asarray(y) + 3 * k, lw=1, label=name)
    ax.set_yticks(3 * np.arange(len(series)), list(series))
    ax.set_xlabel("time (s)")
    ax.set_title(title)
    ax.spines[["top", "right"]].set_visible(False)
    return fig
