"""EEG runs of the NATVIEW -> BIDS conversion: EEGLAB ``.set`` -> BrainVision + sidecars.

The recording is read through :func:`mne.io.read_raw_eeglab` (never the release's orphan
``.vhdr``); recorder markers are dropped, the volume-marker train is repaired, the other
markers are named per task (:mod:`bids_app.natview.markers`), and the cap's standard
positions replace the release's unit-sphere electrodes.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

from bids_app.errors import InputError
from bids_app.io.brainvision import Marker, read_vmrk, write_brainvision
from bids_app.natview import facts as nv
from bids_app.natview.conversion_report import ConversionReport, RunRecord
from bids_app.natview.convert_sidecars import task_of, write_json
from bids_app.natview.markers import (
    UNKNOWN_TRIAL_TYPE,
    is_junk_marker,
    normalize_marker,
    repair_volume_markers,
    trial_type,
)

logger = logging.getLogger(__name__)

_ENTITY = re.compile(r"^(sub-[^_]+)_(ses-[^_]+)_(.*)$")


# --- EEG ---------------------------------------------------------------------------------
def convert_eeg_run(src: Path, out_dir: Path, report: ConversionReport, tasks: dict) -> Path:
    """Rewrite one release ``.set`` recording as BIDS BrainVision EEG with its sidecars.

    Parameters
    ----------
    src : Path
        ``..._eeg.set`` of the release.
    out_dir : Path
        Output ``eeg`` folder.
    report : ConversionReport
        Receives the repairs.
    tasks : dict
        Task metadata collected for the root sidecars.

    Returns
    -------
    Path
        The written ``.vhdr``.
    """
    import mne

    stem = src.name[: -len("_eeg.set")]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            raw = mne.io.read_raw_eeglab(src, preload=True, verbose="error")
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad input file
        raise InputError(f"EEG file {src} cannot be read as EEGLAB .set ({err}).") from None
    types = {c: nv.CHANNEL_TYPES[c] for c in raw.ch_names if c in nv.CHANNEL_TYPES}
    raw.set_channel_types({c: t for c, t in types.items() if t != "eeg"}, verbose="error")
    unknown = [c for c in raw.ch_names if c not in nv.CHANNEL_TYPES]
    if unknown:
        report.repair(f"Kept unknown channel(s) {', '.join(unknown)} of {src} as type MISC.")
        raw.set_channel_types(dict.fromkeys(unknown, "misc"), verbose="error")
    markers = _eeg_markers(src, raw, report)
    vhdr = out_dir / f"{stem}_eeg.vhdr"
    kinds = [_marker_kind(d) for _, d in markers]
    write_brainvision(
        vhdr,
        raw._data,  # the loaded array itself: written in chunks, never copied whole
        raw.info["sfreq"],
        raw.ch_names,
        [Marker(kind, desc, sample) for kind, (sample, desc) in zip(kinds, markers)],
    )
    task = task_of(src.name)
    write_json(out_dir / f"{stem}_eeg.json", eeg_sidecar(raw, task))
    _write_channels(out_dir / f"{stem}_channels.tsv", raw, src, report)
    _write_eeg_events(out_dir / f"{stem}_events.tsv", markers, raw.info["sfreq"], task,
                      report.run(stem))
    match = _ENTITY.match(stem)
    if match:
        prefix = f"{match.group(1)}_{match.group(2)}"
        released = (src.parent / f"{prefix}_electrodes.tsv").exists()
        _write_electrodes(out_dir, prefix, raw.ch_names, report, released=released)
    tasks.setdefault(task, {})
    return vhdr


def _eeg_markers(src: Path, raw, report: ConversionReport) -> list[tuple[int, str]]:
    """(sample, marker) of the experiment, from the .set (the .vmrk when the .set lacks them).

    Recorder markers are dropped; the volume markers are repaired (duplicates removed, gaps
    of whole TRs filled) and the run's record in ``report`` gets the counts.
    """
    sfreq = raw.info["sfreq"]
    found = [
        (int(round(a["onset"] * sfreq)), normalize_marker(str(a["description"])))
        for a in raw.annotations
    ]
    vmrk = src.with_name(src.name.replace(".set", ".vmrk"))
    if vmrk.exists() and not any(d == nv.VOLUME_MARKER for _, d in found):
        from_vmrk = [
            (m.sample, normalize_marker(m.description or m.kind)) for m in read_vmrk(vmrk)
        ]
        in_set = sum(not is_junk_marker(d) for _, d in found)
        in_vmrk = sum(not is_junk_marker(d) for _, d in from_vmrk)
        if any(d == nv.VOLUME_MARKER for _, d in from_vmrk) or in_vmrk > in_set:
            report.repair(f"Took the markers of {src} from {vmrk.name} (the .set lacked them).")
            found = from_vmrk
    junk = [d for _, d in found if is_junk_marker(d)]
    if junk:
        kinds = ", ".join(sorted(set(junk)))
        report.repair(f"Dropped {len(junk)} recorder marker(s) ({kinds}) from {src}.")
    kept = sorted((s, d) for s, d in found if not is_junk_marker(d))
    volumes = [s for s, d in kept if d == nv.VOLUME_MARKER]
    spacing = nv.TR * sfreq
    repaired, fix = repair_volume_markers(volumes, spacing)
    record = report.run(src.name[: -len("_eeg.set")])
    record.volume_markers, record.markers_written = len(volumes), len(repaired)
    record.duplicates_removed, record.gap_markers_added = len(fix.duplicates), len(fix.filled)
    if repaired:
        record.first_marker_s = repaired[0] / sfreq
        record.last_marker_s = repaired[-1] / sfreq
    if fix.duplicates:
        report.repair(f"Removed {len(fix.duplicates)} duplicate {nv.VOLUME_MARKER} marker(s) "
                      f"(closer than half a TR to the previous one) from {src}.")
    if fix.filled:
        report.repair(f"Added {len(fix.filled)} {nv.VOLUME_MARKER} marker(s) in gaps of whole "
                      f"TRs ({nv.TR} s) of {src}.")
    for start, stop in fix.unfilled_gaps:
        report.repair(f"Left a gap of {(stop - start) / sfreq:.2f} s between two "
                      f"{nv.VOLUME_MARKER} markers of {src} (not a whole number of TRs).")
    others = [(s, d) for s, d in kept if d != nv.VOLUME_MARKER]
    return sorted(others + [(s, nv.VOLUME_MARKER) for s in repaired])


def _marker_kind(marker: str) -> str:
    """BrainVision marker type of a NATVIEW marker (R = Response, S = Stimulus)."""
    if re.fullmatch(r"R\s*\d+", marker):
        return "Response"
    if re.fullmatch(r"S\s*\d+", marker):
        return "Stimulus"
    return "Comment"


def eeg_sidecar(raw, task: str) -> dict:
    """BIDS ``_eeg.json`` of a NATVIEW recording."""
    types = raw.get_channel_types()
    return {
        "TaskName": task,
        "SamplingFrequency": raw.info["sfreq"],
        "EEGReference": nv.EEG_REFERENCE,
        "EEGGround": nv.EEG_GROUND,
        "PowerLineFrequency": nv.POWER_LINE_FREQUENCY,
        "SoftwareFilters": "n/a",
        "Manufacturer": "Brain Products",
        "ManufacturersModelName": nv.AMPLIFIER,
        "CapManufacturer": nv.CAP_MANUFACTURER,
        "CapManufacturersModelName": nv.CAP_MODEL,
        "EEGPlacementScheme": "10-10 (BrainCap MR 64)",
        "EEGChannelCount": types.count("eeg"),
        "ECGChannelCount": types.count("ecg"),
        "EOGChannelCount": types.count("eog"),
        "EMGChannelCount": 0,
        "MiscChannelCount": types.count("misc"),
        "TriggerChannelCount": 0,
        "RecordingDuration": raw.n_times / raw.info["sfreq"],
        "RecordingType": "continuous",
    }


def _write_channels(path: Path, raw, src: Path, report: ConversionReport) -> None:
    released = src.with_name(src.name.replace("_eeg.set", "_channels.tsv"))
    if released.exists():
        kinds = [ln.split("\t")[1] for ln in released.read_text().splitlines()[1:] if "\t" in ln]
        if any(k != k.upper() for k in kinds):
            report.repair(f"Upper-cased the channel types of {released}.")
    rows = ["name\ttype\tunits\treference\tstatus"]
    for name, kind in zip(raw.ch_names, raw.get_channel_types()):
        ref = nv.EEG_REFERENCE if kind == "eeg" else "n/a"
        rows.append(f"{name}\t{kind.upper()}\tµV\t{ref}\tgood")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def _write_eeg_events(
    path: Path, markers: list[tuple[int, str]], sfreq: float, task: str, record: RunRecord
) -> None:
    """Events of the recording's markers, named per task, with their own sidecar."""
    rows = ["onset\tduration\tsample\ttrial_type\tvalue"]
    codes: dict[str, set[str]] = {}
    for sample, marker in markers:
        meaning = trial_type(marker, task)
        codes.setdefault(meaning, set()).add(marker)
        rows.append(f"{sample / sfreq:.4f}\t0\t{sample}\t{meaning}\t{marker}")
    path.write_text("\n".join(rows) + "\n")
    record.unknown_codes = sorted(codes.get(UNKNOWN_TRIAL_TYPE, ()))
    levels = {
        meaning: ("code(s) not sent by the stimulus script of this task: " if
                  meaning == UNKNOWN_TRIAL_TYPE else "marker(s) ") + ", ".join(sorted(found))
        for meaning, found in sorted(codes.items())
    }  # fmt: skip
    write_json(
        path.with_suffix(".json"),
        {
            "onset": {"Description": "Marker time from the first EEG sample.", "Units": "s"},
            "duration": {"Description": "Markers are instants.", "Units": "s"},
            "sample": {"Description": "Marker sample (0-based) in the EEG recording."},
            "trial_type": {"Description": f"Meaning of the NATVIEW marker in task {task}.",
                           **({"Levels": levels} if levels else {})},
            "value": {"Description": "Marker as recorded (BrainVision description)."},
        },
    )


