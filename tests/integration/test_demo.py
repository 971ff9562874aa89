"""``eegfmri demo`` end to end on the tiny simulator scale; the outputs must validate.

The demo runs once per module (:func:`demo`); the tests read its outputs. The restart test
runs both levels a second time on a copy of the simulated dataset without
``sourcedata/simulation``, killing the participant level once with SIGKILL, and compares
every derivative except the reports byte for byte.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from bids_app.cli import main
from bids_app.io.atomic import leftover_temporaries
from bids_app.io.validate import validate_derivatives

pytestmark = [pytest.mark.slow, pytest.mark.integration]

#: Fewer epochs and null samples: the tests check wiring, not model quality.
FAST_CONFIG = "[model]\nepochs = 4\npatience = 2\n[masking]\nn_null = 20\n"


def _run(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> SimpleNamespace:
    """The tiny demo, run once: its folder, exit code, printed output and config file."""
    root = tmp_path_factory.mktemp("demo")
    fast = root / "fast.toml"
    fast.write_text(FAST_CONFIG)
    out = root / "demo"
    code, printed, errors = _run(["demo", str(out), "--scale", "tiny", "-q",
                                  "--config-file", str(fast)])
    return SimpleNamespace(out=out, code=code, printed=printed, errors=errors, config=fast)


def test_demo_tiny_end_to_end(demo):
    assert "Traceback" not in demo.errors
    assert demo.code == 0, demo.printed + demo.errors
    assert "eegfmri demo finished" in demo.printed
    assert re.search(r"participant level: stages run: .*eeg", demo.printed)
    derivatives = demo.out / "derivatives"
    description = json.loads((derivatives / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert list(derivatives.glob("sub-*/**/*_desc-preproc_eeg.vhdr"))
    assert list(derivatives.glob("sub-*/**/*_desc-preproc_bold.nii.gz"))
    assert (derivatives / "sub-01.html").exists() and (derivatives / "group.html").exists()
    assert "group level: stages run: group_report, masking, models" in demo.printed
    assert leftover_temporaries(derivatives) == []
    result = validate_derivatives(derivatives)
    assert result.errors == [], "\n".join(result.summary())


def _compared(root: Path, bids: Path) -> dict[str, bytes]:
    """Every derivative file except the reports, their figures and the logs.

    The input dataset's path (``DatasetLinks`` of dataset_description.json) is replaced by
    a placeholder: the two runs read datasets in different folders by construction.
    """
    skip = ("logs/", "group/figures/")
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if (path.suffix == ".html" or rel.startswith(skip)
                or re.match(r"sub-[^/]+/figures/", rel)):
            continue
        files[rel] = path.read_bytes().replace(bids.absolute().as_uri().encode(), b"<bids>")
    return files


def test_reports_validate_against_planted_truth(demo):
    """Both reports open with findings and score the results against the planted truth."""
    for name in ("sub-01.html", "group.html"):
        html = (demo.out / "derivatives" / name).read_text()
        assert html.index('id="findings"') < html.index('id="validation"'), name
        section = html[html.index('id="validation"'):]
        section = section[:section.index("</section>")]
        assert re.search(r"\d+ of \d+ checks pass", section), name
        assert section.count("<tr>") >= 3, name  # header and at least two checks
    participant = (demo.out / "derivatives" / "sub-01.html").read_text()
    for check in ("slice harmonics down vs truth", "beat-locked residual vs truth",
                  "localisation error", "coupling recall", "coupling false-positive rate"):
        assert check in participant, check
    group = (demo.out / "derivatives" / "group.html").read_text()
    for check in ("model skill minus best baseline", "annotation recall",
                  "annotation precision"):
        assert check in group, check


#: Fixed seed of the kill time, so that a failure can be reproduced; the time itself is
#: random within the participant level (see _kill_after).
KILL_SEED = 20261125


def _participant_seconds(derivatives: Path) -> float:
    """Wall time of a participant level, from the first and last lines of its log."""
    lines = next((derivatives / "logs").glob("eegfmri-*-participant.log")).read_text(
    ).splitlines()
    first, last = (datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                   for line in (lines[0], lines[-1]))
    return (last - first).total_seconds()


def _kill_after(args: list[str], delay: float) -> None:
    """Run the CLI with ``args`` in a new process group and SIGKILL the group after ``delay``."""
    proc = subprocess.Popen([sys.executable, "-m", "bids_app", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    else:
        pytest.fail(f"the run finished before the kill at {delay:.1f} s")


def test_killed_run_without_truth_ends_with_the_demo_outputs(demo, tmp_path):
    """Without ``sourcedata/simulation``, a participant level killed with SIGKILL at a random
    time and restarted, then the group level, leave no temporary file and write every
    derivative of the demo byte for byte, the reports (the only stage that reads the
    truth), their figures and the logs aside.

    The kill is a cluster job hitting its time limit or being pre-empted: the process gets
    no chance to clean up, and the restart must still end with the uninterrupted outputs.
    """
    assert demo.code == 0
    bids = tmp_path / "bids"
    shutil.copytree(demo.out / "bids", bids,
                    ignore=lambda folder, names: ["simulation"] if Path(folder).name ==
                    "sourcedata" else [])
    assert not (bids / "sourcedata" / "simulation").exists()
    output = tmp_path / "derivatives"

    def args(level: str) -> list[str]:  # the settings the demo ran with
        return [str(bids), str(output), level, "-w", str(tmp_path / "work"),
                "--skip-bids-validation", "--config-file", str(demo.config), "--random-seed",
                "0", "--nprocs", "2", "--stimuli-dir", str(bids / "stimuli"), "-q"]

    delay = random.Random(KILL_SEED).uniform(0.3, 0.8) * _participant_seconds(
        demo.out / "derivatives")
    _kill_after(args("participant"), delay)
    for level in ("participant", "group"):
        code, printed, errors = _run(args(level))
        assert code == 0, printed + errors
        assert "Traceback" not in errors
    assert leftover_temporaries(output) == []
    with_truth = _compared(demo.out / "derivatives", demo.out / "bids")
    without = _compared(output, bids)
    assert sorted(with_truth) == sorted(without)
    differ = [rel for rel in with_truth if with_truth[rel] != without[rel]]
    assert differ == [], f"outputs differ after the kill at {delay:.1f} s: {differ}"
    assert len(with_truth) > 20
    for name in ("sub-01.html", "group.html"):  # real data: no validation section
        assert 'id="validation"' not in (output / name).read_text()


def test_demo_null_annotates_nothing(tmp_path):
    """``demo --null`` (default scale and settings, every planted link removed, recorded
    in the truth folder) annotates no EEG timestamp and no voxel (issue 17)."""
    out = tmp_path / "demo-null"
    code, printed, errors = _run(["demo", str(out), "--null", "-q"])
    assert code == 0, printed + errors
    assert "group level: stages run: group_report, masking, models" in printed
    truth = json.loads((out / "raw" / "sourcedata" / "simulation" / "simulation.json")
                       .read_text())
    assert truth["null"] is True and truth["scale"] == "demo"
    derivatives = out / "derivatives"
    events = sorted(derivatives.glob("sub-*/**/eeg/*_desc-vaemask_events.tsv"))
    voxels = sorted((derivatives / "group").glob("*_desc-vaemask_voxels.tsv"))
    assert events and voxels, "masking wrote no annotation tables"
    annotated = {p.name: len(pd.read_csv(p, sep="\t")) for p in events + voxels}
    assert sum(annotated.values()) == 0, annotated


def _annotation_table(derivatives: Path) -> pd.DataFrame:
    """The written annotations (events per run, voxel table) as ``score_annotations``
    reads them: one row per annotated EEG timestamp or voxel."""
    rows = []
    sfreq = json.loads((derivatives / "group" / "models" / "vae1.json").read_text()
                       )["Data"]["eeg_sfreq"]
    for tsv in sorted(derivatives.glob("sub-*/**/eeg/*_desc-vaemask_events.tsv")):
        ents = dict(p.split("-", 1) for p in tsv.name.split("_") if "-" in p)
        run = "/".join(ents.get(k, "n/a") for k in ("sub", "ses", "task", "run"))
        for _, e in pd.read_csv(tsv, sep="\t").iterrows():
            n = max(1, int(round(e["duration"] * sfreq)))
            rows += [{"unit_kind": "eeg", "features": e["features"], "run": run,
                      "time_s": t} for t in e["onset"] + np.arange(n) / sfreq]
    for tsv in sorted((derivatives / "group").glob("*_desc-vaemask_voxels.tsv")):
        rows += [{"unit_kind": "fmri", "features": v["features"], "x": v["x"], "y": v["y"],
                  "z": v["z"]} for _, v in pd.read_csv(tsv, sep="\t").iterrows()]
    return pd.DataFrame(rows, columns=["unit_kind", "features", "run", "time_s", "x", "y",
                                       "z"])


@pytest.fixture(scope="module")
def default_demo(tmp_path_factory) -> Path:
    """``eegfmri demo`` at its default scale and settings, run once."""
    out = tmp_path_factory.mktemp("default") / "demo"
    code, printed, errors = _run(["demo", str(out), "-q"])
    assert code == 0, printed + errors
    return out


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="issue 17 item 1 blocked: "
                   "the default demo annotates no unit; its held-out windows cannot support "
                   "the VAE-2 stimulus tests under the valid null (matched-unit bound, "
                   "test_demo_matched_unit_bound_blocks_annotation; docs/benchmarks.md)")
def test_demo_finds_every_planted_link(default_demo):
    """Issue 17's claim on ``eegfmri demo`` (default scale and settings): at least one
    annotated unit per planted (feature, source) link and >= 80 % of annotated units
    planted, scored against the truth folder."""
    from bids_app.workflows.validation_group import (
        PRECISION,
        UNITS_PER_LINK,
        annotation_precision,
        load_planted_truth,
        score_annotations,
    )

    truth = load_planted_truth(default_demo / "raw" / "sourcedata" / "simulation")
    table = _annotation_table(default_demo / "derivatives")
    links = score_annotations(table, truth)
    assert len(links) == 3
    assert (links["eeg_units"] + links["voxels"] >= UNITS_PER_LINK).all(), links
    assert annotation_precision(table, truth)["precision"] >= PRECISION


def test_demo_matched_unit_bound_blocks_annotation(default_demo):
    """What docs/benchmarks.md says blocks issue 17's item 1, read from the demo's own
    sidecar: a voxel tracking luminance or the checkerboard exactly would need more
    equally strong voxel x feature pairs than there are voxels before Benjamini-Hochberg
    declares any, and an EEG timestamp tracking the fMRI exactly in VAE-1 more than half
    of all timestamps; the report's findings say so. Voxels do move VAE-1's EEG prediction
    (default ``cross_experts = "eeg,fmri"``), so VAE-2 is what blocks them."""
    derivatives = default_demo / "derivatives"
    power = json.loads((derivatives / "group" / "desc-vaemask_effects.json").read_text()
                       )["Power"]["Heads"]
    effects = pd.read_csv(derivatives / "group" / "desc-vaemask_effects.tsv", sep="\t",
                          usecols=["unit_kind", "unit", "model", "head"])
    units = effects.groupby(["unit_kind", "model", "head"])["unit"].nunique()
    for feature in ("luminance", "checker"):
        needed = power["fmri/vae2/stimulus"]["pairs_needed"][feature]
        assert needed > units["fmri", "vae2", "stimulus"], (feature, needed)
    needed = power["eeg/vae1/cross"]["pairs_needed"]["fmri"]
    assert needed > units["eeg", "vae1", "cross"] / 2, needed
    group = (derivatives / "group.html").read_text()
    assert "even a voxel whose masking tracked a stimulus feature exactly" in group
    # with the default cross_experts = "eeg,fmri" a masked voxel moves VAE-1's EEG prediction
    assert "Masking voxels leaves VAE-1" not in group
    cross = pd.read_csv(derivatives / "group" / "desc-vaemask_effects.tsv", sep="\t").query(
        "unit_kind == 'fmri' and model == 'vae1' and head == 'cross'")
    assert (cross["effect"] != 0).mean() > 0.5
