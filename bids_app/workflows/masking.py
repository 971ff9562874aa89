"""Group masking: occlude every EEG timestamp and voxel in both VAEs, write annotations.

Reads the :class:`~bids_app.workflows.models.ModelsResult` (windows and trained models),
runs :func:`bids_app.masking.occlusion_effects` for EEG timestamps and voxels in VAE-1 and
VAE-2, and writes, through the derivatives writer:

* per run ``eeg/…_desc-vaemask_events.tsv`` (+ JSON): annotated EEG segments,
* ``group/space-MNI152NLin2009cAsym_desc-vaemask_stat-{effect,q}_statmap.nii.gz``,
* ``group/desc-vaemask_voxels.tsv``: annotated voxels with MNI coordinates,
* ``group/desc-vaemask_effects.{tsv,parquet}``: every (unit, feature, model) effect.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_app.masking import MaskingData, occlusion_effects
from bids_app.masking.annotate import (
    EFFECT_COLUMNS,
    EVENT_COLUMNS,
    VOXEL_COLUMNS,
    annotate_units,
    effects_table,
    events_table,
    iter_effects,
    voxel_maps,
    voxel_table,
)
from bids_app.masking.atlas import ATLAS_NAME, ATLAS_REFERENCE
from bids_app.masking.power import power_summary
from bids_app.masking.shards import CellRunner
from bids_app.masking.statistics import HeadEffects

logger = logging.getLogger(__name__)
SPACE = "MNI152NLin2009cAsym"


@dataclass
class MaskingResult:
    """Outcome of :func:`run_masking_workflow`.

    Attributes
    ----------
    effects : list of HeadEffects
        Every (unit kind, model, head) result.
    annotations : dict of str to pandas.DataFrame
        Annotated units per kind (``"eeg"``, ``"fmri"``), with run and time (EEG) or MNI
        coordinates (voxels).
    timestamps : pandas.DataFrame
        One row per EEG timestamp unit: ``unit``, ``run`` (label), ``time_s``.
    summary : dict
        Counts per head: tests, q < level, expected false discoveries.
    paths : dict of str to Path
        Written files.
    """

    effects: list[HeadEffects]
    annotations: dict[str, pd.DataFrame]
    timestamps: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)

    def head(self, kind: str, model: str, head: str) -> HeadEffects | None:
        """The effects of one unit kind, model and head (None when not computed)."""
        for e in self.effects:
            if (e.kind, e.model, e.head) == (kind, model, head):
                return e
        return None


def _voxel_neighbors(ijk: np.ndarray) -> np.ndarray:
    """Indices of the 6-connected neighbours of each voxel inside the mask (-1 pads)."""
    lookup = {tuple(v): i for i, v in enumerate(map(tuple, ijk))}
    steps = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
    out = np.full((len(ijk), 6), -1, dtype=np.int64)
    for i, v in enumerate(ijk):
        for k, s in enumerate(steps):
            out[i, k] = lookup.get(tuple(v + s), -1)
    return out


def masking_data(windows: Any, index: np.ndarray, *, partial_stimulus: bool = True
                 ) -> tuple[MaskingData, pd.DataFrame]:
    """Arrays of the selected windows and the table of their absolute EEG timestamps.

    Parameters
    ----------
    windows : WindowSet
        All group windows.
    index : numpy.ndarray
        Windows to mask.
    partial_stimulus : bool
        Test each stimulus feature on the windows where it is defined (else only features
        defined in every window), see :func:`_observed_stimulus`.

    Returns
    -------
    data : MaskingData
        Windows with timestamp ids shared by overlapping windows of a run.
    timestamps : pandas.DataFrame
        ``unit``, ``run`` (``sub/ses/task/run`` label) and ``time_s`` of every id.
    """
    index = np.sort(np.asarray(index, dtype=np.int64))
    n_t = windows.eeg.shape[2]
    labels = windows.run_labels()[index]
    run_names, run_codes = np.unique(labels, return_inverse=True)
    times = windows.times(index[:, None], np.arange(n_t)[None])
    samples = np.rint(times * windows.sfreq).astype(np.int64)
    key = run_codes[:, None].astype(np.int64) * (1 << 40) + (samples - samples.min())
    uniq, first, inverse = np.unique(key.ravel(), return_index=True, return_inverse=True)
    stim = (np.zeros((len(index), 0), np.float32) if windows.stimulus is None
            else _observed_stimulus(windows.stimulus[index], list(windows.feature_names),
                                    partial=partial_stimulus))
    data = MaskingData(
        x_eeg=np.asarray(windows.eeg[index], dtype=np.float32),
        x_fmri=np.asarray(windows.fmri[index], dtype=np.float32),
        stimulus=stim, eeg_units=inverse.reshape(len(index), n_t), window_runs=run_codes,
        voxel_neighbors=_voxel_neighbors(np.asarray(windows.voxel_indices)))
    table = pd.DataFrame({"unit": np.arange(len(uniq)),
                          "run": run_names[run_codes[first // n_t]],
                          "time_s": times.ravel()[first]})
    return data, table


def _select_windows(models: Any, config: Any) -> np.ndarray:
    """Held-out windows to mask (all windows when there are none, or ``windows="all"``).

    With VAE-2, windows without any observed stimulus feature are dropped (VAE-2 was not
    trained or tested on them); features unobserved in some selected windows are left
    out of the stimulus tests by :func:`_observed_stimulus`.
    """
    n = len(models.windows)
    which = config.masking.windows
    idx = np.arange(n)
    if which == "test":
        splits = models.stimulus_splits if models.vae2 is not None else models.splits
        test = np.asarray((splits or {}).get("test", []), dtype=np.int64)
        if test.size:
            idx = test
        else:
            logger.warning("no held-out windows; masking all windows (tests may be liberal)")
    if models.vae2 is not None and models.windows.stimulus is not None:
        observed = np.isfinite(np.asarray(models.windows.stimulus[idx])).any(axis=1)
        idx = idx[observed]
    return idx


def _observed_stimulus(stimulus: np.ndarray, names: list[str], *, partial: bool = True
                       ) -> np.ndarray:
    """Stimulus targets of the masked windows, NaN where a feature is undefined.

    With ``partial`` (Gaussian p-values), each feature is tested on the windows where it is
    defined (e.g. movie features on the held-out movie runs, the checkerboard on the
    checkerboard runs); without it (permutation p-values), a feature not observed in every
    window is set to NaN everywhere and left untested. NaN p-values are left out of the FDR
    and of the annotations.
    """
    stimulus = np.array(stimulus, dtype=np.float32)
    observed = np.isfinite(stimulus)
    keep = observed.any(axis=0) if partial else observed.all(axis=0)
    stimulus[:, ~keep] = np.nan
    if len(names) == stimulus.shape[1]:
        counts = observed.sum(axis=0)
        tested = [f"{n} ({c} windows)" for n, c, k in zip(names, counts, keep) if k]
        logger.info("masking: stimulus features tested: %s; untested: %s",
                    ", ".join(tested) or "none",
                    ", ".join(np.asarray(names)[~keep]) or "none")
    return stimulus


def _write_parquet(effects: list[HeadEffects], tsv: Path, writer: Any,
                   query: str | None) -> Path:
    """Effects (rows matching ``query``) as ``.parquet`` beside ``tsv``, block by block."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tsv.with_suffix(".parquet")
    with writer.atomic_path(out) as tmp:
        pq_writer = None
        schema = None
        for frame in iter_effects(effects):
            frame = frame if query is None else frame.query(query)
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if schema is None:  # one schema for every block (dictionary-encoded strings)
                schema = pa.schema([f.with_type(pa.dictionary(pa.int32(), pa.string()))
                                    if pa.types.is_dictionary(f.type) else f
                                    for f in table.schema]).remove_metadata()
                pq_writer = pq.ParquetWriter(tmp, schema)
            pq_writer.write_table(table.cast(schema))
        if pq_writer is None:
            pd.DataFrame(columns=list(EFFECT_COLUMNS)).to_parquet(tmp, index=False)
        else:
            pq_writer.close()
    return out


