"""The planted ground truth of the simulator: sources, stimulus features, scales.

One place defines what the simulator plants so that the simulator parts
(``simulate_stimulus``, ``simulate_neural``, ``simulate_artifacts``, ``simulate_bold``),
the orchestrator (``simulate``) and every test that checks a method against truth agree.

Causal chain planted (non-null variant)::

    stimulus feature f(t) ──► source s_f (MNI position): evoked transients at feature
                              onsets + oscillation whose amplitude follows f(t)
    source power P_s(t)  ──► BOLD of voxels within ``radius_mm`` of s, sign ``bold_sign``,
                              through the canonical (SPM) HRF
    source activity      ──► scalp EEG through a 4-shell spherical forward model that
                              differs from the 3-shell model the inverse uses

The masking ground truth is the set of (EEG timestamp, voxel, feature) triples where the
timestamp lies in a response window after an onset of feature f, the voxel is a coupled
voxel of s_f and the feature is f. The ``null`` variant keeps every signal but removes the
feature -> source and source -> BOLD links (sources then run on independent noise).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bids_app.natview import facts as nv


@dataclass(frozen=True)
class PlantedSource:
    """A dipolar neural source with a known MNI position and known couplings.

    Attributes
    ----------
    name : str
        Identifier used in truth files.
    mni_mm : tuple of float
        Position in MNI152NLin2009cAsym millimetres.
    orientation : tuple of float
        Unit dipole orientation (RAS).
    freq_hz : float
        Centre frequency of its oscillation.
    band : str
        Name of the configured band that holds ``freq_hz`` (see SourceConfig.bands).
    feature : str | None
        Stimulus feature that drives it (None: spontaneous).
    tasks : tuple of str
        Tasks in which it is active ("*" = all).
    bold_sign : int
        +1 or -1: sign of the BOLD response of its coupled voxels to its power.
    radius_mm : float
        Voxels closer than this to ``mni_mm`` are its coupled voxels.
    amplitude_nam : float
        Dipole moment scale in nA*m.
    """

    name: str
    mni_mm: tuple[float, float, float]
    orientation: tuple[float, float, float]
    freq_hz: float
    band: str
    feature: str | None
    tasks: tuple[str, ...]
    bold_sign: int
    radius_mm: float = 10.0
    amplitude_nam: float = 60.0


PLANTED_SOURCES: tuple[PlantedSource, ...] = (
    # Spontaneous occipital alpha; its power lowers BOLD in the planted occipital voxels.
    PlantedSource("alpha_occipital", (0.0, -78.0, 18.0), (0.0, -0.6, 0.8), 10.0, "alpha",
                  None, ("*",), -1, radius_mm=10.0, amplitude_nam=80.0),
    # SSVEP at the 12 Hz checkerboard flicker in left V1 (checker flicker blocks only).
    PlantedSource("ssvep_v1", (-14.0, -86.0, 4.0), (0.0, -1.0, 0.0),
                  nv.CHECKER_FLICKER_HZ, "alpha", "checker", ("checker",), +1,
                  radius_mm=10.0, amplitude_nam=60.0),
    # Luminance-driven right lateral occipital source (movies): beta oscillation whose
    # amplitude follows luminance, plus an evoked transient at each luminance onset.
    PlantedSource("luminance_lo", (38.0, -72.0, 0.0), (1.0, 0.0, 0.0), 18.0, "beta",
                  "luminance", ("dme", "dmh", "inscapes", "tp", "monkey1", "monkey2",
                                "monkey5"), +1, radius_mm=10.0, amplitude_nam=60.0),
    # Motion-driven left MT+ source (movies): theta/6 Hz oscillation and transients
    # at motion onsets.
    PlantedSource("motion_mt", (-44.0, -66.0, 6.0), (-1.0, 0.0, 0.0), 6.0, "theta",
                  "motion", ("dme", "dmh", "inscapes", "tp", "monkey1", "monkey2",
                             "monkey5"), +1, radius_mm=10.0, amplitude_nam=60.0),
)  # fmt: skip

#: Stimulus features the simulator plants and stimulus.py must measure from the video.
PLANTED_FEATURES: tuple[str, ...] = ("luminance", "motion", "checker")

#: Window after a feature onset in which EEG timestamps carry the planted dependency.
RESPONSE_WINDOW_S: tuple[float, float] = (0.05, 0.45)


@dataclass(frozen=True)
class RunSpec:
    """One simulated recording: task, run label and length in volumes."""

    task: str
    n_volumes: int
    run: str | None = None
    session: str = "01"


@dataclass(frozen=True)
class Scale:
    """Size of a simulated release.

    Attributes
    ----------
    name : str
        "tiny", "demo" or "natview".
    subjects : tuple of str
        Subject labels.
    runs : tuple of RunSpec
        Runs recorded for every subject.
    sfreq : float
        EEG sampling rate (5000 Hz as NATVIEW).
    t1w_voxel_mm : float
        Isotropic T1w voxel size (1 mm in NATVIEW; coarser for small scales).
    video_size : tuple of int
        (width, height) of simulated stimulus videos.
    video_fps : float
        Frame rate of simulated stimulus videos.
    extra_eeg_s : float
        EEG recorded before the first and after the last volume trigger.
    """

    name: str
    subjects: tuple[str, ...]
    runs: tuple[RunSpec, ...]
    sfreq: float = nv.EEG_SFREQ
    t1w_voxel_mm: float = 2.0
    video_size: tuple[int, int] = (160, 120)
    video_fps: float = 10.0
    extra_eeg_s: float = 3.0
    matrix: tuple[int, int] = field(default=nv.MATRIX)
    n_slices: int = nv.N_SLICES


SCALES: dict[str, Scale] = {
    "tiny": Scale(
        "tiny",
        subjects=("01",),
        runs=(RunSpec("checker", 20), RunSpec("tp", 20, run="01")),
    ),
    "demo": Scale(
        "demo",
        subjects=("01", "02"),
        runs=(
            RunSpec("checker", 30),
            RunSpec("tp", 30, run="01"),
            RunSpec("tp", 30, run="02"),
        ),
    ),
    "natview": Scale(
        "natview",
        subjects=("01",),
        runs=(RunSpec("dme", 289, run="01"),),
        t1w_voxel_mm=1.0,
    ),
}


def sources_for_task(task: str) -> tuple[PlantedSource, ...]:
    """Planted sources active during ``task``."""
    return tuple(s for s in PLANTED_SOURCES if "*" in s.tasks or task in s.tasks)


def band_of(source: PlantedSource, bands: tuple[tuple[str, float, float], ...]) -> str:
    """Name of the first configured band ``(name, l_freq, h_freq)`` holding the source.

    Localisation is scored in the pipeline's bands (``SourceConfig.bands``), not in a band
    built around the planted frequency.
    """
    for name, lo, hi in bands:
        if lo <= source.freq_hz < hi:
            return name
    raise ValueError(f"No band of {bands} holds {source.name} at {source.freq_hz} Hz.")


def localisation_error(source: PlantedSource, power: np.ndarray, rr_mm: np.ndarray,
                       flicker: np.ndarray | None = None) -> float:  # fmt: skip
    """Distance (mm) from the planted position to the peak of the source's power map.

    Parameters
    ----------
    source : PlantedSource
        The planted source.
    power : ndarray, shape (n_windows, n_sources)
        Source power per window in the band holding the source (:func:`band_of`).
    rr_mm : ndarray, shape (n_sources, 3)
        Source grid positions (MNI mm).
    flicker : ndarray of bool, shape (n_windows,) | None
        Windows during checkerboard flicker. The SSVEP source (feature "checker") is
        scored on the flicker-minus-rest contrast of the mean power (the block design a
        user has); every other source on its mean power outside the flicker blocks, where
        the 12 Hz SSVEP does not share its default band.

    Returns
    -------
    float
    """
    power = np.asarray(power, float)
    both = flicker is not None and np.any(flicker) and not np.all(flicker)
    if source.feature == "checker":
        if not both:
            raise ValueError("The SSVEP source needs windows with and without flicker.")
        score = np.nanmean(power[flicker], axis=0) - np.nanmean(power[~flicker], axis=0)
    else:
        score = np.nanmean(power[~np.asarray(flicker)] if both else power, axis=0)
    peak = np.asarray(rr_mm, float)[int(np.nanargmax(score))]
    return float(np.linalg.norm(peak - np.asarray(source.mni_mm, float)))
