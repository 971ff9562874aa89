"""Report stages: validation against the planted truth (simulated inputs), then the HTML.

These are the participant and group ``report`` stages. When the input dataset carries
``sourcedata/simulation/`` they score the pipeline's results against the planted truth
(:mod:`bids_app.workflows.validation`, :mod:`bids_app.workflows.validation_group`) and
hand the table to the report renderers; nothing else reads the truth, so every other
derivative is the same with and without it. A validation that fails to compute is logged
and the report is written without that section's rows (a note says why).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _safe(func: Any, *args: Any, **kwargs: Any) -> tuple[list, str]:
    try:
        return func(*args, **kwargs), ""
    except Exception as err:  # noqa: BLE001 - the report is written without validation
        logger.warning("Validation against planted truth failed (%s: %s); the report "
                       "leaves it out.", type(err).__name__, err)
        return [], f"Validation failed: {type(err).__name__}: {err}"


def write_participant_reports(subject: str, outcomes: list[Any], config: Any,
                              writer: Any) -> Path:
    """Participant report stage: validation (simulated input only), then ``sub-XX.html``.

    The findings name the region of each coupled cluster's peak with the masking atlas
    (:func:`bids_app.masking.atlas.atlas_labels`).

    Parameters
    ----------
    subject : str
        Subject label.
    outcomes : list of RunOutcome
        The subject's runs.
    config : Config
        Resolved configuration (``execution.bids_dir`` locates the truth).
    writer : DerivativesWriter
        Output writer.

    Returns
    -------
    Path
        The HTML report.
    """
    from bids_app.masking.atlas import atlas_labels
    from bids_app.report.participant import write_participant_report
    from bids_app.workflows.validation import truth_folder, validate_participant

    bids_dir = config.execution.bids_dir
    rows, note = _safe(validate_participant, outcomes, bids_dir, config)
    simulated = truth_folder(bids_dir) is not None
    return write_participant_report(subject, outcomes, config, writer,
                                    validation=rows if simulated else None,
                                    validation_note=note, regions=atlas_labels)


def write_group_reports(models: Any, masking: Any, config: Any, writer: Any) -> Path:
    """Group report stage: validation (simulated input only), then ``group.html``.

    Parameters
    ----------
    models : ModelsResult | None
        Group models.
    masking : MaskingResult | None
        Masking results.
    config : Config
        Resolved configuration.
    writer : DerivativesWriter
        Output writer.

    Returns
    -------
    Path
        The HTML report.
    """
    from bids_app.report.group import write_group_report
    from bids_app.workflows.validation import truth_folder
    from bids_app.workflows.validation_group import validate_group

    bids_dir = config.execution.bids_dir
    rows, note = _safe(validate_group, models, masking, bids_dir)
    simulated = truth_folder(bids_dir) is not None
    return write_group_report(models, masking, config, writer,
                              validation=rows if simulated else None, validation_note=note)
