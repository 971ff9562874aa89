"""Group models: windows -> stimulus features -> VAE-1 and VAE-2 -> group/models/.

Reads only participant derivatives (``desc-preproc`` EEG with its markers, BOLD and brain
mask in MNI space) and the stimulus videos (``--stimuli-dir`` or ``bids_dir/stimuli``),
builds memory-mapped windows in the work directory, trains both models (single process or
torchrun, see :mod:`bids_app.models.train`) and writes ``group/models/{vae1,vae2}.pt``
with JSON sidecars and figures.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from bids_app import __version__
from bids_app.errors import InputError
from bids_app.models.train import (
    TrainResult,
    evaluate_vae1,
    evaluate_vae2,
    fit,
    make_model,
    model_bytes,
)
from bids_app.models.windows import WindowSet, split_windows
from bids_app.workflows.models_figures import latent_summary, write_figures
from bids_app.workflows.models_inputs import (  # noqa: F401 (public re-exports)
    DerivativesJSON,
    RunDerivatives,
    _stimulus_stats,
    build_group_windows,
    entities_from_name,
    find_runs,
    find_video,
    stimulus_features,
)
from bids_app.workflows.models_result import ModelsResult

logger = logging.getLogger(__name__)


def _versions() -> dict[str, str]:
    import torch

    return {"eegfmri": __version__, "torch": torch.__version__, "numpy": np.__version__}


def initialise_vae1(model: Any, arrays: Any, train_idx: np.ndarray, mc: Any, *,
                    seed: int) -> None:
    """Apply the configured VAE-1 initialisation (``[model] pca_init`` and its settings).

    Parameters
    ----------
    model : MultimodalVAE
        Freshly built VAE-1, changed in place.
    arrays : mapping
        ``{"eeg", "fmri"}`` window arrays (memory maps are fine).
    train_idx : numpy.ndarray
        Training windows the PCA is fitted on.
    mc : ModelConfig
        The ``[model]`` section.
    seed : int
        Seed of the window subsample.
    """
    if not mc.pca_init:
        return
    from bids_app.models.initialise import init_from_pca

    restrict = mc.pca_mode == "block" and mc.cross_experts != "all"
    cross = tuple(x.strip() for x in mc.cross_experts.split(",") if x.strip())
    init_from_pca(model, arrays, train_idx, mode=mc.pca_mode, seed=seed,
                  expert_precision=mc.expert_precision, freeze_linear=restrict,
                  cross_experts=cross if restrict else None,
                  expert_inputs=mc.expert_inputs)  # fmt: skip


def train_group_models(
    windows: WindowSet, config: Any, *, checkpoint_dir: Path | None = None
) -> tuple[dict[str, Any], dict[str, TrainResult], dict[str, np.ndarray], dict[str, Any]]:
    """Split windows, train VAE-1 (all windows) and VAE-2 (windows with a stimulus).

    Parameters
    ----------
    windows : WindowSet
        Group windows.
    config : Config
        ``config.model`` holds the hyper-parameters, ``config.execution`` seed and device.
    checkpoint_dir : Path | None
        Where per-epoch checkpoints go (training resumes from them).

    Returns
    -------
    models : dict
        ``{"vae1": model, "vae2": model or None}``.
    results : dict
        TrainResult per trained model.
    splits : dict
        ``{"vae1": {...}, "vae2": {...}}`` folds.
    metrics : dict
        Held-out metrics per model.
    """
    mc, seed = config.model, config.execution.random_seed
    arrays = windows.arrays()
    splits = {"vae1": split_windows(windows.meta, by=mc.split_by, val_fraction=mc.val_fraction,
                                    test_fraction=mc.test_fraction, seed=seed)}  # fmt: skip
    for fold, idx in splits["vae1"].items():
        counts = windows.meta["task"].iloc[idx].astype(str).value_counts().to_dict()
        logger.info("%s windows per task: %s", fold, counts)
    common = {"eeg_shape": windows.eeg.shape[1:], "n_voxels": windows.fmri.shape[1],
              "latent_dim": mc.latent_dim, "hidden_dim": mc.hidden_dim,
              "beta": mc.beta, "cross_weight": mc.cross_weight}  # fmt: skip
    train_kw = {"epochs": mc.epochs, "batch_size": mc.batch_size,
                "learning_rate": mc.learning_rate, "weight_decay": mc.weight_decay,
                "patience": mc.patience, "seed": seed, "device": config.execution.device,
                "feed": mc.feed, "gpu_batch_size": mc.gpu_batch_size,
                "progress": config.execution.verbosity >= 0}  # fmt: skip
    ckpt = (lambda name: checkpoint_dir / f"{name}.ckpt") if checkpoint_dir else lambda n: None
    models: dict[str, Any] = {"vae1": None, "vae2": None}
    results: dict[str, TrainResult] = {}
    metrics: dict[str, Any] = {}
    sp = splits["vae1"]
    if min(len(sp["train"]), len(sp["val"])) == 0:
        raise InputError("Too few windows to train the group models (need train and val).")
    model = make_model("vae1", seed=seed, eeg_decoder_rank=mc.eeg_decoder_rank, **common)
    initialise_vae1(model, arrays, sp["train"], mc, seed=seed)
    results["vae1"] = fit(model, arrays, sp["train"], sp["val"], checkpoint=ckpt("vae1"),
                          include_initial=mc.pca_init, **train_kw)  # fmt: skip
    models["vae1"] = results["vae1"].model
    if mc.pca_init:
        from bids_app.models.initialise import select_own_paths

        own = select_own_paths(models["vae1"], arrays, sp["val"])
        if own:
            results["vae1"].extra["eeg_own_paths"] = own
    if mc.calibrate_experts:
        from bids_app.models.initialise import calibrate_experts

        offsets = calibrate_experts(models["vae1"], arrays, sp["val"])
        results["vae1"].extra["expert_logvar_offsets"] = offsets
    test = sp["test"] if len(sp["test"]) else sp["val"]
    metrics["vae1"] = evaluate_vae1(models["vae1"], arrays, sp["train"], test, seed=seed,
                                    val_idx=sp["val"], sfreq=windows.sfreq)  # fmt: skip
    if windows.stimulus is not None and windows.meta["has_stimulus"].any():
        has = windows.meta["has_stimulus"].to_numpy()
        splits["vae2"] = {k: v[has[v]] for k, v in sp.items()}
        s2 = splits["vae2"]
        if min(len(s2["train"]), len(s2["val"])) > 0:
            model2 = make_model("vae2", seed=seed, n_features=windows.stimulus.shape[1],
                                feature_names=windows.feature_names,
                                **{**common, "beta": mc.stimulus_beta})  # fmt: skip
            results["vae2"] = fit(model2, arrays, s2["train"], s2["val"],
                                  checkpoint=ckpt("vae2"), **train_kw)  # fmt: skip
            models["vae2"] = results["vae2"].model
            test2 = s2["test"] if len(s2["test"]) else s2["val"]
            groups = windows.run_labels()[test2]
            metrics["vae2"] = evaluate_vae2(models["vae2"], arrays, test2, groups, seed=seed,
                                            train_idx=s2["train"], val_idx=s2["val"],
                                            sfreq=windows.sfreq)  # fmt: skip
        else:
            logger.warning("VAE-2 not trained: stimulus windows fall in one fold only.")
    else:
        logger.warning("VAE-2 not trained: no window has stimulus features.")
    return models, results, splits, metrics


def run_models_workflow(output_dir: Path, config: Any, writer: Any) -> ModelsResult | None:
    """Build windows from participant derivatives, train VAE-1 and VAE-2, write them.

    Parameters
    ----------
    output_dir : Path
        eegfmri output directory holding participant derivatives.
    config : Config
        Resolved configuration.
    writer : DerivativesWriter
        Writer of the group outputs.

    Returns
    -------
    ModelsResult | None
        Windows, features, trained models, metrics, written paths and figures; None on
        ranks other than 0 under torchrun (rank 0 writes every output).
    """
    import torch.distributed as dist

    from bids_app.models.train import init_distributed, resolve_device
    from bids_app.models.windows import load_windows

    if config.model.fusion != "poe":
        raise InputError(f"[model] fusion {config.model.fusion!r} is not available; use 'poe'.")
    output_dir = Path(output_dir)
    work = Path(config.execution.work_dir or output_dir / "work") / "group_models"
    # Under torchrun, rank 0 reads the derivatives and builds the windows; others wait.
    rank, world = init_distributed(resolve_device(config.execution.device))
    features: dict[str, Any] = {}
    if rank == 0:
        runs = find_runs(output_dir, config)
        features = stimulus_features(runs, config)
        windows = build_group_windows(runs, features, config, work / "windows")
        logger.info("%d windows from %d runs; %d voxels; EEG %s", len(windows), len(runs),
                    windows.fmri.shape[1], windows.eeg.shape[1:])  # fmt: skip
    if world > 1:
        dist.barrier()
        if rank != 0:
            windows = load_windows(work / "windows")
    models, results, splits, metrics = train_group_models(
        windows, config, checkpoint_dir=work / "checkpoints"
    )
    if rank != 0:
        logger.info("rank %d: training done; rank 0 writes the outputs.", rank)
        return None
    held_out = splits["vae1"]["test"] if len(splits["vae1"]["test"]) else splits["vae1"]["val"]
    metrics["vae1"]["latent_dims"] = latent_summary(models["vae1"], windows, held_out)
    result = ModelsResult(windows, splits["vae1"], splits.get("vae2", {}), features,
                          models["vae1"], models["vae2"], results, metrics)  # fmt: skip
    data = {"n_windows": len(windows), "n_runs": int(len(np.unique(windows.run_labels()))),
            "subjects": sorted(windows.meta["subject"].astype(str).unique()),
            "eeg_channels": windows.channel_names, "eeg_sfreq": windows.sfreq,
            "eeg_window_s": config.model.eeg_window_s, "n_voxels": int(windows.fmri.shape[1]),
            "voxel_size_mm": np.sqrt((np.asarray(windows.mask_affine)[:3, :3] ** 2)
                                     .sum(axis=0)).round(3).tolist(),
            "space": "MNI152NLin2009cAsym", "stimulus_features": windows.feature_names,
            "stimulus_normalisation": _stimulus_stats(windows)}  # fmt: skip
    for name in ("vae1", "vae2"):
        model = models[name]
        if model is None:
            continue
        split = splits[name]
        sidecar = {
            "Description": ("VAE-1: EEG + fMRI -> EEG + fMRI" if name == "vae1" else
                            "VAE-2: EEG + fMRI -> stimulus features"),  # fmt: skip
            "Architecture": model.architecture(),
            "Data": data,
            "Splits": {"by": config.model.split_by,
                       "stratified_by_task": config.model.split_by == "run",
                       **{k: sorted(set(windows.run_labels()[v])) for k, v in split.items()}},
            "Training": results[name].metrics(),
            "Evaluation": {k: v for k, v in metrics.get(name, {}).items()
                           if k != "baseline_comparison"},
            "Baselines": metrics.get(name, {}).get("baseline_comparison", []),
            "RandomSeed": config.execution.random_seed,
            "Config": config.to_dict()["model"],
            "Versions": _versions(),
        }  # fmt: skip
        sidecar = _json_safe(sidecar)
        pt = writer.write_bytes(Path("group") / "models" / f"{name}.pt",
                                model_bytes(model, {"sidecar": sidecar}))  # fmt: skip
        js = writer.write_json(Path("group") / "models" / f"{name}.json", sidecar)
        result.paths[name], result.paths[f"{name}_json"] = Path(pt), Path(js)
    result.figures = write_figures(result, writer)
    writer.add_bidsignore(["group/", "group"])  # the validator needs "group" for the folder
    summary = {k: {m: v for m, v in d.items() if not isinstance(v, list | dict)}
               for k, d in metrics.items()}  # fmt: skip
    logger.info("group models: %s", json.dumps(summary, default=float))
    for name, res in results.items():  # machine-dependent, so in the log, not the sidecar
        logger.info("%s training performance: %s", name, json.dumps(res.performance()))
    return result


def _json_safe(obj: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by None, recursively."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float | np.floating) and not np.isfinite(obj):
        return None
    return obj
