"""docs/validity.md and .json tell the same story, and a reduced validity run holds the claims.

The full ``python benchmarks/validity.py`` takes about 20-45 min; CI runs its artifact
checks on hard-mode data at the size the claims are made for (30 volumes, 16 scored
channels), in about 1-3 min. The group rows (a whole demo per realism) are read from the
JSON: each claim is asserted on the measured number, and a claim the measurement fails is
a strict xfail whose reason gives the number.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


@pytest.fixture(scope="module")
def validity():
    """The benchmark module (benchmarks/ is a folder of scripts, not a package)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        yield importlib.import_module("validity")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_validity_markdown_is_written_from_the_json(validity):
    """docs/validity.md is exactly what the benchmark writes from docs/validity.json."""
    result = json.loads((DOCS / "validity.json").read_text())
    rows = [{k: v for k, v in r.items() if k != "claim_holds"} for r in result["rows"]]
    assert (DOCS / "validity.md").read_text() == validity.markdown(rows, result["meta"]), (
        "docs/validity.md is out of date: rerun python benchmarks/validity.py")
    for row in result["rows"]:
        assert row["claim_holds"] == validity._holds(row, rows), row


def test_validity_json_covers_every_check_on_both_realisms():
    """Every check of issue 16 has rows on ideal and hard data, eegfmri beside a baseline."""
    result = json.loads((DOCS / "validity.json").read_text())
    seen: dict[str, set] = {}
    for row in result["rows"]:
        family = row["check"].split(",")[0].split(" (")[0]
        seen.setdefault(family, set()).add((row["realism"], row["method"].startswith("eegfmri")))
    for family in ("gradient", "BCG", "coupling recall", "coupling null"):
        assert {("ideal", True), ("hard", True), ("ideal", False), ("hard", False)} <= seen[
            family], family
    assert any(f.startswith("localisation") for f in seen)
    assert any(f.startswith("bad channels") for f in seen)
    for family in ("group: VAE-1 held out", "group: VAE-2 held out", "group: masking"):
        assert {("ideal", True), ("hard", True), ("ideal", False), ("hard", False)} <= seen[
            family], family
    assert {("ideal", True), ("hard", True)} <= seen["group: annotations"]


def test_documented_artifact_claims_hold_in_the_json():
    """The gradient and BCG claims of docs/methods.md hold on ideal and hard data."""
    result = json.loads((DOCS / "validity.json").read_text())
    checked = [r for r in result["rows"] if r["method"] == "eegfmri"
               and (r["check"].startswith("gradient") or r["check"] == "BCG")]
    assert len(checked) == 16
    assert all(r["claim_holds"] == "yes" for r in checked), [
        (r["check"], r["metric"], r["realism"], r["value"]) for r in checked
        if r["claim_holds"] != "yes"]


def test_reduced_validity_run_holds_the_artifact_claims(validity, tmp_path):
    """CI's reduced run: hard-mode gradient and BCG claims, eegfmri beside MNE's baselines."""
    result = validity.main(["--checks", "artifacts", "--realisms", "hard", "--volumes", "30",
                            "--channels", "16", "--output-dir", str(tmp_path)])
    assert (tmp_path / "validity.md").exists() and (tmp_path / "validity.json").exists()
    ours = [r for r in result["rows"] if r["method"] == "eegfmri"]
    assert {r["realism"] for r in result["rows"]} == {"hard"}
    assert len(ours) == 8 and len(result["rows"]) == 16
    assert all(r["claim_holds"] == "yes" for r in ours), [
        (r["check"], r["metric"], r["value"]) for r in ours if r["claim_holds"] != "yes"]


#: Group claims the measurement fails (docs/validity.md, benchmarks/validity_group.py):
#: (metric, realism) -> measured value (None: nothing annotated).
#: Measured 2026-12-06 (``--checks coupling group``, coupling first in the same process;
#: demo seed 0; hard data with the film-like stimulus and spatially smooth BOLD noise).
#: The group rows depend on what the benchmark process ran before the demos (ideal VAE-2
#: r 0.604 with ``--checks group`` alone, 0.500 after the coupling rows; see
#: docs/benchmarks.md): the demo annotates nothing (issue 17), no masking head ranks
#: planted units near 0.95, VAE-2's stimulus r does not beat the ridge, and VAE-1's
#: fMRI-from-EEG r (ideal) and explained variance (hard) do not beat every baseline.
_GROUP_FAILS: dict[tuple[str, str], float | None] = {
    **{(metric, realism): value
       for realism, values in (
           ("ideal", (0.4999, 0.4758, 0.6898, 0.3355, 0.7395, 0.0, 0.0, 0.0, None)),
           ("hard", (0.1323, 0.5609, 0.7014, 0.1913, 0.5162, 0.0, 0.0, 0.0, None)))
       for metric, value in zip((
           "mean r over stimulus features",
           "AUROC planted vs other units, eeg/vae1/cross",
           "AUROC planted vs other units, eeg/vae2/stimulus",
           "AUROC planted vs other units, fmri/vae1/cross",
           "AUROC planted vs other units, fmri/vae2/stimulus",
           "units annotated, checker -> ssvep_v1", "units annotated, luminance -> luminance_lo",
           "units annotated, motion -> motion_mt",
           "annotation precision (planted / annotated units)"), values)},
    ("mean voxel r, fMRI from EEG alone", "ideal"): 0.0887,
    ("fMRI explained variance from EEG alone", "hard"): 0.0001,
}


