"""EEG forward models that need no download: electrodes, spherical heads, MNI volume grids.

Coordinate convention
---------------------
MNE's template montages (``colin27_1005``, formerly ``standard_1005``) store electrode
positions in the MRI frame of the Colin27 brain, which is registered to MNI space. We declare
that frame the *head* frame, so that ``head (m) == MNI (mm) / 1000`` and the forward model,
the source grid and the fMRI outputs share one coordinate system. The approximation is that
Colin27-MNI equals MNI152NLin2009cAsym (differences of a few millimetres at the scalp). With
a user FreeSurfer ``subjects_dir`` (fsaverage BEM), the same positions are used as the MRI
frame of fsaverage (MNI305), again equal to MNI152 within a few millimetres.

Measured electrode positions (``_electrodes.tsv``) in real units are aligned to the template
by a similarity (Procrustes) fit on the shared labels; unit-sphere positions (as in the
NATVIEW release) carry no head geometry and are replaced by the template.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mne
import nibabel as nib
import numpy as np
import pandas as pd
from scipy import sparse
from scipy.spatial import cKDTree

from bids_app.errors import InputError

logger = logging.getLogger(__name__)

#: Montage names that MNE renamed (old name -> new name).
_MONTAGE_ALIASES = {"standard_1005": "colin27_1005", "standard_1020": "colin27_1020"}
#: Inverse head model: classic 3-shell sphere (brain, skull, scalp; Berg & Scherg).
INVERSE_RELATIVE_RADII = (0.87, 0.92, 1.0)
INVERSE_SIGMAS = (0.33, 0.0042, 0.33)
#: Simulation head model: 4 shells with CSF, a shifted centre and a larger scalp radius.
SIMULATION_RELATIVE_RADII = (0.90, 0.92, 0.97, 1.0)
SIMULATION_SIGMAS = (0.33, 1.79, 0.01, 0.43)
SIMULATION_OFFSET_M = (0.002, -0.003, 0.004)
SIMULATION_RADIUS_SCALE = 1.03


def template_positions(montage: str = "standard_1005") -> dict[str, np.ndarray]:
    """Electrode positions of an MNE template montage in MNI metres.

    Parameters
    ----------
    montage : str
        MNE montage name (``standard_1005`` is mapped to its new name ``colin27_1005``).

    Returns
    -------
    dict
        Channel name -> position (3,) in metres, MNI-aligned frame.
    """
    name = _MONTAGE_ALIASES.get(montage, montage)
    if name not in mne.channels.get_builtin_montages():
        name = montage
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mont = mne.channels.make_standard_montage(name)
    return {k: np.asarray(v, float) for k, v in mont.get_positions()["ch_pos"].items()}


def montage_positions(ch_names: Sequence[str], montage: str = "standard_1005") -> np.ndarray:
    """Positions of ``ch_names`` on an MNE template montage, as one array.

    Parameters
    ----------
    ch_names : sequence of str
        Channel names, all present in the montage.
    montage : str
        MNE montage name (see :func:`template_positions`).

    Returns
    -------
    ndarray, shape (n_channels, 3)
        Positions in metres, MNI-aligned frame, in ``ch_names`` order.
    """
    template = template_positions(montage)
    return np.array([template[c] for c in ch_names])


def read_electrodes(path: Path, template: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Read a BIDS ``_electrodes.tsv`` and express it in the template's MNI frame.

    Parameters
    ----------
    path : Path
        The electrodes file (columns name, x, y, z).
    template : dict
        Template positions (metres) from :func:`template_positions`.

    Returns
    -------
    dict
        Channel name -> position in metres. Unit-sphere files return the template positions
        of their labels; real-unit files are similarity-aligned to the template.
    """
    try:
        table = pd.read_csv(path, sep="\t", na_values=["n/a", "NaN"])
        xyz = table[["x", "y", "z"]].to_numpy(float)
        names = table["name"].astype(str).tolist()
    except (OSError, KeyError, ValueError) as err:
        raise InputError(f"Electrodes file {path} cannot be read as name/x/y/z ({err}).") from None
    ok = np.isfinite(xyz).all(axis=1)
    names = [n for n, k in zip(names, ok) if k]
    xyz = xyz[ok]
    shared = [i for i, n in enumerate(names) if n in template]
    if len(shared) < 4:
        raise InputError(f"Electrodes file {path} has fewer than 4 labels of the template cap.")
    norms = np.linalg.norm(xyz - xyz.mean(0), axis=1)
    if 0.5 < np.median(norms) < 2.0:  # unit sphere (radius 1): no geometry; metres: ~0.09
        logger.info("Electrodes in %s lie on a unit sphere; using template positions.", path)
        return {names[i]: template[names[i]] for i in shared}
    src = xyz[shared]
    dst = np.array([template[names[i]] for i in shared])
    scale, rot, shift = _similarity_fit(src, dst)
    aligned = scale * xyz @ rot.T + shift
    err = np.linalg.norm(scale * src @ rot.T + shift - dst, axis=1)
    logger.info("Aligned %s to the template: median error %.1f mm.", path, 1e3 * np.median(err))
    return dict(zip(names, aligned))


