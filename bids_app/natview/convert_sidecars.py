"""Sidecars, physio and the conversion report of the NATVIEW -> BIDS conversion.

The release's JSON sidecars may be truncated or carry non-standard keys, BOLD sidecars may
lack ``TaskName``/``SliceTiming`` and eye-tracking TSVs hold ``NaN``; these functions repair
each defect and record it in a :class:`ConversionReport`.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import re
from pathlib import Path

import numpy as np

from bids_app.natview import facts as nv
from bids_app.natview.conversion_report import ConversionReport

logger = logging.getLogger(__name__)

#: Sidecar keys of the release that BIDS does not define (dropped).
NON_STANDARD_KEYS: tuple[str, ...] = ("participant_id", "session_id", "modality")


def read_json_lenient(path: Path, report: ConversionReport | None = None) -> dict:
    """Read a JSON sidecar, repairing a truncated one; an unreadable one becomes ``{}``.

    Parameters
    ----------
    path : Path
        Sidecar file.
    report : ConversionReport | None
        Receives a repair note when the file was not valid JSON.

    Returns
    -------
    dict
        The sidecar's content.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
        data = json.loads(text)
    except (OSError, UnicodeDecodeError):
        data, text = None, ""
    except json.JSONDecodeError:
        data = _close_truncated_json(text)
        if report is not None:
            done = "Completed the truncated" if data is not None else "Replaced the invalid"
            report.repair(f"{done} JSON sidecar {path}.")
    return data if isinstance(data, dict) else {}


def _close_truncated_json(text: str) -> dict | None:
    """Parse JSON cut off after a complete value (close the open brackets), else None."""
    body = text.rstrip().rstrip(",")
    stack = []
    in_string = escaped = False
    for char in body:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            stack.append("]" if char == "[" else "}")
        elif char in "]}" and stack:
            stack.pop()
    if in_string:
        return None
    try:
        data = json.loads(body + "".join(reversed(stack)))
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def convert_sidecar(src: Path, dst: Path, report: ConversionReport, tasks: dict) -> None:
    """Copy a JSON sidecar without non-standard keys (BOLD: cleaned, task timing kept)."""
    data = read_json_lenient(src, report)
    if src.name.endswith("_bold.json"):
        data = clean_bold_sidecar(data, src, report)
        task = task_of(src.name)
        tasks.setdefault(task, {}).update(
            {k: data[k] for k in ("RepetitionTime", "SliceTiming") if k in data}
        )
    else:
        if src.name.endswith("_physio.json"):
            data = capitalise_column_keys(data, src, report)
        for key in NON_STANDARD_KEYS:
            if key in data:
                data.pop(key)
                report.repair(f"Dropped the non-standard key '{key}' from {src}.")
    write_json(dst, data)


def clean_bold_sidecar(data: dict, src: Path, report: ConversionReport) -> dict:
    """BOLD sidecar without non-standard keys and with TaskName/RepetitionTime/SliceTiming.

    Parameters
    ----------
    data : dict
        Sidecar as read.
    src : Path
        Its file (for messages and the task label).
    report : ConversionReport
        Receives the repairs.

    Returns
    -------
    dict
        Cleaned copy.
    """
    data = dict(data)
    dropped = [k for k in NON_STANDARD_KEYS if k in data]
    for key in dropped:
        data.pop(key)
    if dropped:
        report.repair(f"Dropped the non-standard key(s) {', '.join(dropped)} from {src}.")
    task = task_of(src.name)
    if data.get("TaskName") != task:
        data["TaskName"] = task
        report.repair(f"Set TaskName '{task}' in {src}.")
    if "RepetitionTime" not in data:
        data["RepetitionTime"] = nv.TR
        report.repair(f"Added the NATVIEW RepetitionTime {nv.TR} s to {src}.")
    timing = data.get("SliceTiming")
    if not isinstance(timing, list) or max(timing, default=np.inf) >= data["RepetitionTime"]:
        data["SliceTiming"] = nv.slice_timing()
        report.repair(f"Set the NATVIEW interleaved SliceTiming in {src}.")
    return data


def ensure_bold_sidecar(src: Path, dst: Path, report: ConversionReport, tasks: dict) -> None:
    """Write the NATVIEW BOLD sidecar for a BOLD image the release left without one."""
    sidecar = src.with_name(src.name.replace(".nii.gz", ".json"))
    if not sidecar.exists():
        data = clean_bold_sidecar({}, sidecar, report)
        report.repair(f"Wrote the missing BOLD sidecar {sidecar.name}.")
        write_json(dst.with_name(sidecar.name), data)
        tasks.setdefault(task_of(src.name), {}).update(
            RepetitionTime=data["RepetitionTime"], SliceTiming=data["SliceTiming"]
        )


