"""Light but real group stages for resume tests, run by ``python light_group.py ARGS``.

``models`` reads every participant ``desc-preproc`` EEG file and fits a small seeded
"model" to its bytes; ``masking`` writes one annotation file back into each run's
folder and a group table, pausing between files so that a kill can land in the middle;
``report`` writes ``group.html`` from both results. Every call appends the stage's name
to the file named by ``LIGHT_CALLS`` so a test can see what ran again after a resume.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

PAUSE_S = float(os.environ.get("LIGHT_PAUSE_S", "0.75"))


def _called(name: str) -> None:
    with open(os.environ["LIGHT_CALLS"], "a") as stream:
        stream.write(name + "\n")


def models(output_dir, config, writer):
    """A seeded projection of every participant EEG file's bytes (deterministic)."""
    _called("models")
    files = sorted(Path(output_dir).glob("sub-*/**/*_desc-preproc_eeg.eeg"))
    data = [np.frombuffer(p.read_bytes()[:4096], np.uint8).astype(float) for p in files]
    rng = np.random.default_rng(config.execution.random_seed)
    weights = rng.normal(size=4096)
    scores = {p.name: float(np.dot(d, weights[: d.size])) for p, d in zip(files, data)}
    time.sleep(PAUSE_S)
    writer.write_json(Path("group") / "models" / "light.json", {"scores": scores})
    return {"scores": scores, "runs": [p.relative_to(output_dir).as_posix() for p in files]}


def masking(result, config, writer):
    """One annotation file per run, written one after another with a pause."""
    _called("masking")
    paths = []
    for rel, score in zip(result["runs"], result["scores"].values()):
        name = Path(rel).name.replace("_desc-preproc_eeg.eeg", "_desc-vaemask_events.tsv")
        text = f"onset\tduration\tscore\n0.0\t1.0\t{score:.6f}\n"
        paths.append(writer.write_bytes(Path(rel).parent / name, text.encode()))
        time.sleep(PAUSE_S)
    writer.write_bytes(Path("group") / "masking.tsv", "".join(
        f"{p.name}\n" for p in paths).encode())
    return {"annotated": [p.name for p in paths]}


def report(models_result, masking_result, config, writer):
    """``group.html`` listing what the two stages produced."""
    _called("report")
    body = f"{sorted(models_result['scores'])}\n{masking_result}\n"
    return writer.write_bytes("group.html", body.encode())


if __name__ == "__main__":
    from bids_app.cli import main
    from bids_app.workflows import group

    group.STAGES.update(models=models, masking=masking, group_report=report)
    sys.exit(main(sys.argv[1:]))
