"""Pre-flight of one run: every file it will read, checked before any output is written.

:func:`check_run` returns the problems of a run as sentences that name the file, so the
participant level can refuse the run (or the whole selection) before it writes anything.
It runs with and without ``--skip-bids-validation`` and checks, in this order:

1. entries the run would read that are not regular files (directories with a file's
   name, broken DataLad/git-annex symbolic links);
2. images: full streaming integrity of every NIfTI/gzip (:mod:`bids_app.io.integrity`),
   BOLD 4D and T1w 3D;
3. sidecar types and finite ranges: ``RepetitionTime`` a finite number > 0,
   ``SliceTiming`` finite numbers within [0, RepetitionTime) with one entry per slice,
   ``SamplingFrequency`` a finite number > 0 equal to the recording's rate;
4. EEG: header paths resolving inside the dataset, a readable recording without NaN,
   ``channels.tsv`` naming the recording's channels;
5. consistency between BOLD and EEG: volume markers present and as many as volumes,
   marker spacing equal to ``RepetitionTime``, an EEG recording covering the scan.

NaN and Infinity are not JSON, but Python's parser accepts them, so they are refused
here with the key named.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from bids_app.errors import InputError
from bids_app.io.integrity import (
    check_events,
    check_finite_samples,
    check_nifti,
    file_markers,
    read_eeg,
)

logger = logging.getLogger(__name__)

#: Tasks recorded with EEG only (no BOLD, no R128 markers) in NATVIEW.
EEG_ONLY_TASKS: frozenset[str] = frozenset({"checkeroff", "checkerout"})
#: Relative disagreement allowed between a sidecar's rate or TR and the data.
RATE_TOLERANCE = 0.001
TR_TOLERANCE = 0.05


def _finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite JSON number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _source(run: Any, modality: str, key: str) -> Path | None:
    """The most specific sidecar of ``modality`` that defines ``key`` (else the run's own)."""
    import json

    own = run.bold_json if modality == "bold" else run.eeg_sidecar
    for path in reversed(run.extra.get(f"{modality}_sidecars") or []):
        try:
            if key in json.loads(Path(path).read_text()):
                return Path(path)
        except (OSError, ValueError, TypeError):
            continue
    return own


def check_bold_timing(run: Any, img: Any, *, required: bool) -> float | None:
    """Check ``RepetitionTime`` and ``SliceTiming`` of a BOLD run; return the TR.

    Parameters
    ----------
    run : RunFiles
        The run (its sidecar chain gives the metadata).
    img : nibabel image
        The BOLD image (for the number of slices).
    required : bool
        Whether the keys must be present (the built-in fMRI path needs them); present
        keys are always checked, because the EEG stage reads them too.

    Raises
    ------
    InputError
        A missing (when required), non-numeric, non-finite or out-of-range value.
    """
    meta = run.metadata("bold")
    if run.bold_json is None and required:
        raise InputError(f"BOLD {run.bold} has no JSON sidecar with RepetitionTime and "
                         "SliceTiming.")
    tr_value = meta.get("RepetitionTime")
    tr = _finite(tr_value)
    if "RepetitionTime" in meta or required:
        if tr is None or tr <= 0:
            shown = "" if tr_value is None else f" ({tr_value!r})"
            raise InputError(f"BOLD sidecar {_source(run, 'bold', 'RepetitionTime')} has no "
                             f"valid RepetitionTime{shown}; add it as a finite number of "
                             "seconds > 0 (NATVIEW: 2.1).")
    timing = meta.get("SliceTiming")
    axis = {"i": 0, "j": 1, "k": 2}.get(
        str(meta.get("SliceEncodingDirection", "k")).rstrip("-"), 2)
    if timing is None and not required:
        return tr
    where = _source(run, "bold", "SliceTiming")
    if not isinstance(timing, list) or len(timing) != img.shape[axis]:
        raise InputError(f"BOLD sidecar {where} needs SliceTiming with one entry per slice "
                         f"({img.shape[axis]}); add it from the scanner protocol.")
    bad = [t for t in timing if _finite(t) is None]
    if bad:
        raise InputError(f"BOLD sidecar {where} has SliceTiming entries that are not finite "
                         f"numbers ({bad[0]!r}); slice times are seconds within "
                         "[0, RepetitionTime).")
    if tr is not None and (max(timing) >= tr or min(timing) < 0):
        raise InputError(f"BOLD sidecar {where} has SliceTiming values outside "
                         f"[0, RepetitionTime={tr}).")
    return tr


def check_eeg_metadata(run: Any, raw: Any) -> None:
    """``SamplingFrequency`` and ``channels.tsv`` must agree with the recording.

    Raises
    ------
    InputError
        A rate that is not a finite number > 0 or differs from the recording's by more
        than 0.1 %, or a channels file naming other channels than the recording.
    """
    meta = run.metadata("eeg")
    sfreq = float(raw.info["sfreq"])
    if "SamplingFrequency" in meta:
        value = meta["SamplingFrequency"]
        rate = _finite(value)
        where = _source(run, "eeg", "SamplingFrequency")
        if rate is None or rate <= 0:
            raise InputError(f"EEG sidecar {where} has SamplingFrequency {value!r}; it must "
                             f"be a finite number of Hz > 0 (the recording {run.eeg.name} "
                             f"is sampled at {sfreq:g} Hz).")
        if abs(rate - sfreq) > RATE_TOLERANCE * sfreq:
            raise InputError(f"EEG sidecar {where} has SamplingFrequency {rate:g} Hz but the "
                             f"recording {run.eeg.name} is sampled at {sfreq:g} Hz; correct "
                             "the sidecar.")
    if run.channels is not None:
        import pandas as pd

        try:
            table = pd.read_csv(run.channels, sep="\t", dtype=str, keep_default_na=False)
        except Exception as err:  # pandas raises several types for broken TSVs
            raise InputError(f"Channels file {run.channels} cannot be read as TSV "
                             f"({err}).") from None
        if "name" not in table.columns:
            raise InputError(f"Channels file {run.channels} has no 'name' column.")
        listed, recorded = list(table["name"]), list(raw.ch_names)
        if set(listed) != set(recorded) or len(listed) != len(recorded):
            only_file = sorted(set(listed) - set(recorded))[:3]
            only_data = sorted(set(recorded) - set(listed))[:3]
            raise InputError(
                f"Channels file {run.channels} lists {len(listed)} channels but the "
                f"recording {run.eeg.name} has {len(recorded)} (only in the file: "
                f"{', '.join(only_file) or 'none'}; only in the data: "
                f"{', '.join(only_data) or 'none'}); make channels.tsv match the recording."
            )


def volume_marker_tolerance(n_volumes: int) -> int:
    """Largest difference between volume markers and BOLD volumes accepted for one run.

    Parameters
    ----------
    n_volumes : int
        Volumes of the BOLD image.

    Returns
    -------
    int
        ``max(2, ceil(5 % of n_volumes))`` markers (a recording may start a volume late or
        stop a few volumes early; more means another run or a broken marker channel).
    """
    return max(2, math.ceil(0.05 * n_volumes))


def check_markers(run: Any, raw: Any, *, marker: str, n_volumes: int,
                  tr: float | None, check_duration: bool) -> None:
    """Volume markers of the EEG must match the BOLD run: count, spacing and coverage.

    Raises
    ------
    InputError
        No markers, markers past the end of the data, a count off by more than 5 %
        (at least 2), a spacing that differs from ``RepetitionTime`` by more than 5 %, or
        an EEG recording shorter than the scan.
    """
    sfreq = float(raw.info["sfreq"])
    duration = raw.n_times / sfreq
    onsets = np.array([a["onset"] for a in raw.annotations
                       if str(a["description"]).strip().split("/")[-1].strip() == marker])
    tolerance = volume_marker_tolerance(n_volumes)
    if len(onsets) == 0 or abs(len(onsets) - n_volumes) > tolerance:
        stored = file_markers(run.eeg, marker)
        beyond = stored[stored >= duration]
        if beyond.size:
            raise InputError(
                f"EEG file {run.eeg} has {stored.size} {marker} markers of which "
                f"{beyond.size} lie after the end of its data ({duration:.1f} s; last "
                f"marker at {stored.max():.1f} s); the data file is truncated or the "
                "markers belong to another recording."
            )
    if len(onsets) == 0:
        raise InputError(f"EEG file {run.eeg} has no {marker} volume markers, so it "
                         f"cannot be aligned with BOLD {run.bold.name}.")
    if abs(len(onsets) - n_volumes) > tolerance:
        raise InputError(
            f"EEG file {run.eeg} has {len(onsets)} {marker} markers but BOLD "
            f"{run.bold.name} has {n_volumes} volumes; check that they are the same run."
        )
    if tr is not None and len(onsets) >= 3:
        spacing = float(np.median(np.diff(np.sort(onsets))))
        if abs(spacing - tr) > max(TR_TOLERANCE * tr, 2.0 / sfreq):
            raise InputError(
                f"BOLD sidecar {_source(run, 'bold', 'RepetitionTime')} has RepetitionTime "
                f"{tr:g} s but the {marker} markers of EEG file {run.eeg.name} are "
                f"{spacing:.3g} s apart (median); correct RepetitionTime or check that the "
                "files belong to the same run."
            )
    needed = n_volumes * float(tr or 0.0)
    if check_duration and duration + 0.5 * float(tr or 0.0) < needed:
        raise InputError(
            f"EEG file {run.eeg} lasts {duration:.1f} s, shorter than BOLD "
            f"{run.bold.name} ({n_volumes} volumes x TR {tr} s = {needed:.1f} s)."
        )


def _check_inside(raw: Any, run: Any, root: Path | None) -> None:
    """The data file MNE opened (e.g. a ``.set``'s ``.fdt``) must lie inside the dataset."""
    if root is None:
        return
    for name in getattr(raw, "filenames", ()) or ():
        if name is not None and not Path(name).absolute().is_relative_to(root.absolute()):
            raise InputError(f"EEG file {run.eeg} names its data file {name}, outside the "
                             f"dataset {root}; data files must lie inside the dataset.")


def check_run(run: Any, config: Any, root: Path | None = None) -> list[str]:
    """Check every file of one run; return problem sentences (empty when fine).

    Parameters
    ----------
    run : RunFiles
        The run's files.
    config : Config
        Resolved configuration (volume marker, fMRI backend).
    root : Path | None
        Dataset root: paths named inside headers must stay inside it.
    """
    problems: list[str] = []
    n_volumes = tr = None
    marker = config.eeg.volume_marker
    backend = config.fmri.backend
    builtin = backend == "builtin" or (backend == "auto" and config.fmri.fmriprep_dir is None)
    try:
        for path, reason in run.extra.get("unreadable", []):
            raise InputError(f"Input file {path} {reason}.")
        if run.eeg is None and run.bold is None:
            raise InputError(f"Run {run.run_id} has neither EEG nor BOLD data.")
        if run.bold is not None:
            img = check_nifti(run.bold, ndim=4, label="BOLD")
            n_volumes = img.shape[3]
            tr = check_bold_timing(run, img, required=builtin)
            if builtin and run.t1w is None:
                raise InputError(
                    f"BOLD {run.bold} has no T1w image (anat/*_T1w.nii.gz) in its subject "
                    "or session; the built-in fMRI path needs one to register to MNI space."
                )
        for events in {run.bold_events, run.eeg_events} - {None}:
            check_events(events)
        if run.t1w is not None:
            check_nifti(run.t1w, ndim=3, label="T1w")
        if run.eeg is None:
            raise InputError(f"BOLD {run.bold} has no matching EEG recording "
                             f"(expected {run.run_id}_eeg.* in the eeg folder).")
        raw = read_eeg(run.eeg, root)
        _check_inside(raw, run, root)
        if raw.n_times == 0:
            raise InputError(f"EEG file {run.eeg} holds no samples.")
        check_eeg_metadata(run, raw)
        check_finite_samples(raw, run.eeg)
        if run.bold is None:
            onsets = [a for a in raw.annotations
                      if str(a["description"]).strip().split("/")[-1].strip() == marker]
            if onsets and run.entities.get("task", "") not in EEG_ONLY_TASKS:
                raise InputError(
                    f"EEG file {run.eeg} has {len(onsets)} {marker} volume markers but no "
                    f"matching BOLD run (expected func/{run.run_id}_bold.nii.gz)."
                )
            return problems  # recorded outside the scanner: EEG only
        check_markers(run, raw, marker=marker, n_volumes=n_volumes, tr=tr,
                      check_duration=builtin)
    except InputError as err:
        problems.append(str(err))
    return problems