#: validity_group.CLAIMS, as written (the benchmark module is imported by the fixture).
_GROUP_CLAIMS = {"AUROC planted vs other units": (">=", 0.95), "units annotated": (">=", 1),
                 "annotation precision": (">=", 0.8)}


def _group_claim_rows() -> list[dict]:
    result = json.loads((DOCS / "validity.json").read_text())
    return [r for r in result["rows"] if r["check"].startswith("group")
            and r["method"] == "eegfmri" and r["claim_holds"]]


def _group_case(row: dict):
    key = (row["metric"], row["realism"])
    marks = ()
    if key in _GROUP_FAILS:
        measured = _GROUP_FAILS[key]
        claim = ("above every baseline" if row["check"].startswith("group: VAE") else
                 " ".join(map(str, _GROUP_CLAIMS[next(
                     p for p in _GROUP_CLAIMS if row["metric"].startswith(p))])))
        marks = pytest.mark.xfail(strict=True, reason=(
            f"{row['check']}: {row['metric']} on {row['realism']} data fails its claim "
            f"({claim}): measured {'n/a (nothing annotated)' if measured is None else measured}"
            " (docs/validity.md)"))
    return pytest.param(row["check"], *key, marks=marks, id=f"{row['realism']}-{row['metric']}")


def _group_bound(validity, check: str, metric: str, realism: str, rows: list[dict]):
    """What the row's value must reach: above every baseline (models) or the claim's bound."""
    if check.startswith("group: VAE"):
        base = [r["value"] for r in rows if (r["check"], r["metric"], r["realism"]) == (
            check, metric, realism) and r["method"] != "eegfmri"]
        assert base and None not in base, (check, metric, realism)
        return ">", max(base)
    return next(c for prefix, c in validity.GROUP_CLAIMS.items() if metric.startswith(prefix))


def test_group_rows_cover_every_claim(validity):
    """Both realisms: 3 model claims, 4 masking heads, every planted link, precision; and
    every listed failure is a row of the JSON."""
    rows = _group_claim_rows()
    for realism in ("ideal", "hard"):
        mine = [r for r in rows if r["realism"] == realism]
        assert sum(r["check"].startswith("group: VAE") for r in mine) == 3, realism
        assert sum(r["check"] == "group: masking" for r in mine) == 4, realism
        links = [r for r in mine if r["metric"].startswith("units annotated")]
        assert len(links) == 3, realism
        assert sum(r["metric"].startswith("annotation precision") for r in mine) == 1
    assert validity.GROUP_CLAIMS == _GROUP_CLAIMS
    keys = {(r["metric"], r["realism"]) for r in rows}
    assert set(_GROUP_FAILS) <= keys, set(_GROUP_FAILS) - keys
    for row in rows:
        key = (row["metric"], row["realism"])
        assert (row["claim_holds"] == "no") == (key in _GROUP_FAILS), row
        if key in _GROUP_FAILS:
            assert row["value"] == _GROUP_FAILS[key], (row, _GROUP_FAILS[key])


@pytest.mark.parametrize("check, metric, realism", [_group_case(r) for r in _group_claim_rows()])
def test_group_claims_hold_on_pipeline_windows(validity, check, metric, realism):
    """Issue 16 item 3: the model, masking and annotation claims on windows the pipeline
    built from simulated recordings (``eegfmri demo``, ideal and hard)."""
    rows = json.loads((DOCS / "validity.json").read_text())["rows"]
    row = next(r for r in rows if (r["check"], r["metric"], r["realism"], r["method"]) == (
        check, metric, realism, "eegfmri"))
    op, bound = _group_bound(validity, check, metric, realism, rows)
    value = row["value"]
    assert value is not None, f"{metric}: n/a (nothing annotated)"
    assert value > bound if op == ">" else value >= bound, (metric, realism, value, op, bound)
