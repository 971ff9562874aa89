"""Participant validation against the simulator's planted truth (report only).

When the input dataset carries ``sourcedata/simulation/`` (written by
:mod:`bids_app.simulate`), the participant report adds a "Validation against planted
truth" section. This module and :mod:`bids_app.workflows.validation_group` are the only
modules that read that folder, and they run inside the report stages only: no derivative
other than the reports (and their figures) depends on the truth, which
``tests/integration/test_demo.py`` checks byte for byte.

Per run, each check has the pass mark that docs/methods.md claims:

- gradient: power of the cleaned EEG's error (cleaned minus planted neural EEG, both
  average-referenced, at the cleaned rate and band) at the slice-frequency harmonics,
  relative to the planted gradient artifact's power there: >= 30 dB down;
- pulse (BCG): RMS of the heartbeat-locked average (0-0.8 s after the true R-peaks) of
  that error, relative to the planted BCG's: < 0.05;
- localisation: distance of the source-map peak of each planted dipole's band from the
  dipole: <= 20 mm (when two dipoles share a band, the peak of the covariance of the map's
  power with the dipole's planted power replaces the peak of the mean power);
- coupling: recall of each planted source's voxels at q < level in the global or
  source-resolved map of its band: >= 0.8; false positives outside every planted region:
  <= 0.1 % of the voxels of each band.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: Where the simulator writes its planted truth, relative to the dataset root.
TRUTH_FOLDER = Path("sourcedata") / "simulation"
#: Pass marks (docs/methods.md): gradient, BCG, localisation, coupling recall and FP rate.
GRADIENT_DB = 30.0
BCG_LOCKED = 0.05
LOCALISATION_MM = 20.0
COUPLING_RECALL = 0.8
COUPLING_FP = 0.001


@dataclass(frozen=True)
class Check:
    """One row of a validation table: what was measured, its value and its pass mark."""

    check: str
    item: str
    value: float
    mark: str
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary (for JSON and the report tables)."""
        return asdict(self)


def make_check(check: str, item: str, value: float, op: str, bound: float,
               units: str = "") -> Check:
    """A :class:`Check` whose ``passed`` compares ``value`` with ``bound`` by ``op``.

    Parameters
    ----------
    check, item : str
        What is checked, and on what (run, source, band, link).
    value : float
        The measured value (NaN fails).
    op : str
        One of ``">="``, ``">"``, ``"<="``, ``"<"``.
    bound : float
        The pass mark.
    units : str
        Units appended to the mark.
    """
    ops = {">=": np.greater_equal, ">": np.greater, "<=": np.less_equal, "<": np.less}
    value = float(value)
    passed = bool(np.isfinite(value) and ops[op](value, bound))
    return Check(check, item, value, f"{op} {bound:g}{(' ' + units) if units else ''}",
                 passed)


def truth_folder(bids_dir: Path | str | None) -> Path | None:
    """The planted-truth folder of a simulated dataset, or None for real data."""
    if bids_dir is None:
        return None
    folder = Path(bids_dir) / TRUTH_FOLDER
    return folder if (folder / "simulation.json").is_file() else None


def run_stem(entities: dict[str, str]) -> str:
    """``sub-01_ses-01_task-tp_run-01``: the prefix of a run's truth files."""
    return "_".join(f"{k}-{entities[k]}" for k in ("sub", "ses", "task", "run")
                    if entities.get(k) not in (None, "", "n/a"))


def _planted_eeg(truth: dict[str, np.ndarray], keys: tuple[str, ...], ch_names: list[str],
                 sfreq: float, l_freq: float, h_freq: float, n_times: int
                 ) -> dict[str, np.ndarray]:
    """Planted EEG components on ``ch_names``: average reference, the cleaned rate, band.

    Polyphase resampling (8x faster than FFT resampling of the full 5 kHz recording); the
    two differ only near the new Nyquist frequency, far above the band-pass.
    """
    from fractions import Fraction

    import mne
    from scipy import signal

    ratio = Fraction(sfreq / float(truth["sfreq"])).limit_denominator(1000)
    rows = [list(truth["eeg_channels"]).index(c) for c in ch_names]
    all_rows = [list(truth["ch_names"]).index(c) for c in truth["eeg_channels"]]
    out = {}
    for key in keys:
        data = truth[key].astype(np.float64)
        data = data[all_rows] if data.shape[0] != len(truth["eeg_channels"]) else data
        data = data - data.mean(axis=0, keepdims=True)
        data = signal.resample_poly(data[rows], ratio.numerator, ratio.denominator, axis=1)
        data = mne.filter.filter_data(data, sfreq, l_freq, h_freq, verbose="error")
        out[key] = data[:, :n_times]
    return out


