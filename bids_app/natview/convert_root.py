"""Top-level files of the NATVIEW -> BIDS conversion.

``dataset_description.json`` keeps what the release states (authors, DOI, funding,
acknowledgement text, a licence only if the release states one); the README keeps its
name (``README.md`` in the release); ``participants.tsv`` and the questionnaire tables
(``phenotype/``) get sidecars whose ``Levels`` are derived from the values in the table,
keeping the release's descriptions; ``code/`` is carried over.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bids_app import __version__
from bids_app.natview import facts as nv
from bids_app.natview.conversion_report import ConversionReport
from bids_app.natview.convert_sidecars import (
    capitalise_column_keys,
    read_json_lenient,
    write_json,
)

#: dataset_description keys of the release carried over unchanged.
CARRIED_KEYS: tuple[str, ...] = ("Acknowledgements", "HowToAcknowledge", "Funding",
                                 "EthicsApprovals", "DatasetDOI")  # fmt: skip
#: Root files handled here (any other root file is left out and reported).
ROOT_FILES = ("dataset_description.json", "README", "README.md", "README.rst", "README.txt",
              "participants.tsv", "participants.json", "CHANGES", ".DS_Store")  # fmt: skip
_DEFAULT_COLUMNS = {
    "participant_id": {"Description": "Participant label."},
    "age": {"Description": "Age at the first session.", "Units": "year"},
}


def write_dataset_description(raw_dir: Path, bids_dir: Path, report: ConversionReport) -> None:
    """``dataset_description.json`` from the release's, in BIDS 1.9 and with provenance."""
    src = read_json_lenient(raw_dir / "dataset_description.json", report)
    if src.get("BIDSVersion") not in (None, "1.9.0"):
        report.repair(f"Declared BIDSVersion 1.9.0 (the release says {src['BIDSVersion']}).")
    if not src.get("License"):
        report.repair("Wrote no License: the release's dataset_description states none.")
    doi = src.get("DatasetDOI")
    source = {"URL": f"{nv.S3_BUCKET_URL}/{nv.S3_PREFIX}raw_data/"}
    if doi:
        source["DOI"] = doi
    released = src.get("ReferencesAndLinks") or []
    released = released if isinstance(released, list) else [str(released)]
    links = list(dict.fromkeys([*released, "https://doi.org/10.1038/s41597-023-02458-8"]))
    description = {
        "Name": src.get("Name", "NKI NATVIEW EEG-fMRI"),
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        **({"License": src["License"]} if src.get("License") else {}),
        "Authors": src.get("Authors") or ["NKI NATVIEW EEG-fMRI team"],
        **{key: src[key] for key in CARRIED_KEYS if src.get(key)},
        "ReferencesAndLinks": links,
        "GeneratedBy": [
            {"Name": "eegfmri", "Version": __version__,
             "Description": "NATVIEW release to BIDS conversion (eegfmri convert natview)"}
        ],
        "SourceDatasets": [source],
    }  # fmt: skip
    write_json(bids_dir / "dataset_description.json", description)


def write_readme(raw_dir: Path, bids_dir: Path) -> None:
    """The release's README under its own name (``README.md``, ``README``...), plus a note."""
    found = next((raw_dir / n for n in ROOT_FILES[1:5] if (raw_dir / n).is_file()), None)
    text = found.read_text(encoding="utf-8", errors="replace").strip() if found else ""
    name = found.name if found else "README"
    (bids_dir / name).write_text(
        (text + "\n\n" if text else "NKI NATVIEW EEG-fMRI dataset.\n\n")
        + "Converted to BIDS by eegfmri (see CHANGES for the repairs made).\n",
        encoding="utf-8",
    )