def _write_electrodes(
    out_dir: Path, prefix: str, ch_names: list[str], report, *, released: bool
) -> None:
    """Cap positions (MNE's colin27 10-05 template) with an honest coordinate system.

    ``released`` says whether the release has an electrodes file for the session (its
    unit-sphere positions are replaced; the message differs when there is none).
    """
    tsv = out_dir / f"{prefix}_space-MNIColin27_electrodes.tsv"
    if tsv.exists():
        return
    from bids_app.eeg.forward import montage_positions

    names = [c for c in ch_names if nv.CHANNEL_TYPES.get(c) == "eeg"]
    pos = montage_positions(names)
    rows = ["name\tx\ty\tz"] + [
        f"{n}\t{x:.5f}\t{y:.5f}\t{z:.5f}" for n, (x, y, z) in zip(names, pos)
    ]
    tsv.write_text("\n".join(rows) + "\n")
    write_json(
        out_dir / f"{prefix}_space-MNIColin27_coordsystem.json",
        {
            "EEGCoordinateSystem": "MNIColin27",
            "EEGCoordinateUnits": "m",
            "EEGCoordinateSystemDescription": (
                "Template positions of the cap's 10-05 electrode names on the Colin27 MNI "
                "head (MNE 'colin27_1005' montage), not digitised positions."
            ),
        },
    )
    report.repair(
        (f"Replaced the unit-sphere electrodes of {prefix}" if released else
         f"Wrote electrodes for {prefix}, which the release lacks,")
        + " by the cap's standard 10-05 positions in MNIColin27 (metres) with a "
        "coordsystem.json."
    )