def eeg_checks(raw_clean: Any, truth: dict[str, np.ndarray], l_freq: float, h_freq: float,
               label: str) -> list[Check]:
    """Gradient and BCG residual of a run's cleaned EEG against its planted truth.

    Parameters
    ----------
    raw_clean : mne.io.BaseRaw
        The cleaned EEG (``desc-preproc``).
    truth : dict
        :func:`bids_app.simulate.truth.load_run_truth` of the run.
    l_freq, h_freq : float
        The cleaning band-pass (applied to the truth the same way).
    label : str
        Run label for the table.

    Returns
    -------
    list of Check
        ``slice harmonics down (dB)`` and ``BCG beat-locked residual``.
    """
    from scipy import signal

    names = [c for c in raw_clean.ch_names if c in set(truth["eeg_channels"])]
    sfreq = float(raw_clean.info["sfreq"])
    clean = raw_clean.get_data(picks=names).astype(np.float64)
    clean = clean - clean.mean(axis=0, keepdims=True)
    planted = _planted_eeg(truth, ("neural", "gradient", "bcg"), names, sfreq, l_freq,
                           h_freq, clean.shape[1])
    n = min(clean.shape[1], planted["neural"].shape[1])
    error = clean[:, :n] - planted["neural"][:, :n]
    onsets = np.asarray(truth["slice_onsets_s"], float)
    slice_freq = 1.0 / float(np.median(np.diff(onsets)))
    nper = min(n, int(8 * sfreq))
    f, p_err = signal.welch(error, sfreq, nperseg=nper)
    _, p_grad = signal.welch(planted["gradient"][:, :n], sfreq, nperseg=nper)
    harmonics = slice_freq * np.arange(1, int(h_freq // slice_freq) + 1)
    bins = np.unique(np.abs(f[:, None] - harmonics[None]).argmin(axis=0))
    down = 10 * np.log10(p_grad[:, bins].sum() / max(p_err[:, bins].sum(), 1e-300))
    rows = [make_check("gradient: slice harmonics down vs truth", label, down, ">=",
                       GRADIENT_DB, "dB")]
    lags = np.arange(int(0.8 * sfreq))
    beats = np.round(np.asarray(truth["r_peaks_s"], float) * sfreq).astype(int)
    beats = beats[(beats >= 0) & (beats + lags[-1] < n)]
    if beats.size >= 3:
        locked_err = error[:, beats[:, None] + lags].mean(axis=1)
        locked_bcg = planted["bcg"][:, beats[:, None] + lags].mean(axis=1)
        ratio = np.sqrt((locked_err**2).mean() / max((locked_bcg**2).mean(), 1e-300))
        rows.append(make_check("BCG: beat-locked residual vs truth", label, ratio, "<",
                               BCG_LOCKED))
    return rows


def _window_power(truth: dict[str, np.ndarray], name: str, onsets: np.ndarray,
                  length: float) -> np.ndarray | None:
    key = f"source_power_{name}"
    if key not in truth:
        return None
    power = np.asarray(truth[key], float)
    duration = truth["neural"].shape[1] / float(truth["sfreq"])
    t = (np.arange(len(power)) + 0.5) * duration / len(power)
    return np.array([power[(t >= a) & (t < a + length)].mean() if np.any(
        (t >= a) & (t < a + length)) else np.nan for a in onsets])


def localisation_checks(source_maps: Any, dipoles: list[dict], truth: dict | None,
                        label: str) -> list[Check]:
    """Distance of each planted dipole from the peak of its band's source map.

    Parameters
    ----------
    source_maps : bids_app.eeg.source.SourceMaps
        The run's band power per source and window.
    dipoles : list of dict
        ``dipoles`` of the run's ``_dipoles.json`` (``name``, ``band``, ``position_mm``).
    truth : dict | None
        The run's truth arrays (``source_power_<name>``), used when dipoles share a band.
    label : str
        Run label for the table.
    """
    rows = []
    bands = [d.get("band") for d in dipoles]
    rr = source_maps.grid.rr_mm
    for dip in dipoles:
        power = source_maps.source_power.get(dip.get("band"))
        if power is None:
            continue
        score = np.asarray(power, float).mean(axis=0)
        if bands.count(dip["band"]) > 1 and truth is not None:
            planted = _window_power(truth, dip["name"], source_maps.window_onsets_s,
                                    source_maps.window_length_s)
            ok = np.isfinite(planted) if planted is not None else None
            if ok is not None and ok.sum() > 2 and np.std(planted[ok]) > 0:
                x = np.asarray(power, float)[ok]
                y = (planted[ok] - planted[ok].mean()) / planted[ok].std()
                score = ((x - x.mean(0)) * y[:, None]).mean(axis=0)  # power following it
        peak = rr[int(np.argmax(score))]
        error = float(np.linalg.norm(peak - np.asarray(dip["position_mm"], float)))
        rows.append(make_check("localisation error", f"{label}: {dip['name']} "
                               f"({dip['band']})", error, "<=", LOCALISATION_MM, "mm"))
    return rows


def inside_mask(mask_img: Any, mm: np.ndarray) -> np.ndarray:
    """Whether each MNI position ``mm`` ``(N, 3)`` falls in a voxel of ``mask_img`` > 0."""
    import nibabel as nib

    ijk = np.round(nib.affines.apply_affine(np.linalg.inv(mask_img.affine), mm)).astype(int)
    data = np.asarray(mask_img.dataobj) > 0
    ok = np.all((ijk >= 0) & (ijk < np.array(data.shape[:3])), axis=1)
    out = np.zeros(len(mm), bool)
    out[ok] = data[tuple(ijk[ok].T)]
    return out


def coupling_checks(coupling: Any, masks: dict[str, Any], dipoles: list[dict], q: float,
                    label: str) -> list[Check]:
    """Recall of each planted source's voxels and the false-positive rate of each band.

    A voxel is found when its global or its source-resolved q-value is below ``q``.

    Parameters
    ----------
    coupling : CouplingResult
        The run's coupling result (``bands``: voxel arrays in brain-mask order).
    masks : dict
        Source name -> planted region (MNI mask image).
    dipoles : list of dict
        The run's planted dipoles (``name``, ``band``).
    q : float
        FDR level.
    label : str
        Run label for the table.
    """
    mm = coupling.source_maps.grid.voxel_mm
    regions = {d["name"]: inside_mask(masks[d["name"]], mm) for d in dipoles if d["name"] in masks}
    planted_any = np.zeros(len(mm), bool)
    for inside in regions.values():
        planted_any |= inside
    rows = []
    for dip in dipoles:
        res = coupling.bands.get(dip.get("band"))
        inside = regions.get(dip["name"])
        if res is None or inside is None or not inside.any():
            continue
        found = (np.asarray(res.q) < q) | (np.asarray(res.local_q) < q)
        rows.append(make_check("coupling recall", f"{label}: {dip['name']} ({dip['band']}, "
                               f"{int(inside.sum())} voxels)", found[inside].mean(), ">=",
                               COUPLING_RECALL))
    for band, res in coupling.bands.items():
        found = (np.asarray(res.q) < q) | (np.asarray(res.local_q) < q)
        outside = ~planted_any
        rows.append(make_check("coupling false-positive rate", f"{label}: {band}",
                               found[outside].mean() if outside.any() else np.nan, "<=",
                               COUPLING_FP))
    return rows


def _subject_masks(folder: Path) -> dict[str, Any]:
    import nibabel as nib

    masks = {}
    for path in sorted(folder.glob("*_source-*_mask.nii*")):
        name = path.name.split("_source-", 1)[1].split("_mask", 1)[0]
        masks[name] = nib.load(path)
    return masks


def validate_participant(outcomes: list[Any], bids_dir: Path | str | None,
                         config: Any) -> list[Check]:
    """Every check of a subject's runs against the planted truth (empty for real data).

    Parameters
    ----------
    outcomes : list of RunOutcome
        The subject's runs (``eeg``, ``coupling`` results; None when a stage failed).
    bids_dir : Path | None
        The input dataset (its ``sourcedata/simulation`` holds the truth).
    config : Config
        Resolved configuration (band-pass, FDR level).

    Returns
    -------
    list of Check
        One row per check, run and source or band.
    """
    from bids_app.simulate.truth import load_run_truth

    folder = truth_folder(bids_dir)
    if folder is None:
        return []
    rows: list[Check] = []
    for outcome in outcomes:
        entities = outcome.entities
        sub_dir = folder / f"sub-{entities['sub']}"
        stem = run_stem(entities)
        label = " ".join(stem.split("_")[1:]) or stem
        npz = sub_dir / f"{stem}_truth.npz"
        if not npz.is_file():
            continue
        truth = load_run_truth(npz)
        dip_file = sub_dir / f"{stem}_dipoles.json"
        planted = json.loads(dip_file.read_text()) if dip_file.is_file() else {}
        dipoles = planted.get("dipoles", [])
        coupled = [] if planted.get("null") else dipoles  # the null plants no coupling
        if getattr(outcome.eeg, "raw_clean", None) is not None:
            rows += eeg_checks(outcome.eeg.raw_clean, truth, config.eeg.l_freq,
                               config.eeg.h_freq, label)
        if outcome.coupling is not None:
            rows += localisation_checks(outcome.coupling.source_maps, dipoles, truth, label)
            rows += coupling_checks(outcome.coupling, _subject_masks(sub_dir), coupled,
                                    config.coupling.fdr_q, label)
    logger.info("Validation against planted truth: %d of %d checks pass.",
                sum(r.passed for r in rows), len(rows))
    return rows
