"""``eegfmri demo``: simulate a small NATVIEW-like release and run the whole application.

simulate (NATVIEW layout) -> convert to BIDS -> validate -> participant level -> group
level, then print where the outputs and reports are, which stages ran, and the time.
The steps are resumable: an existing simulated release or BIDS dataset in ``out`` is
reused.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from bids_app.config import load_config
from bids_app.errors import InputError
from bids_app.workflows.participant import Failure, LevelResult

logger = logging.getLogger(__name__)


def _summary(name: str, result) -> list[str]:
    lines = [f"{name} level: stages run: {', '.join(sorted(result.stages_run)) or 'none'}"]
    if result.stages_unavailable:
        lines.append(f"  not available (not run): {', '.join(sorted(result.stages_unavailable))}")
    for failure in result.failures:
        where = f" (traceback: {failure.crash_file})" if failure.crash_file else ""
        lines.append(f"  FAILED {failure.stage}: {failure.message}{where}")
    for report in result.reports:
        lines.append(f"  report: {report}")
    return lines


def _check_reuse(raw_dir: Path, *, scale: str, seed: int, null: bool, realism: str) -> None:
    """Refuse to reuse a simulated release made with another scale, seed, null flag or
    realism."""
    record = raw_dir / "sourcedata" / "simulation" / "simulation.json"
    if not record.is_file():
        return
    made = json.loads(record.read_text())
    real = record.with_name("realism.json")
    made["realism"] = json.loads(real.read_text()).get("name") if real.is_file() else "ideal"
    wanted = {"scale": scale, "seed": seed, "null": null, "realism": realism}
    differ = {k: made.get(k) for k, v in wanted.items() if made.get(k) != v}
    if differ:
        raise InputError(
            f"{record} records a release simulated with {differ}, not {wanted}: choose "
            "another demo folder (or delete it) to simulate the requested one.")


def run_demo(out: Path | str, *, scale: str = "demo", verbosity: int = 0, seed: int = 0,
             null: bool = False, config_file: Path | None = None,
             realism: str = "ideal") -> int:
    """Simulate, convert, validate and run both levels; print a summary.

    Parameters
    ----------
    out : Path | str
        Folder that receives ``raw/`` (simulated release), ``bids/`` (converted dataset),
        ``derivatives/`` (eegfmri outputs) and ``work/``.
    scale : str
        Simulator scale: ``"tiny"`` or ``"demo"``.
    verbosity : int
        ``-v`` count minus ``-q`` count.
    seed : int
        Seed of the simulation and of the run.
    null : bool
        Simulate with every planted link removed (feature -> source and source -> BOLD;
        recorded as ``"null": true`` in ``sourcedata/simulation/simulation.json``): a
        correct pipeline annotates nothing.
    config_file : Path | None
        TOML settings for the run (``--config-file``); execution paths are the demo's.
    realism : {"ideal", "hard"}
        Realism of the simulation (:mod:`bids_app.simulate.realism`; what
        ``benchmarks/validity.py --checks group`` runs the demo on).

    Returns
    -------
    int
        Exit code: 0 when every stage that ran succeeded, else 1.
    """
    from bids_app.io.validate import validate_bids_dir
    from bids_app.natview.convert import convert_natview
    from bids_app.simulate.dataset import simulate_dataset
    from bids_app.utils import logging_to
    from bids_app.workflows.run import check_paths, execute

    start = time.perf_counter()
    out = Path(out).absolute()
    raw_dir, bids_dir = out / "raw", out / "bids"
    output_dir, work_dir = out / "derivatives", out / "work"
    with logging_to(None, verbosity):
        _check_reuse(raw_dir, scale=scale, seed=seed, null=null, realism=realism)
        if not raw_dir.exists():
            logger.info("Simulating a %s-scale NATVIEW-like release in %s", scale, raw_dir)
            raw_dir = Path(simulate_dataset(raw_dir, scale=scale, layout="natview", null=null,
                                            seed=seed, realism=realism))
        if not (bids_dir / "dataset_description.json").exists():
            logger.info("Converting %s to BIDS in %s", raw_dir, bids_dir)
            logger.info("%s", convert_natview(raw_dir, bids_dir))
        logger.info("Validating %s", bids_dir)
        validate_bids_dir(bids_dir)
    stimuli = next((d for d in (bids_dir / "stimuli", raw_dir / "stimuli") if d.is_dir()), None)
    config = load_config(config_file)
    config = config.replace(
        "execution", bids_dir=bids_dir, output_dir=output_dir, work_dir=work_dir,
        random_seed=seed, verbosity=verbosity, skip_bids_validation=True,
        stimuli_dir=stimuli,
        # one process per simulated subject, as a cluster would run the participant level
        nprocs=max(config.execution.nprocs, min(2, os.cpu_count() or 1)),
    )
    check_paths(config)
    participant = execute(config)
    try:
        group = execute(config.replace("execution", analysis_level="group"))
    except InputError as err:  # e.g. no participant outputs because no stage ran
        group = LevelResult(failures=[Failure("group", str(err))])
    lines = [
        f"eegfmri demo finished in {time.perf_counter() - start:.0f} s.",
        f"  simulated release: {raw_dir}",
        f"  BIDS dataset:      {bids_dir}",
        f"  outputs:           {output_dir} (logs in {output_dir / 'logs'})",
        *_summary("participant", participant),
        *_summary("group", group),
    ]
    print("\n".join(lines))
    return max(participant.exit_code, group.exit_code)
