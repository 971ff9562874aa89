"""Figures of the participant report (plotting only: every statistic is computed elsewhere).

Each function returns a matplotlib Figure; the caller saves it through
``DerivativesWriter.write_figure`` and closes it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")
import mne  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


@functools.lru_cache(maxsize=1)
def _template() -> nib.Nifti1Image:
    """The MNI152 2009 T1 template bundled with nilearn (no download)."""
    from nilearn import datasets

    return datasets.load_mni152_template(resolution=2)


@functools.lru_cache(maxsize=4)
def _axial_background(n_cuts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Template slices of an axial mosaic, cropped to the head.

    Returns the slices (n_cuts, Y, X) ready for ``imshow(origin="lower")``, their z (mm),
    and the template voxel coordinates (3, Y, X) of the slice plane (k = 0) of the crop.
    The cuts are evenly spaced over the brain's inferior-superior extent, ends excluded.
    """
    tpl = _template()
    data = np.asarray(tpl.dataobj, dtype=np.float32)
    head = data > 0.2 * data.max()
    inside = np.flatnonzero(head.any(axis=(0, 1)))
    ks = np.linspace(inside[0], inside[-1], n_cuts + 2)[1:-1].round().astype(int)
    z_mm = tpl.affine[2, 2] * ks + tpl.affine[2, 3]
    xs = np.flatnonzero(head.any(axis=(1, 2)))
    ys = np.flatnonzero(head.any(axis=(0, 2)))
    x_sl = slice(max(xs[0] - 2, 0), xs[-1] + 3)
    y_sl = slice(max(ys[0] - 2, 0), ys[-1] + 3)
    slices = np.stack([data[x_sl, y_sl, k].T for k in ks])  # rows = y, columns = x
    jj, ii = np.mgrid[y_sl, x_sl]
    return slices, z_mm, np.stack([ii, jj, np.zeros_like(ii)]).astype(float)


def _axial_overlay(img: nib.Nifti1Image, z_mm: np.ndarray, plane: np.ndarray) -> np.ndarray:
    """Trilinear samples of a 3D image on the template's axial slices, shape (n, Y, X)."""
    from scipy import ndimage

    tpl = _template()
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim > 3:
        data = data.reshape(data.shape[:3])
    to_img = np.linalg.inv(img.affine) @ tpl.affine
    out = []
    for z in z_mm:
        vox = plane.reshape(3, -1).copy()
        vox[2] = (z - tpl.affine[2, 3]) / tpl.affine[2, 2]
        ijk = to_img[:3, :3] @ vox + to_img[:3, 3:]
        out.append(ndimage.map_coordinates(data, ijk, order=1, cval=0.0)
                   .reshape(plane.shape[1:]))
    return np.stack(out)


def _limits(values: np.ndarray, symmetric: bool) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    top = float(np.abs(finite).max()) if finite.size else 1.0
    if symmetric:
        return -(top or 1.0), top or 1.0
    return min(0.0, float(finite.min()) if finite.size else 0.0), float(finite.max()
                                                                      if finite.size else 1.0)