def _res_label(affine: np.ndarray) -> str | None:
    """``res-`` label of the windows' voxel grid (None when voxels are not isotropic)."""
    from bids_app.models.resample import resolution_label

    zooms = np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))
    return resolution_label(round(float(zooms[0]), 3)) if np.ptp(zooms) < 1e-3 else None


def _entities(run_label: str) -> dict[str, str]:
    sub, ses, task, run = run_label.split("/", 3)
    ok = [(k, v) for k, v in (("sub", sub), ("ses", ses), ("task", task), ("run", run))
          if v not in ("", "None", "nan", "n/a")]
    return dict(ok)


def masking_effects(models: Any, config: Any, cells: CellRunner | None = None
                    ) -> tuple[list[HeadEffects], pd.DataFrame] | None:
    """Occlusion effects of every EEG timestamp and voxel in both VAEs.

    Parameters
    ----------
    models : ModelsResult
        Windows and trained models of the group level.
    config : Config
        Resolved configuration (section ``masking``; ``execution.device`` and seed).
    cells : CellRunner | None
        Work cells (stored shard parts, or a shard's own cells); None: every cell here.

    Returns
    -------
    tuple | None
        The effects and the table of EEG timestamp units; None (masking skipped, with a
        warning) when no window qualifies.
    """
    cfg = config.masking
    windows = models.windows
    index = _select_windows(models, config)
    if index.size == 0:
        logger.warning("masking skipped: no window to mask (masking.windows = %r; with "
                       "VAE-2 a window needs an observed stimulus feature).", cfg.windows)
        return None
    if cells is None:
        cells = CellRunner(config.execution.random_seed, cfg.cell_units)
    data, stamps = masking_data(windows, index, partial_stimulus=cfg.pvalue == "gaussian")
    names = {"cross_eeg": [f"voxel-{v}" for v in range(data.x_fmri.shape[1])],
             "cross_fmri": [f"eegtime-{t}" for t in range(data.x_eeg.shape[2])]}
    effects: list[HeadEffects] = []
    for kind in ("eeg", "fmri"):
        for model in (models.vae1, models.vae2):
            if model is None:
                continue
            out_names = {"cross_outputs": names[f"cross_{kind}"]}
            if hasattr(model, "decode_stimulus"):
                out_names["stimulus"] = list(windows.feature_names)
            effects += occlusion_effects(
                model, data, kind=kind, baseline=cfg.baseline, measure=cfg.measure,
                n_null=cfg.n_null, n_boot=cfg.n_boot, batch_size=cfg.batch_size,
                context=cfg.context, pvalue=cfg.pvalue, device=config.execution.device,
                seed=config.execution.random_seed, output_names=out_names,
                cross_outputs=cfg.cross_outputs, alpha=cfg.fdr_q, cells=cells)
    return effects, stamps