_COLUMN_KEYS = ("description", "units", "levels")


def capitalise_column_keys(data: dict, src: Path, report: ConversionReport) -> dict:
    """Column descriptions with BIDS key case (``description`` -> ``Description``).

    Parameters
    ----------
    data : dict
        A sidecar describing table columns.
    src : Path
        Its file (for the repair message).
    report : ConversionReport
        Receives the repair.

    Returns
    -------
    dict
        Copy with ``description``/``units``/``levels`` capitalised in every column entry.
    """
    fixed = 0
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            value = {(k.capitalize() if k in _COLUMN_KEYS else k): v for k, v in value.items()}
            fixed += sum(k in _COLUMN_KEYS for k in data[key])
        out[key] = value
    if fixed:
        report.repair(f"Capitalised {fixed} column key(s) (description/units) in {src}.")
    return out


def copy_physio(src: Path, dst: Path, report: ConversionReport) -> None:
    """Copy a gzipped physio TSV, writing ``n/a`` where the release wrote ``NaN``.

    The run's record in ``report`` gets a flag when the rows do not fill the declared
    sampling rate (sparse) or the time column steps at another rate than declared.
    """
    with gzip.open(src, "rt", encoding="utf-8", newline="") as fin:
        rows = list(csv.reader(fin, delimiter="\t"))
    fixed = 0
    for row in rows:
        for i, value in enumerate(row):
            if value.strip().lower() in ("nan", ""):
                row[i] = "n/a"
                fixed += 1
    # mtime=0 keeps the output byte-identical for identical input.
    with open(dst, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write("".join("\t".join(r) + "\n" for r in rows).encode("utf-8"))
    if fixed:
        report.repair(f"Replaced {fixed} NaN value(s) by n/a in {src}.")
    sidecar = src.with_name(src.name.replace(".tsv.gz", ".json"))
    flag = physio_rate_flag(rows, read_json_lenient(sidecar) if sidecar.exists() else {})
    if flag:
        stem = re.sub(r"_recording-[^_]+_physio\.tsv\.gz$", "", src.name)
        label = re.search(r"recording-([^_]+)", src.name)
        report.run(stem).physio_flags.append(f"{label.group(1) if label else 'physio'}: {flag}")


def physio_rate_flag(rows: list[list[str]], sidecar: dict) -> str:
    """Why a physio table does not match its declared rate ('' when it does or cannot tell).

    Parameters
    ----------
    rows : list of list of str
        The table (no header, as BIDS physio files are).
    sidecar : dict
        Its JSON sidecar (``SamplingFrequency``, ``Columns``; a ``time`` column in seconds,
        or in the units its column description declares).

    Returns
    -------
    str
        ``time steps give F' Hz, sidecar declares F Hz`` when the table is regular at
        another rate (at least 40 % of the declared one), ``sparse: N rows for T s at
        F Hz (M expected)`` when it has far fewer rows than its time span needs, or ''.
    """
    columns = [str(c).lower() for c in sidecar.get("Columns", [])]
    rate = sidecar.get("SamplingFrequency")
    if "time" not in columns or not isinstance(rate, int | float) or rate <= 0 or len(rows) < 3:
        return ""
    index = columns.index("time")
    described = next((v for k, v in sidecar.items() if k.lower() == "time"), {})
    units = str({k.lower(): v for k, v in described.items()}.get("units", "s"))
    scale = {"ms": 1e-3, "us": 1e-6, "µs": 1e-6}.get(units, 1.0)
    time = np.array([float(r[index]) if len(r) > index and r[index] != "n/a" else np.nan
                     for r in rows]) * scale  # fmt: skip
    time = time[np.isfinite(time)]
    if time.size < 3:
        return ""
    span = float(time[-1] - time[0])
    expected = int(round(span * rate)) + 1
    actual = 1.0 / max(float(np.median(np.diff(time))), 1e-12)
    if actual >= 0.4 * rate and abs(actual - rate) > 0.01 * rate:
        return f"time steps give {actual:.4g} Hz, sidecar declares {rate:g} Hz"
    if len(rows) < 0.9 * expected:
        return f"sparse: {len(rows)} rows for {span:.1f} s at {rate:g} Hz ({expected} expected)"
    return ""


def task_of(name: str) -> str:
    """Task label of a BIDS-like file name (``unknown`` when absent)."""
    match = re.search(r"_task-([a-zA-Z0-9]+)", name)
    return match.group(1) if match else "unknown"


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented UTF-8 JSON (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
