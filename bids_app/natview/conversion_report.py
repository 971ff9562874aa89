"""The conversion report: every repair, and one row per run (``conversion.tsv``).

:class:`ConversionReport` collects what :func:`bids_app.natview.convert.convert_natview`
wrote and repaired; :class:`RunRecord` holds, per recording, the volume markers against
the BOLD volumes, the repairs of the marker train, the unknown stimulus codes, the physio
files flagged and whether the run was kept simultaneous, kept EEG-only or skipped, and why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

#: Columns of ``conversion.tsv`` (and of the printed table, in this order).
COLUMNS: tuple[str, ...] = (
    "run", "status", "volume_markers", "bold_volumes", "markers_written", "first_marker_s",
    "last_marker_s", "duplicates_removed", "gap_markers_added", "unknown_codes",
    "physio_flags", "reason",
)  # fmt: skip

#: Columns printed by ``eegfmri convert natview`` (the marker times stay in the TSV).
TABLE_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS if not c.endswith("_marker_s"))
#: ``status`` values: EEG and BOLD kept together, EEG kept alone, BOLD kept alone, run set
#: aside (outside the dataset, in ``sourcedata/``).
SIMULTANEOUS, EEG_ONLY, BOLD_ONLY, SKIPPED = "simultaneous", "eeg_only", "bold_only", "skipped"


@dataclass
class RunRecord:
    """One recording of the release as converted.

    Attributes
    ----------
    run : str
        Run stem (``sub-01_ses-01_task-tp_run-01``).
    status : str
        :data:`SIMULTANEOUS`, :data:`EEG_ONLY`, :data:`BOLD_ONLY` or :data:`SKIPPED`.
    volume_markers : int | None
        ``R128`` markers as recorded (None without EEG).
    bold_volumes : int | None
        Volumes of the BOLD image (None without BOLD).
    markers_written : int | None
        ``R128`` markers after removing duplicates and filling gaps.
    first_marker_s, last_marker_s : float | None
        First and last volume marker (seconds from the first EEG sample).
    duplicates_removed, gap_markers_added : int
        Repairs of the volume-marker train.
    unknown_codes : list of str
        Stimulus codes the task's stimulus script does not send.
    physio_flags : list of str
        Problems of the run's physio files (sparse, inconsistent rate).
    reason : str
        Why the run is not simultaneous, or why its marker count differs.
    """

    run: str
    status: str = SIMULTANEOUS
    volume_markers: int | None = None
    bold_volumes: int | None = None
    markers_written: int | None = None
    first_marker_s: float | None = None
    last_marker_s: float | None = None
    duplicates_removed: int = 0
    gap_markers_added: int = 0
    unknown_codes: list[str] = field(default_factory=list)
    physio_flags: list[str] = field(default_factory=list)
    reason: str = ""

    def cells(self) -> list[str]:
        """Values of :data:`COLUMNS` as TSV cells (``n/a`` when missing)."""
        def cell(value) -> str:
            if value is None or value == "" or value == []:
                return "n/a"
            if isinstance(value, float):
                return f"{value:.3f}"
            if isinstance(value, list):
                return "; ".join(value)
            return str(value)

        return [cell(getattr(self, name)) for name in COLUMNS]


@dataclass
class ConversionReport:
    """What :func:`convert_natview` wrote and repaired.

    Attributes
    ----------
    bids_dir : Path
        The written dataset.
    subjects : list of str
        Subject labels converted.
    eeg_runs, bold_runs : int
        Recordings written.
    repairs : list of str
        One sentence per repair of a release defect.
    runs : dict
        Run stem -> :class:`RunRecord`.
    """

    bids_dir: Path
    subjects: list[str] = field(default_factory=list)
    eeg_runs: int = 0
    bold_runs: int = 0
    repairs: list[str] = field(default_factory=list)
    runs: dict[str, RunRecord] = field(default_factory=dict)

    def repair(self, message: str) -> None:
        """Record a repair (and log it)."""
        logger.info("repair: %s", message)
        self.repairs.append(message)

    def run(self, stem: str) -> RunRecord:
        """The record of run ``stem`` (created on first use)."""
        return self.runs.setdefault(stem, RunRecord(run=stem))

    def summary(self) -> str:
        """One paragraph for the command line."""
        alone = sum(r.status != SIMULTANEOUS for r in self.runs.values())
        return (
            f"Converted {len(self.subjects)} subject(s), {self.eeg_runs} EEG and "
            f"{self.bold_runs} BOLD run(s) into {self.bids_dir} with "
            f"{len(self.repairs)} repair(s); {alone} run(s) not simultaneous "
            "(see conversion.tsv)."
        )

    def rows(self) -> list[list[str]]:
        """One row of cells per run, sorted by run."""
        return [self.runs[stem].cells() for stem in sorted(self.runs)]

    def write_tsv(self, path: Path) -> Path:
        """Write ``conversion.tsv`` (header :data:`COLUMNS`, one row per run)."""
        lines = ["\t".join(COLUMNS)] + ["\t".join(row) for row in self.rows()]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def table(self, columns: tuple[str, ...] = TABLE_COLUMNS) -> str:
        """The runs as an aligned plain-text table (for the terminal)."""
        index = [COLUMNS.index(c) for c in columns]
        rows = [list(columns)] + [[row[i] for i in index] for row in self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(columns) - 1)]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows
        )