def run_masking_workflow(models: Any, config: Any, writer: Any,
                         cells: CellRunner | None = None) -> MaskingResult | None:
    """Mask every EEG timestamp and voxel in both VAEs and write the annotations.

    Parameters
    ----------
    models : ModelsResult
        Windows and trained models of the group level.
    config : Config
        Resolved configuration (section ``masking``; ``execution.device`` and seed).
    writer : DerivativesWriter
        Writer of all outputs.
    cells : CellRunner | None
        Work cells with the merged shard parts (see
        :mod:`bids_app.workflows.masking_shards`); None: every cell computed here.

    Returns
    -------
    MaskingResult | None
        Effects, annotations, summary counts and written paths; None (masking skipped,
        with a warning) when no window qualifies.
    """
    cfg = config.masking
    windows = models.windows
    computed = masking_effects(models, config, cells)
    if computed is None:
        return None
    effects, stamps = computed
    result = MaskingResult(effects, {}, stamps)
    for kind in ("eeg", "fmri"):
        cross, stim = result.head(kind, "vae1", "cross"), result.head(kind, "vae2", "stimulus")
        if cross is None or stim is None:
            result.annotations[kind] = pd.DataFrame()
            continue
        ann = annotate_units(cross, stim, result.head(kind, "vae1", "cross_outputs"),
                             alpha=cfg.fdr_q)
        if kind == "eeg":
            ann = ann.merge(stamps, on="unit", how="left")
        result.annotations[kind] = ann
    result.summary = {f"{e.kind}/{e.model}/{e.head}": {
        "tests": int(np.isfinite(e.p).sum()),
        "significant": int(np.sum(e.q < cfg.fdr_q)),
        "nominal_p_below_level": int(np.sum(e.p < cfg.fdr_q)),
        "expected_under_null": float(cfg.fdr_q * np.isfinite(e.p).sum()),
        **({} if e.matched_p is None else {"power": power_summary(
            e.matched_p, e.outputs, int(np.isfinite(e.p).sum()), cfg.fdr_q)}),
    } for e in effects}
    result.summary["annotated"] = {k: int(len(v)) for k, v in result.annotations.items()}
    _write(result, windows, config, writer)
    return result