def plot_stat_maps(imgs: Mapping[str, nib.Nifti1Image], *, titles: Mapping[str, str],
                   thresholds: Mapping[str, float | None] | None = None, cut_coords: int = 7,
                   cmap: str = "cold_hot", symmetric: bool = True,
                   suptitle: str = "") -> Figure:
    """Axial mosaics of several 3D statistical images on the MNI template, one row each.

    The overlay is sampled (trilinear) on the template's own slices, the same cuts for
    every row, so rows compare directly; values with ``|v| < threshold`` are transparent.

    Parameters
    ----------
    imgs : mapping of str to nib.Nifti1Image
        Row name -> 3D map (MNI).
    titles : mapping of str to str
        Row name -> row title.
    thresholds : mapping of str to float | None
        Row name -> display threshold (e.g. the FDR threshold; None: show every value).
    cut_coords : int
        Number of axial slices.
    cmap : str
        Colour map (nilearn's ``cold_hot`` is available once nilearn.plotting is imported).
    symmetric : bool
        Symmetric colour limits around zero.
    suptitle : str
        Figure title.

    Returns
    -------
    Figure
    """
    import nilearn.plotting  # noqa: F401  (registers nilearn's colour maps)
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    thresholds = thresholds or {}
    bg, z_mm, plane = _axial_background(cut_coords)
    gray = bg / (np.percentile(bg, 99.5) or 1.0)
    gray = np.repeat(np.clip(gray, 0, 1)[..., None], 3, axis=-1)
    n, (ny, nx) = len(imgs), bg.shape[1:]
    row_h = 1.4
    width = row_h * cut_coords * nx / ny
    fig = Figure(figsize=(width + 0.7, (row_h + 0.3) * n + (0.4 if suptitle else 0.1)))
    grid = fig.add_gridspec(n, 2, width_ratios=[width, 0.12], wspace=0.02, hspace=0.25)
    colours = colormaps[cmap]
    for row, (name, img) in enumerate(imgs.items()):
        over = _axial_overlay(img, z_mm, plane)
        norm = Normalize(*_limits(over, symmetric))
        thr = thresholds.get(name)
        shown = np.isfinite(over)
        if thr is not None:
            shown &= np.abs(over) >= thr
        rgb = np.where(shown[..., None], colours(norm(np.nan_to_num(over)))[..., :3], gray)
        mosaic = np.concatenate(list(rgb), axis=1)  # slices side by side: (Y, n_cuts*X, 3)
        ax = fig.add_subplot(grid[row, 0])
        ax.imshow(mosaic, origin="lower", interpolation="nearest", aspect="equal")
        for col, z in enumerate(z_mm):
            ax.text((col + 0.5) * nx, 2, f"z={z:.0f}", ha="center", va="bottom", fontsize=6,
                    color="w")
        ax.set_axis_off()
        ax.set_title(titles.get(name, name), fontsize=8, loc="left")
        fig.colorbar(ScalarMappable(norm, colours), cax=fig.add_subplot(grid[row, 1]))
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def plot_stat_map(img: nib.Nifti1Image, *, title: str, threshold: float | None = None,
                  cut_coords: int = 7, cmap: str = "cold_hot",
                  symmetric: bool = True) -> Figure:
    """Axial mosaic of one 3D statistical image on the MNI template.

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
    return plot_stat_maps({"map": img}, titles={"map": title}, thresholds={"map": threshold},
                          cut_coords=cut_coords, cmap=cmap, symmetric=symmetric)


def plot_topomap_rows(rows: Mapping[str, tuple[np.ndarray, list[str]]], info: mne.Info, *,
                      suptitle: str = "", cmap: str = "RdBu_r",
                      sphere: tuple[float, float, float, float] | None = None) -> Figure:
    """Rows of scalp topographies in one figure (e.g. one row per frequency band).

    Parameters
    ----------
    rows : mapping of str to (ndarray, list of str)
        Row name -> (values of shape (n_maps, n_ch) per channel of ``info``, map titles).
    info : mne.Info
        Channel positions.
    suptitle : str
        Figure title.
    cmap : str
        Colour map; limits are symmetric and shared by the maps of a row.
    sphere : tuple | None
        Head sphere (x, y, z, radius) in metres of the positions' frame (MNE default if None).

    Returns
    -------
    Figure
    """
    n_cols = max(len(np.atleast_2d(v)) for v, _ in rows.values())
    fig = Figure(figsize=(1.9 * n_cols + 0.8, 2.1 * len(rows) + (0.3 if suptitle else 0)))
    grid = fig.add_gridspec(len(rows), n_cols + 1, width_ratios=[1] * n_cols + [0.06],
                            hspace=0.45, wspace=0.1)
    for r, (name, (values, titles)) in enumerate(rows.items()):
        values = np.atleast_2d(values)
        lim = float(np.nanmax(np.abs(values))) or 1.0
        for c, (row, title) in enumerate(zip(values, titles)):
            ax = fig.add_subplot(grid[r, c])
            im, _ = mne.viz.plot_topomap(row, info, axes=ax, show=False, cmap=cmap,
                                         vlim=(-lim, lim), contours=0, sensors=True,
                                         sphere=sphere)
            ax.set_title(f"{name}: {title}" if len(rows) > 1 else title, fontsize=7)
        fig.colorbar(im, cax=fig.add_subplot(grid[r, n_cols]), label="r")
    if suptitle:
        fig.suptitle(suptitle)
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
    return plot_topomap_rows({"": (values, titles)}, info, suptitle=suptitle, cmap=cmap,
                             sphere=sphere)


def plot_regressors(frame_times: np.ndarray, series: dict[str, np.ndarray], *,
                    title: str) -> Figure:
    """Stacked time courses (e.g. HRF-convolved band-power regressors)."""
    fig = Figure(figsize=(10, 2.8))
    ax = fig.subplots()
    for k, (name, y) in enumerate(series.items()):
        ax.plot(frame_times, np.asarray(y) + 3 * k, lw=1, label=name)
    ax.set_yticks(3 * np.arange(len(series)), list(series))
    ax.set_xlabel("time (s)")
    ax.set_title(title)
    ax.spines[["top", "right"]].set_visible(False)
    return fig