def _similarity_fit(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity transform dst ≈ s R src + t (Umeyama 1991)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.ones(3)
    d[-1] = np.sign(np.linalg.det(u @ vt))
    rot = u @ np.diag(d) @ vt
    scale = float((sig * d).sum() / a.var(0).sum())
    return scale, rot, mu_d - scale * rot @ mu_s


def make_eeg_info(
    ch_names: list[str] | tuple[str, ...],
    *,
    sfreq: float = 250.0,
    montage: str = "standard_1005",
    electrodes: Path | None = None,
) -> mne.Info:
    """Measurement info with EEG positions in the MNI-aligned head frame.

    Parameters
    ----------
    ch_names : sequence of str
        EEG channel names.
    sfreq : float
        Sampling rate.
    montage : str
        Template montage name.
    electrodes : Path | None
        Optional BIDS ``_electrodes.tsv`` (see :func:`read_electrodes`).

    Returns
    -------
    mne.Info
    """
    template = template_positions(montage)
    positions = dict(template)
    if electrodes is not None:
        positions.update(read_electrodes(Path(electrodes), template))
    missing = [c for c in ch_names if c not in positions]
    if missing:
        raise InputError(f"Montage {montage} has no position for channels {missing}.")
    info = mne.create_info(list(ch_names), sfreq, "eeg")
    dig = mne.channels.make_dig_montage(
        ch_pos={c: positions[c] for c in ch_names}, coord_frame="head"
    )
    info.set_montage(dig)
    return info


def set_positions(raw: mne.io.BaseRaw, *, montage: str = "standard_1005",
                  electrodes: Path | None = None) -> mne.io.BaseRaw:
    """Set MNI-frame positions on the EEG channels of ``raw`` in place and return it."""
    eeg = mne.pick_types(raw.info, eeg=True, exclude=())
    names = [raw.ch_names[i] for i in eeg]
    info = make_eeg_info(names, sfreq=raw.info["sfreq"], montage=montage, electrodes=electrodes)
    raw.set_montage(info.get_montage(), on_missing="ignore")
    return raw


def fit_head_sphere(info: mne.Info) -> tuple[np.ndarray, float]:
    """Centre (m) and radius (m) of the sphere fitted to the electrode positions."""
    with mne.utils.use_log_level("error"):
        radius, r0, _ = mne.bem.fit_sphere_to_headshape(info, dig_kinds=("eeg",), units="m")
    return np.asarray(r0, float), float(radius)


def make_head_model(info: mne.Info, *, simulation: bool = False,
                    subjects_dir: Path | None = None,
                    extra_offset_m: Sequence[float] | None = None) -> mne.bem.ConductorModel:
    """Conductor model for the inverse (3-shell sphere) or for simulation (4-shell sphere).

    Parameters
    ----------
    info : mne.Info
        Info with electrode positions (MNI-aligned head frame).
    simulation : bool
        Build the simulation model (4 shells, different centre, radius and conductivities),
        so that simulated data are never inverted with the model that generated them.
    subjects_dir : Path | None
        If given, load ``fsaverage/bem/fsaverage-5120-5120-5120-bem-sol.fif`` from it.
    extra_offset_m : sequence of float | None
        Further shift (metres) of the sphere centre (hard-mode simulation: a head shape
        the inverse does not know).

    Returns
    -------
    mne.bem.ConductorModel
    """
    if subjects_dir is not None and not simulation:
        path = Path(subjects_dir) / "fsaverage" / "bem" / "fsaverage-5120-5120-5120-bem-sol.fif"
        if not path.exists():
            raise InputError(f"BEM solution {path} does not exist (set source.subjects_dir).")
        return mne.read_bem_solution(path, verbose="error")
    r0, radius = fit_head_sphere(info)
    if extra_offset_m is not None:
        r0 = r0 + np.asarray(extra_offset_m, float)
    if simulation:
        r0 = r0 + np.asarray(SIMULATION_OFFSET_M)
        radius *= SIMULATION_RADIUS_SCALE
        radii, sigmas = SIMULATION_RELATIVE_RADII, SIMULATION_SIGMAS
    else:
        radii, sigmas = INVERSE_RELATIVE_RADII, INVERSE_SIGMAS
    with mne.utils.use_log_level("error"):
        return mne.make_sphere_model(r0=r0, head_radius=radius, relative_radii=radii,
                                     sigmas=sigmas)


def inner_radius(bem: mne.bem.ConductorModel) -> tuple[np.ndarray, float]:
    """Centre and innermost-shell radius (m) of a sphere model."""
    return np.asarray(bem["r0"], float), float(bem["layers"][0]["rad"])


def make_volume_forward(info: mne.Info, rr_mm: np.ndarray, bem: mne.bem.ConductorModel,
                        *, nn: np.ndarray | None = None) -> mne.Forward:
    """Forward solution for dipoles at MNI positions (free orientation unless ``nn`` given).

    Parameters
    ----------
    info : mne.Info
        Info with electrode positions.
    rr_mm : ndarray, shape (n_src, 3)
        Source positions in MNI millimetres (inside the inner shell).
    bem : mne.bem.ConductorModel
        Head model from :func:`make_head_model`.
    nn : ndarray | None
        Orientations; only used to build the source space normals.

    Returns
    -------
    mne.Forward
        Free-orientation forward (3 columns per source), unreferenced potentials.
    """
    rr = np.asarray(rr_mm, float) / 1000.0
    normals = np.tile([0.0, 0.0, 1.0], (len(rr), 1)) if nn is None else np.asarray(nn, float)
    with mne.utils.use_log_level("error"):
        src = mne.setup_volume_source_space(
            pos=dict(rr=rr, nn=normals), mindist=0.0, add_interpolator=False
        )
        fwd = mne.make_forward_solution(info, trans=None, src=src, bem=bem, eeg=True,
                                        meg=False, mindist=0.0)
    if fwd["nsource"] != len(rr):
        raise ValueError(f"{len(rr) - fwd['nsource']} sources lie outside the head model.")
    return fwd


@dataclass(frozen=True)
class SourceGrid:
    """Volume source grid laid on an fMRI mask, with its interpolator back to the voxels.

    Attributes
    ----------
    rr_mm : ndarray, shape (n_src, 3)
        Source positions (MNI mm).
    mask_img : nib.Nifti1Image
        The fMRI brain mask that defines the output grid.
    voxel_ijk : ndarray, shape (n_vox, 3)
        Indices of in-mask voxels.
    weights : scipy.sparse.csr_matrix, shape (n_vox, n_src)
        Trilinear interpolation weights (rows sum to 1).
    """

    rr_mm: np.ndarray
    mask_img: nib.Nifti1Image
    voxel_ijk: np.ndarray
    weights: sparse.csr_matrix

    @property
    def voxel_mm(self) -> np.ndarray:
        """MNI positions of the in-mask voxels."""
        return nib.affines.apply_affine(self.mask_img.affine, self.voxel_ijk)

    def to_voxels(self, values: np.ndarray) -> np.ndarray:
        """Interpolate (..., n_src) source values to (..., n_vox) voxel values."""
        values = np.asarray(values, float)
        return np.asarray(self.weights @ values.reshape(-1, values.shape[-1]).T).T.reshape(
            values.shape[:-1] + (self.weights.shape[0],)
        )

    def to_img(self, values: np.ndarray) -> nib.Nifti1Image:
        """Source values (n_src,) or (n_t, n_src) -> 3D/4D image on the mask grid."""
        vox = self.to_voxels(np.atleast_2d(values))
        shape = self.mask_img.shape[:3]
        data = np.zeros(shape + (len(vox),), np.float32)
        i, j, k = self.voxel_ijk.T
        data[i, j, k, :] = vox.T
        if np.ndim(values) == 1:
            data = data[..., 0]
        return nib.Nifti1Image(data, self.mask_img.affine)


def make_source_grid(mask_img: nib.Nifti1Image, *, spacing_mm: float = 10.0,
                     bem: mne.bem.ConductorModel | None = None,
                     margin_mm: float = 5.0) -> SourceGrid:
    """Regular MNI grid (multiples of ``spacing_mm``) inside the mask and the inner shell.

    Parameters
    ----------
    mask_img : nib.Nifti1Image
        Brain mask on the fMRI output grid (MNI).
    spacing_mm : float
        Grid spacing.
    bem : ConductorModel | None
        Sphere model; points closer than ``margin_mm`` to its inner shell are dropped.
    margin_mm : float
        Distance kept from the inner shell.

    Returns
    -------
    SourceGrid
    """
    mask = np.asarray(mask_img.dataobj) > 0
    if mask.ndim != 3 or not mask.any():
        raise InputError("The brain mask image is not a non-empty 3D mask.")
    ijk = np.argwhere(mask)
    xyz = nib.affines.apply_affine(mask_img.affine, ijk)
    lo = np.floor(xyz.min(0) / spacing_mm) * spacing_mm
    hi = np.ceil(xyz.max(0) / spacing_mm) * spacing_mm
    axes = [np.arange(a, b + spacing_mm / 2, spacing_mm) for a, b in zip(lo, hi)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    inv = np.linalg.inv(mask_img.affine)
    gijk = np.round(nib.affines.apply_affine(inv, grid)).astype(int)
    inside = np.all((gijk >= 0) & (gijk < mask.shape), axis=1)
    keep = np.zeros(len(grid), bool)
    keep[inside] = mask[tuple(gijk[inside].T)]
    if bem is not None and bem["is_sphere"]:
        r0, rad = inner_radius(bem)
        keep &= np.linalg.norm(grid / 1000 - r0, axis=1) < rad - margin_mm / 1000
    node = -np.ones([len(a) for a in axes], int)
    node.reshape(-1)[np.flatnonzero(keep)] = np.arange(keep.sum())
    rr = grid[keep]
    weights = _trilinear_weights(xyz, lo, spacing_mm, node, rr)
    logger.info("Source grid: %d points at %.0f mm for %d voxels.", len(rr), spacing_mm, len(xyz))
    return SourceGrid(rr, mask_img, ijk, weights)


def _trilinear_weights(xyz: np.ndarray, lo: np.ndarray, spacing: float, node: np.ndarray,
                       rr: np.ndarray) -> sparse.csr_matrix:
    """Trilinear weights over the present corner nodes; nearest node where none is present."""
    f = (xyz - lo) / spacing
    base = np.floor(f).astype(int)
    frac = f - base
    rows, cols, vals = [], [], []
    idx_rows = np.arange(len(xyz))
    for corner in np.ndindex(2, 2, 2):
        c = np.asarray(corner)
        idx = np.minimum(base + c, np.array(node.shape) - 1)
        n = node[tuple(idx.T)]
        w = np.prod(np.where(c, frac, 1 - frac), axis=1)
        ok = (n >= 0) & (w > 0)
        rows.append(idx_rows[ok])
        cols.append(n[ok])
        vals.append(w[ok])
    weights = sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(xyz), len(rr)),
    )
    total = np.asarray(weights.sum(1)).ravel()
    empty = np.flatnonzero(total < 1e-6)
    if len(empty):
        nearest = cKDTree(rr).query(xyz[empty])[1]
        weights = weights + sparse.csr_matrix(
            (np.ones(len(empty)), (empty, nearest)), shape=weights.shape
        )
        total = np.asarray(weights.sum(1)).ravel()
    return sparse.diags(1.0 / total) @ weights