def _write(result: MaskingResult, windows: Any, config: Any, writer: Any) -> None:
    cfg = config.masking
    method = {"Baseline": cfg.baseline, "Measure": cfg.measure, "Context": cfg.context,
              "NullDraws": cfg.n_null, "FDRLevel": cfg.fdr_q, "Method": "occlusion of "
              "EEG timestamps and voxels in VAE-1 and VAE-2, see docs/methods.md#masking"}
    # a table of every EEG timestamp x voxel pair would hold tens of millions of rows:
    # by default keep every unit's whole-output, latent and stimulus effects and the
    # significant per-output cross effects
    if cfg.effects_rows not in ("significant", "all"):
        raise ValueError(f"[masking] effects_rows must be 'significant' or 'all', got "
                         f"{cfg.effects_rows!r}.")
    query = (None if cfg.effects_rows == "all" else
             f"head != 'cross_outputs' or q < {cfg.fdr_q!r}")
    rows = ("every unit x output" if query is None else "cross, latent and stimulus heads: "
            "every unit x output; cross_outputs head: rows with q < FDRLevel")
    table = effects_table(result.effects, query=query)
    path = writer.build_path({"desc": "vaemask"}, "effects", ".tsv")
    power = {k: v["power"] for k, v in result.summary.items() if "power" in v}
    result.paths["effects"] = writer.write_tsv(path, table, columns=EFFECT_COLUMNS, sidecar={
        **method, "TableRows": rows, "Power": {
            "Description": "Per head (unit kind/model/head): the p-value a unit whose changes "
            "track each output's observed series exactly would get on these windows "
            "(matched_p), how many such unit x output pairs Benjamini-Hochberg needs before "
            "declaring any (pairs_needed), and the outputs where even that unit has "
            "p > FDRLevel (out_of_reach), see docs/methods.md#masking-power",
            "Heads": power}})
    result.paths["effects_parquet"] = _write_parquet(result.effects, path, writer, query)
    eeg_ann = result.annotations.get("eeg", pd.DataFrame())
    step = 1.0 / windows.sfreq
    for run in sorted(result.timestamps["run"].unique()):
        units = result.timestamps[result.timestamps["run"] == run].set_index("unit")["time_s"]
        ann = eeg_ann[eeg_ann["unit"].isin(units.index)] if len(eeg_ann) else eeg_ann
        events = events_table(ann, units, step_s=step) if len(ann) else pd.DataFrame(
            columns=list(EVENT_COLUMNS))
        ents = _entities(run)
        path = writer.build_path({**ents, "desc": "vaemask"}, "events", ".tsv",
                                 datatype="eeg")
        result.paths[f"events:{run}"] = writer.write_tsv(path, events, columns=EVENT_COLUMNS,
                                                         sidecar=method)
    cross, stim = result.head("fmri", "vae1", "cross"), result.head("fmri", "vae2", "stimulus")
    if cross is not None and stim is not None:
        effect, q = voxel_maps(cross, stim)
        res = _res_label(windows.mask_affine)
        for stat, values in (("effect", effect), ("q", q)):
            path = writer.build_path({"space": SPACE, "res": res, "desc": "vaemask", "stat": stat},
                                     "statmap", ".nii.gz")
            result.paths[f"statmap_{stat}"] = writer.write_nifti(
                path, windows.voxel_image(np.nan_to_num(values, nan=1.0 if stat == "q" else 0)),
                sidecar={**method, "Description": f"Voxel masking {stat} (see voxels table)."})
        vt = voxel_table(result.annotations["fmri"], windows.voxel_mni())
        result.annotations["fmri"] = vt
        path = writer.build_path({"space": SPACE, "res": res, "desc": "vaemask"}, "voxels", ".tsv")
        result.paths["voxels"] = writer.write_tsv(path, vt, columns=VOXEL_COLUMNS, sidecar={
            **method, "AtlasLabels": f"{ATLAS_NAME}: {ATLAS_REFERENCE}"})
    # the validator matches the folder itself only with "group" (no trailing slash)
    writer.add_bidsignore(["group/", "group"])
    logger.info("masking: %s", result.summary)