def read_table(path: Path, report: ConversionReport) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a TSV; rows padded/cut to the header width, blanks as ``n/a``."""
    lines = [ln for ln in path.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    header = lines[0].split("\t") if lines else ["participant_id"]
    rows = []
    for line in lines[1:]:
        row = line.split("\t")
        if len(row) != len(header):
            report.repair(f"Padded/cut a row of {path} to {len(header)} column(s).")
            row = (row + ["n/a"] * len(header))[: len(header)]
        rows.append([v.strip() if v.strip() else "n/a" for v in row])
    return header, rows


def column_sidecar(
    header: list[str], rows: list[list[str]], released: dict, table: Path,
    report: ConversionReport,
) -> dict:
    """Sidecar of a participants/phenotype table with ``Levels`` taken from its values.

    Descriptions and units of the release's sidecar are kept; a text column's ``Levels``
    are its distinct values (meanings from the release where it gives one), so they can
    never contradict the table; numeric columns get no ``Levels``.

    Parameters
    ----------
    header, rows : list
        The table.
    released : dict
        The release's sidecar of the table ({} when absent).
    table : Path
        The table (for messages).
    report : ConversionReport
        Receives a repair where the release's levels disagreed with the values.

    Returns
    -------
    dict
        Column -> description.
    """
    released = capitalise_column_keys(released, table.with_suffix(".json"), report)
    out = {}
    for index, column in enumerate(header):
        entry = dict(_DEFAULT_COLUMNS.get(column, {}))
        entry.update(released.get(column, {}) if isinstance(released.get(column), dict) else {})
        entry.setdefault("Description", f"{column} (from the NATVIEW release).")
        values = sorted({r[index] for r in rows} - {"n/a"})
        old = entry.pop("Levels", None)
        if column != "participant_id" and values and not all(map(_is_number, values)):
            old = old if isinstance(old, dict) else {}
            entry["Levels"] = {v: str(old.get(v, v)) for v in values}
            if old and set(old) != set(values):
                report.repair(f"Derived the levels of '{column}' in {table.name} from its "
                              f"values ({', '.join(values)}); the release declared "
                              f"{', '.join(map(str, old))}.")
        out[column] = entry
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def write_participants(raw_dir: Path, bids_dir: Path, report: ConversionReport) -> None:
    """``participants.tsv`` of the converted subjects and its sidecar (levels from data)."""
    src = raw_dir / "participants.tsv"
    header, rows = read_table(src, report) if src.exists() else (["participant_id"], [])
    by_id = {}
    for row in rows:
        pid = row[0] if row[0].startswith("sub-") else f"sub-{row[0]}"
        by_id[pid] = [pid] + row[1:]
    for label in report.subjects:
        if f"sub-{label}" not in by_id:
            by_id[f"sub-{label}"] = [f"sub-{label}"] + ["n/a"] * (len(header) - 1)
            report.repair(f"Added sub-{label} to participants.tsv.")
    kept = [by_id[f"sub-{s}"] for s in report.subjects]
    _write_tsv(bids_dir / "participants.tsv", header, kept)
    released = read_json_lenient(raw_dir / "participants.json", report)
    write_json(bids_dir / "participants.json",
               column_sidecar(header, kept, released, src, report))  # fmt: skip


def write_phenotype(raw_dir: Path, bids_dir: Path, report: ConversionReport) -> None:
    """Questionnaire tables (root TSVs and ``phenotype/``) as BIDS ``phenotype/`` tables.

    Rows are kept for the converted subjects only; each table gets its sidecar with levels
    derived from its values. A table without a ``participant_id`` column goes to
    ``sourcedata/phenotype/`` unchanged.
    """
    tables = [p for p in sorted(raw_dir.glob("*.tsv")) if p.name != "participants.tsv"]
    tables += sorted((raw_dir / "phenotype").glob("*.tsv"))
    subjects = {f"sub-{s}" for s in report.subjects}
    for table in tables:
        header, rows = read_table(table, report)
        sidecar = table.with_suffix(".json")
        if header[0] != "participant_id":
            dest = bids_dir / "sourcedata" / "phenotype"
            dest.mkdir(parents=True, exist_ok=True)
            for path in (table, sidecar):
                if path.exists():
                    shutil.copyfile(path, dest / path.name)
            report.repair(f"Kept {table.name} in sourcedata/phenotype/ (no participant_id "
                          "column).")
            continue
        rows = [[r[0] if r[0].startswith("sub-") else f"sub-{r[0]}"] + r[1:] for r in rows]
        kept = [r for r in rows if r[0] in subjects]
        out = bids_dir / "phenotype" / table.name
        out.parent.mkdir(parents=True, exist_ok=True)
        _write_tsv(out, header, kept)
        released = read_json_lenient(sidecar, report) if sidecar.exists() else {}
        extra = {k: v for k, v in released.items() if k not in header}
        write_json(out.with_suffix(".json"),
                   {**extra, **column_sidecar(header, kept, released, table, report)})
        if table.parent == raw_dir:
            report.repair(f"Moved the questionnaire table {table.name} to phenotype/.")


def copy_code(raw_dir: Path, bids_dir: Path) -> None:
    """The release's ``code/`` folder, carried over as BIDS ``code/``."""
    if (raw_dir / "code").is_dir():
        shutil.copytree(raw_dir / "code", bids_dir / "code",
                        ignore=shutil.ignore_patterns(".DS_Store", "._*"))  # fmt: skip


def _write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    text = "\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows)
    path.write_text(text, encoding="utf-8")
