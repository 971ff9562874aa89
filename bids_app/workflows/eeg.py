"""EEG stage of the participant workflow: read -> gradient -> pulse -> clean -> write.

Reads one EEG recording of a run, removes the MR gradient and pulse artifacts, runs the
post-MR cleaning chain and writes ``desc-preproc`` EEG (BrainVision + ``_eeg.json`` listing
every step and parameter), ``_channels.tsv`` (status good/bad), ``desc-qc`` metrics (TSV +
JSON) and report figures, all through the derivatives writer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mne  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bids_app.eeg import qc  # noqa: E402
from bids_app.eeg.cardiac import remove_bcg_artifact  # noqa: E402
from bids_app.eeg.clean import clean_eeg  # noqa: E402
from bids_app.eeg.gradient import remove_gradient_artifact  # noqa: E402
from bids_app.eeg.triggers import marker_samples  # noqa: E402
from bids_app.errors import InputError  # noqa: E402
from bids_app.natview import facts as nv  # noqa: E402

logger = logging.getLogger(__name__)


@dataclass
class EEGResult:
    """Output of :func:`run_eeg_workflow` (see docs/developer.md)."""

    raw_clean: mne.io.BaseRaw
    volume_onsets_s: np.ndarray
    qc: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)


def read_eeg(path: Path, config) -> mne.io.BaseRaw:
    """Read an EEG file (EEGLAB ``.set``, BrainVision ``.vhdr``, EDF/BDF) with channel types."""
    path = Path(path)
    readers = {".set": mne.io.read_raw_eeglab, ".vhdr": mne.io.read_raw_brainvision,
               ".edf": mne.io.read_raw_edf, ".bdf": mne.io.read_raw_bdf}  # fmt: skip
    if path.suffix not in readers:
        raise InputError(f"EEG file {path} has an unsupported format (use .set, .vhdr, .edf).")
    try:
        raw = readers[path.suffix](path, preload=True, verbose="error")
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"EEG file {path} cannot be read ({err}).") from None
    types = {}
    for name in raw.ch_names:
        if name == config.ecg_channel:
            types[name] = "ecg"
        elif name in config.eog_channels:
            types[name] = "eog"
    raw.set_channel_types(types, verbose="error")
    return raw


def _fig_psd(before, after, sf_before, sf_after):
    from scipy import signal

    fig, ax = plt.subplots(figsize=(6.5, 3.5), layout="constrained")
    for x, sf, label in ((before, sf_before, "raw"), (after, sf_after, "cleaned")):
        f, p = signal.welch(x, sf, nperseg=min(x.shape[-1], int(4 * sf)))
        keep = f <= 100
        ax.semilogy(f[keep], np.median(p[:, keep], axis=0), label=label)
    ax.set(xlabel="Frequency (Hz)", ylabel="PSD (V²/Hz), median over channels")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)  # beside the data
    return fig


def _fig_epochs(before, after, sfreq, onsets_s, span_s, title):
    lags = np.arange(int(span_s * sfreq))
    ev = np.round(np.asarray(onsets_s) * sfreq).astype(int)
    ev = ev[(ev >= 0) & (ev + lags[-1] < before.shape[-1])]
    fig, ax = plt.subplots(figsize=(6.5, 3.5), layout="constrained")
    if ev.size:
        for x, label in ((before, "before"), (after, "after")):
            ax.plot(1e3 * lags / sfreq, 1e6 * x[ev[:, None] + lags].mean(axis=0), label=label)
    ax.set(xlabel="Time after event (ms)", ylabel="Mean epoch (µV)", title=title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)  # beside the data
    return fig


def _write_figures(writer, subject, stem, figs) -> dict[str, Path]:
    out = {}
    for name, fig in figs.items():
        out[name] = writer.write_figure(fig, subject, f"{stem}_desc-{name}_eeg.svg")
        plt.close(fig)
    return out


def run_eeg_workflow(run, config, writer) -> EEGResult:
    """Clean the EEG recording of ``run`` and write its derivatives.

    Parameters
    ----------
    run : bids_app.io.bids.RunFiles
        The run (``run.eeg`` must be set).
    config : bids_app.config.Config
        Full configuration (``config.eeg`` and ``config.execution.random_seed`` are used).
    writer : bids_app.io.derivatives.DerivativesWriter
        Output writer.

    Returns
    -------
    EEGResult
        Cleaned 250 Hz EEG, volume onsets, QC, figures and steps.
    """
    cfg = config.eeg
    if run.eeg is None:
        raise InputError(f"Run {run.entities} has no EEG recording.")
    raw = read_eeg(run.eeg, cfg)
    sfreq = raw.info["sfreq"]
    bold_meta = run.metadata("bold") if getattr(run, "bold", None) else {}
    tr = bold_meta.get("RepetitionTime")
    slice_timing = bold_meta.get("SliceTiming")  # a prior: the onsets come from the EEG
    steps: list[dict[str, Any]] = []
    eeg_picks = mne.pick_types(raw.info, eeg=True, exclude=())
    names = [raw.ch_names[i] for i in eeg_picks]
    before, sf_low = qc.decimated(raw._data[eeg_picks], sfreq)
    metrics: dict[str, np.ndarray] = {}
    qc_summary: dict[str, Any] = {}
    volume_onsets = np.array([])
    figs: dict[str, Any] = {}
    n_markers = marker_samples(raw, cfg.volume_marker).size
    if cfg.gradient and n_markers:
        _, grad = remove_gradient_artifact(
            raw, marker=cfg.volume_marker, tr=tr, slice_timing=slice_timing,
            n_slices=nv.N_SLICES, window=cfg.gradient_window,
            upsample=cfg.gradient_upsample, obs_components=cfg.gradient_obs_components,
            lowpass=cfg.gradient_lowpass, anc=cfg.gradient_anc, copy=False,
            source=str(run.eeg), n_jobs=config.execution.omp_nthreads)
        trig = grad.triggers
        volume_onsets = grad.volume_onsets / sfreq
        steps.append({"name": "gradient", "parameters": {
            "method": "FASTR-class slice template (Hann window), sub-sample alignment, OBS",
            "window": cfg.gradient_window, "upsample": cfg.gradient_upsample,
            "obs_components": cfg.gradient_obs_components, "lowpass": cfg.gradient_lowpass,
            "marker": cfg.volume_marker, "tr": tr, "slice_timing": slice_timing,
            "anc": cfg.gradient_anc},
            "result": grad.to_dict()})  # fmt: skip
        after, _ = qc.decimated(raw._data[eeg_picks], sfreq)
        scan = slice(int(volume_onsets[0] * sf_low), int((volume_onsets[-1] + (tr or nv.TR))
                                                          * sf_low))  # fmt: skip
        tr_s = trig.tr_samples / sfreq
        slice_freq = 1.0 / _slice_period(grad.slice_timing, grad.n_slices, tr_s)
        metrics.update(qc.gradient_metrics(before[:, scan], after[:, scan], sf_low,
                                           slice_freq=slice_freq, volume_freq=1 / tr_s))
        qc_summary["markers"] = trig.to_dict()
        qc_summary["slice_timing_source"] = grad.slice_timing.source
        qc_summary["slice_timing_reason"] = grad.slice_timing.reason
        strongest = int(np.argmax(np.var(before[:, scan], axis=1)))
        figs["gradient"] = _fig_epochs(before[strongest], after[strongest], sf_low,
                                       volume_onsets, tr_s, f"Volume artifact, {names[strongest]}")
        before = after
    else:
        steps.append({"name": "gradient", "parameters": {"enabled": cfg.gradient},
                      "result": {"skipped": "no volume markers" if cfg.gradient else
                                 "disabled"}})  # fmt: skip
    if cfg.bcg:
        _, bcg = remove_bcg_artifact(raw, ecg_channel=cfg.ecg_channel,
                                     n_components=cfg.bcg_obs_components, copy=False,
                                     source=str(run.eeg),
                                     n_jobs=config.execution.omp_nthreads)  # fmt: skip
        steps.append({"name": "bcg", "parameters": {
            "method": "OBS per channel around cardiac events", "n_components":
            cfg.bcg_obs_components, "ecg_channel": cfg.ecg_channel}, "result": bcg.to_dict()})
        after, _ = qc.decimated(raw._data[eeg_picks], sfreq)
        events = np.asarray(bcg.events_s)
        locked_before = qc.cardiac_locked(before, sf_low, events)
        metrics["bcg_locked_residual_ratio"] = qc.bcg_metrics(
            before, after, sf_low, events, locked_before=locked_before)
        worst = int(np.argmax(np.var(locked_before, axis=1)))
        figs["bcg"] = _fig_epochs(before[worst], after[worst], sf_low, events, 0.8,
                                  f"Cardiac-locked average, {names[worst]}")
        qc_summary["heart_rate_bpm"] = bcg.heart_rate_bpm
        qc_summary["cardiac_source"] = bcg.source
    raw_clean, report = clean_eeg(raw, cfg, random_state=config.execution.random_seed,
                                  source=str(run.eeg))
    del raw
    steps.extend(report.steps)
    before_psd, sf_psd = qc.decimated(before, sf_low, 250.0)
    figs["psd"] = _fig_psd(before_psd, raw_clean.get_data(), sf_psd, raw_clean.info["sfreq"])
    if report.ica is not None and report.ica.exclude:
        comp_figs = report.ica.plot_components(picks=report.ica.exclude, show=False)
        figs["ica"] = comp_figs[0] if isinstance(comp_figs, list) else comp_figs
    qc_summary.update({"bad_channels": report.bad_channels,
                       "ica_rejected": report.ica_rejected,
                       "burst_repair_fraction": report.asr_fraction,
                       "ica_skipped": report.ica_skipped})  # fmt: skip
    _write_outputs(run, writer, raw_clean, names, report.bad_channels, metrics, steps,
                   qc_summary)  # fmt: skip
    subject = run.entities["sub"]
    stem = "_".join(f"{k}-{run.entities[k]}" for k in ("sub", "ses", "task", "run")
                    if k in run.entities)  # fmt: skip
    figures = _write_figures(writer, subject, stem, figs)
    return EEGResult(raw_clean=raw_clean, volume_onsets_s=volume_onsets, qc=qc_summary,
                     figures=figures, steps=steps)  # fmt: skip


_CHANNEL_COLUMNS = {
    "name": {"Description": "Channel label."},
    "type": {"Description": "Channel type (BIDS)."},
    "units": {"Description": "Physical unit of the data."},
    "status": {"Description": "bad: detected as bad, then interpolated; good otherwise.",
               "Levels": {"good": "usable channel", "bad": "bad channel (interpolated)"}},
    "status_description": {"Description": "Bad-channel criterion (pyprep) and repair."},
}  # fmt: skip


def _slice_period(timing, n_slices, tr_s):
    """Slice spacing (s) measured by the gradient step, else the TR over the slices."""
    if np.isfinite(timing.slice_period_ms):
        return timing.slice_period_ms / 1e3
    return tr_s / n_slices


def _write_outputs(run, writer, raw_clean, names, bads, metrics, steps, qc_summary):
    ents = {k: run.entities.get(k) for k in ("sub", "ses", "task", "run")}
    source = [writer.raw_uri(run.eeg)] if writer.bids_dir else []
    vhdr = writer.build_path({**ents, "desc": "preproc"}, "eeg", ".vhdr", datatype="eeg")
    writer.write_raw_brainvision(vhdr, raw_clean, sidecar={
        "Description": "In-scanner EEG after gradient, pulse-artifact removal and cleaning.",
        "Sources": source, "EEGReference": "average",
        "SoftwareFilters": {"bandpass": {s["name"]: s["parameters"] for s in steps
                                         if s["name"] in ("bandpass", "notch")}},
        "ProcessingSteps": steps})  # fmt: skip
    chans = pd.DataFrame({
        "name": raw_clean.ch_names, "type": "EEG", "units": "µV",
        "status": ["bad" if n in bads else "good" for n in raw_clean.ch_names],
        "status_description": [f"{bads[n]}; interpolated" if n in bads else "n/a"
                               for n in raw_clean.ch_names]})  # fmt: skip
    writer.write_tsv(writer.build_path({**ents, "desc": "preproc"}, "channels", ".tsv",
                                       datatype="eeg"), chans, columns=_CHANNEL_COLUMNS)
    table = qc.qc_table(names, list(bads), metrics)
    writer.write_tsv(writer.build_path({**ents, "desc": "qc"}, "eeg", ".tsv", datatype="eeg"),
                     table, columns=qc.QC_COLUMNS, sidecar={"Sources": source,
                                                             "Summary": qc_summary})  # fmt: skip
