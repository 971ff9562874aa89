"""Participant HTML report: every run's EEG, fMRI, source and coupling results in one page.

The page ``output_dir/sub-XX.html`` links figures under ``sub-XX/figures/`` with relative
paths (figures made elsewhere are copied there), so the output folder can be moved or
zipped. Templates live in ``report/templates``: ``base.html`` (layout, CSS, navigation)
and ``_macros.html`` are shared with the group report through :func:`make_environment`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from bids_app import __version__

logger = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"

REFERENCES = {
    "fastr": "Niazy RK et al. (2005) Removal of FMRI environment artifacts from EEG data "
             "using optimal basis sets. NeuroImage 28:720-737.",
    "aas": "Allen PJ et al. (2000) A method for removing imaging artifact from continuous EEG "
           "recorded during functional MRI. NeuroImage 12:230-239.",
    "asr": "Mullen TR et al. (2015) Real-time neuroimaging and cognitive monitoring using "
           "wearable dry EEG. IEEE Trans Biomed Eng 62:2553-2567.",
    "iclabel": "Pion-Tonachini L et al. (2019) ICLabel: an automated electroencephalographic "
               "independent component classifier. NeuroImage 198:181-197.",
    "prep": "Bigdely-Shamlo N et al. (2015) The PREP pipeline. Front Neuroinform 9:16.",
    "eloreta": "Pascual-Marqui RD (2007) Discrete, 3D distributed, linear imaging methods of "
               "electric neuronal activity. arXiv:0710.3341.",
    "aperiodic": "Donoghue T et al. (2020) Parameterizing neural power spectra into periodic "
                 "and aperiodic components. Nat Neurosci 23:1655-1665.",
    "mne": "Gramfort A et al. (2013) MEG and EEG data analysis with MNE-Python. Front "
           "Neurosci 7:267.",
    "nilearn": "Abraham A et al. (2014) Machine learning for neuroimaging with scikit-learn. "
               "Front Neuroinform 8:14.",
    "hrf": "Friston KJ et al. (1998) Event-related fMRI: characterizing differential "
           "responses. NeuroImage 7:30-40.",
    "goldman": "Goldman RI et al. (2002) Simultaneous EEG and fMRI of the alpha rhythm. "
               "NeuroReport 13:2487-2492.",
    "prewhiten": "Worsley KJ et al. (2002) A general statistical analysis for fMRI data. "
                 "NeuroImage 15:1-15.",
    "hrfderiv": "Calhoun VD et al. (2004) fMRI analysis with the general linear model: "
                "removal of latency-induced amplitude bias by incorporation of hemodynamic "
                "derivative terms. NeuroImage 22:252-257.",
    "fdr": "Benjamini Y, Hochberg Y (1995) Controlling the false discovery rate. J R Stat Soc "
           "B 57:289-300.",
    "latency": "Worsley KJ, Taylor JE (2006) Detecting fMRI activation allowing for unknown "
               "latency of the hemodynamic response. NeuroImage 29:649-654.",
    "tail": "Winkler AM et al. (2016) Faster permutation inference in brain imaging. "
            "NeuroImage 141:502-516.",
    "natview": "Telesford QK et al. (2023) An open-access dataset of naturalistic viewing "
               "using simultaneous EEG-fMRI. Sci Data 10:554.",
}


def make_environment() -> jinja2.Environment:
    """Jinja2 environment over the report templates (HTML autoescaped)."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


def render(template: str, **context: Any) -> str:
    """Render a report template with ``version`` added to ``context``.

    The report carries no generation time (the log has it), so that rerunning with the same
    inputs and seed writes a byte-identical report.
    """
    context.setdefault("version", __version__)
    return make_environment().get_template(template).render(**context)


def figure_entries(figures: Mapping[str, Any] | None, writer: Any, subject: str,
                   prefix: str = "") -> list[dict[str, str]]:
    """Report entries ``{src, caption, anchor}`` of a stage's ``figures`` dict.

    Figures outside ``output_dir/sub-XX/figures`` are copied there so every link is relative
    to ``output_dir``. Missing files are skipped with a warning.
    """
    out = []
    root = Path(writer.output_dir)
    fig_dir = root / f"sub-{subject}" / "figures"
    for name, path in (figures or {}).items():
        path = Path(path)
        if not path.exists():
            logger.warning("Figure %s (%s) does not exist; left out of the report.", name, path)
            continue
        if not path.resolve().is_relative_to(fig_dir.resolve()):
            target = fig_dir / f"{prefix}{path.name}"
            writer.write_bytes(target, path.read_bytes())
            path = target
        rel = path.resolve().relative_to(root.resolve()).as_posix()
        anchor = re.sub(r"[^0-9A-Za-z_-]", "-", f"{prefix}{name}")
        out.append({"src": rel, "caption": _caption(name), "anchor": anchor})
    return out


def _caption(name: str) -> str:
    text = re.sub(r"desc-", "", str(name)).replace("_", " ").replace("-", " ")
    return text[:1].upper() + text[1:]


def _fmt(value: Any) -> Any:
    """Short display form of a QC value (numbers rounded, sequences joined)."""
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(f"{float(value):.4g}")
    if isinstance(value, list | tuple | np.ndarray | set):
        items = list(value)
        if not items:
            return "none"
        if len(items) > 24:
            return f"{len(items)} values"
        return ", ".join(str(_fmt(v)) for v in items)
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_fmt(v)}" for k, v in list(value.items())[:12])
    return str(value)


def _flatten(qc: Mapping[str, Any] | None, prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for key, value in (qc or {}).items():
        label = f"{prefix}{key}"
        if isinstance(value, Mapping) and len(value) <= 12 and all(
            not isinstance(v, Mapping) for v in value.values()
        ):
            rows += [(f"{label} / {k}", _fmt(v)) for k, v in value.items()]
        else:
            rows.append((label, _fmt(value)))
    return rows


def _steps_table(result: Any) -> list[dict[str, Any]]:
    """Table of a stage's ``steps`` (list of dicts with a name and parameters)."""
    rows = []
    for step in getattr(result, "steps", None) or []:
        if isinstance(step, Mapping):
            name = step.get("name", step.get("step", "step"))
            params = {k: v for k, v in step.items() if k not in ("name", "step")}
            rows.append((str(name), _fmt(params)))
        else:
            rows.append((str(step), ""))
    return [{"title": "Processing steps", "columns": ("Step", "Parameters"),
             "rows": rows}] if rows else []


def _eeg_part(eeg: Any, writer: Any, subject: str, prefix: str) -> dict[str, Any]:
    tables = []
    qc = _flatten(getattr(eeg, "qc", None))
    if qc:
        tables.append({"title": "Quality control (bad channels, rejected components, "
                       "artifact metrics)", "columns": ("Measure", "Value"), "rows": qc})
    tables += _steps_table(eeg)
    raw = getattr(eeg, "raw_clean", None)
    text = ""
    if raw is not None:
        text = (f"Clean EEG: {len(raw.ch_names)} channels, {raw.info['sfreq']:g} Hz, "
                f"{raw.times[-1]:.0f} s; {len(getattr(eeg, 'volume_onsets_s', []))} volume "
                "markers.")
    return {"key": "eeg", "title": "EEG before / after cleaning", "text": text,
            "tables": tables,
            "figures": figure_entries(getattr(eeg, "figures", None), writer, subject, prefix)}


def _fmri_part(fmri: Any, writer: Any, subject: str, prefix: str) -> dict[str, Any]:
    rows = []
    bold = getattr(fmri, "bold_mni", None)
    if bold is not None:
        rows.append(("Volumes", int(bold.shape[3]) if bold.ndim == 4 else 1))
        rows.append(("Voxel size (mm)", _fmt(bold.header.get_zooms()[:3])))
    if getattr(fmri, "tr", None):
        rows.append(("TR (s)", _fmt(fmri.tr)))
    conf = getattr(fmri, "confounds", None)
    if conf is not None and "framewise_displacement" in conf:
        fd = conf["framewise_displacement"].to_numpy(float)
        rows += [("Mean FD (mm)", _fmt(np.nanmean(fd))), ("Max FD (mm)", _fmt(np.nanmax(fd)))]
    tables = [{"title": "Acquisition and motion", "columns": ("Measure", "Value"),
               "rows": rows}] if rows else []
    tables += _steps_table(fmri)
    return {"key": "fmri", "title": "fMRI quality (motion, carpet, masks)", "text": "",
            "tables": tables,
            "figures": figure_entries(getattr(fmri, "figures", None), writer, subject, prefix)}


def _coupling_part(coupling: Any, writer: Any, subject: str, prefix: str,
                   q: float) -> dict[str, Any]:
    rows = []
    for band, res in (getattr(coupling, "bands", None) or {}).items():
        grid_mm = coupling.source_maps.grid.voxel_mm
        peak = grid_mm[int(np.argmax(np.abs(res.z)))]
        thr = coupling.fdr_threshold.get(band, float("inf"))
        rows.append((band, int((res.q < q).sum()), _fmt(np.abs(res.z).max()),
                     "none" if not np.isfinite(thr) else _fmt(thr),
                     ", ".join(f"{v:.0f}" for v in peak), int((res.local_q < q).sum()),
                     _fmt(np.abs(res.local_r).max()), f"AR({res.glm.ar_order})"))
    tables = [{"title": "EEG band power <-> BOLD", "columns": (
        "Band", f"Voxels q<{q:g} (global)", "max |z|", "FDR |z| threshold",
        "Peak |z| (MNI mm)", f"Voxels q<{q:g} (source-resolved)", "max |local r|",
        "Noise model"), "rows": rows}] if rows else []
    text = ("Global: test of the mean-channel band power convolved with the canonical HRF "
            "and its temporal and dispersion derivatives (largest t over HRF shapes peaking at "
            "4-9 s, or F test of the basis). Source-resolved: the same test of "
            "the band power of the EEG source at each voxel, beside the band power of the "
            "rest of the brain (mean-channel power without the source's cross-talk "
            "neighbourhood). "
            "p-values from within-run circular shifts of the EEG power; q-values from one "
            "Benjamini-Hochberg family per run: the global and the source-resolved test of "
            f"every band and voxel ({getattr(coupling, 'fdr_tests', 0)} tests).") if rows else ""
    return {"key": "coupling", "title": "Source maps and EEG-fMRI coupling", "text": text,
            "tables": tables,
            "figures": figure_entries(getattr(coupling, "figures", None), writer, subject,
                                      prefix)}


def methods_text(config: Any) -> tuple[list[str], list[str]]:
    """Methods paragraphs generated from the configuration, and their references."""
    e, f, s, c = config.eeg, config.fmri, config.source, config.coupling
    used = ["natview", "mne"]
    eeg = ["EEG was processed with eegfmri " + __version__ + " (MNE-Python)."]
    if e.gradient:
        eeg.append(f"The gradient artifact was removed with a FASTR-class method: volume "
                   f"triggers from '{e.volume_marker}' markers, {e.gradient_upsample}x "
                   f"upsampled alignment, a moving average template of {e.gradient_window} "
                   f"artifacts, an optimal basis set ({e.gradient_obs_components} components) "
                   f"and a {e.gradient_lowpass:g} Hz low-pass.")
        used += ["aas", "fastr"]
    if e.bcg:
        eeg.append(f"The pulse artifact was removed with an optimal basis set of "
                   f"{e.bcg_obs_components} components over {e.bcg_window} heartbeats "
                   f"detected on {e.ecg_channel}.")
    eeg.append(f"Data were resampled to {e.resample_sfreq:g} Hz and band-passed "
               f"{e.l_freq:g}-{e.h_freq:g} Hz" + (f" with a {e.line_freq:g} Hz notch" if
                                                 e.notch else "") + ".")
    if e.bad_channels:
        eeg.append("Bad channels were detected with PREP-style criteria" +
                   (" and interpolated." if e.interpolate_bads else "."))
        used.append("prep")
    if e.burst_repair:
        eeg.append(f"Bursts were repaired with artifact subspace reconstruction (cutoff "
                   f"{e.burst_cutoff:g} SD).")
        used.append("asr")
    if e.ica:
        eeg.append(f"Independent components labelled {', '.join(e.ica_reject_labels)} by "
                   f"ICLabel with probability >= {e.ica_threshold:g} were removed.")
        used.append("iclabel")
    if e.average_reference:
        eeg.append("Data were re-referenced to the average.")
    fmri = (f"BOLD data were preprocessed with the '{f.backend}' backend: slice-timing "
            f"correction (reference {f.slice_time_ref:g} of the TR), motion correction, "
            f"normalisation to {f.template} at {f.resolution_mm:g} mm and smoothing with a "
            f"{f.fwhm:g} mm FWHM Gaussian kernel.")
    bands = ", ".join(f"{n} {lo:g}-{hi:g} Hz" for n, lo, hi in s.bands)
    head = ("a 3-shell spherical head model fitted to the template electrode positions" if
            s.subjects_dir is None else "the fsaverage BEM")
    src = (f"EEG sources were estimated with {s.method} (SNR {s.snr:g}, {s.noise_cov} noise "
           f"covariance) on a volume grid of {s.source_spacing_mm:g} mm laid on the fMRI brain "
           f"mask, with {head}; data were simulated with a different (4-shell) model. Band "
           f"power ({bands}) of each source was computed for each fMRI volume window and "
           f"interpolated to the fMRI grid.")
    if s.background == "aperiodic":
        src += (" The aperiodic (1/f) background of each source was fitted to its spectrum "
                "over the run (robust log-log fit, as in spectral parameterisation) and its "
                "share of each band's power subtracted, so that maps show power above the "
                "background.")
    used.append("eloreta")
    if s.background == "aperiodic":
        used.append("aperiodic")
    peaks = ", ".join(f"{p:g}" for p in c.hrf_shape_peaks_s)
    test = (f"the largest t statistic over HRFs peaking at {peaks} s (projected on the basis)"
            if c.hrf_shape_peaks_s else "F tests over the basis")
    coup = (f"Band power envelopes were convolved with an HRF basis ({c.hrf_model}) and "
            f"sampled at the acquisition times of the volumes. For each band and voxel, a "
            f"GLM with {len(c.confounds)} confounds and cosine drifts (high-pass "
            f"{c.high_pass_hz:g} Hz), prewhitened with a per-voxel AR(p) model (bias-corrected, "
            f"p <= {c.max_ar_order} chosen by AIC, autocorrelations shrunk towards their mean "
            f"over voxels), tested the mean-channel band power (global) "
            f"and the band power of the EEG source at the voxel beside it (source-resolved) "
            f"with {test}. p-values came from {c.n_shifts} within-run circular shifts of the "
            f"EEG power (at least {c.min_shift_s:g} s; generalised Pareto tail beyond the "
            f"pooled null's 99th percentile) and q-values from one Benjamini-Hochberg family "
            f"per run (global and source-resolved tests of every band and voxel), thresholded "
            f"at FDR q < {c.fdr_q:g}.")
    used += ["hrf", "hrfderiv", "goldman", "nilearn", "prewhiten", "fdr", "tail"]
    used += ["latency"] if c.hrf_shape_peaks_s else []
    return [" ".join(eeg), fmri, src, coup], [REFERENCES[k] for k in dict.fromkeys(used)]


def _run_label(entities: Mapping[str, str]) -> str:
    return " ".join(f"{k}-{entities[k]}" for k in ("ses", "task", "run") if k in entities) or "run"


def _failure_entry(label: str, failure: Any, root: Path) -> dict[str, Any]:
    crash = getattr(failure, "crash_file", None)
    link = None
    if crash is not None:
        crash = Path(crash)
        link = (crash.resolve().relative_to(root.resolve()).as_posix()
                if crash.resolve().is_relative_to(root.resolve()) else crash.as_uri()
                if crash.is_absolute() else str(crash))
    return {"run": label, "stage": getattr(failure, "stage", "?"),
            "message": getattr(failure, "message", str(failure)), "crash": link}


def validation_rows(checks: list[Any] | None) -> list[tuple]:
    """Report rows ``(check, item, value, pass mark, result)`` of validation checks."""
    return [(c.check, c.item, _fmt(c.value), c.mark, "pass" if c.passed else "FAIL")
            for c in checks or []]


def write_participant_report(subject: str, outcomes: list[Any], config: Any,
                             writer: Any, *, validation: list[Any] | None = None,
                             validation_note: str = "", regions: Any = None) -> Path:
    """Write ``output_dir/sub-<subject>.html`` from the outcomes of every run.

    Parameters
    ----------
    subject : str
        Subject label (with or without ``sub-``).
    outcomes : list of RunOutcome
        Per run: ``run`` (entities), ``eeg``, ``fmri``, ``coupling`` results (None when
        the stage failed or did not run) and ``failures``.
    config : Config
        Resolved configuration (methods paragraph).
    writer : DerivativesWriter
        Output writer.
    validation : list of Check | None
        Checks against the planted truth (simulated input only; None: no such section).
    validation_note : str
        Why validation rows are missing, when they are.
    regions : callable | None
        Names the regions of MNI coordinates in the findings (e.g.
        :func:`bids_app.masking.atlas.atlas_labels`); None leaves them unnamed.

    Returns
    -------
    Path
        The HTML file.
    """
    from bids_app.report.participant_findings import run_findings

    subject = subject[4:] if subject.startswith("sub-") else subject
    root = Path(writer.output_dir)
    runs, summary, failures, findings, maps = [], [], [], [], []
    for i, outcome in enumerate(outcomes):
        entities = getattr(outcome, "entities", None) or getattr(outcome.run, "entities", {})
        label = _run_label(entities)
        prefix = "_".join(f"{k}-{entities[k]}" for k in ("ses", "task", "run")
                          if k in entities) + "_"
        run_failures = [_failure_entry(label, f, root) for f in outcome.failures]
        failures += run_failures
        parts = []
        if outcome.eeg is not None:
            parts.append(_eeg_part(outcome.eeg, writer, subject, prefix))
        if outcome.fmri is not None:
            parts.append(_fmri_part(outcome.fmri, writer, subject, prefix))
        if outcome.coupling is not None:
            parts.append(_coupling_part(outcome.coupling, writer, subject, prefix,
                                        config.coupling.fdr_q))
        if outcome.eeg is not None or outcome.fmri is not None:
            sentences, coupled = run_findings(label, outcome.coupling, config.coupling.fdr_q,
                                              regions)
            findings += sentences
            local = {k: v for k, v in (getattr(outcome.coupling, "figures", None) or {}
                                       ).items() if coupled and "localzmaps" in str(k)}
            maps += [dict(f, anchor="findings-" + f["anchor"], caption=f"{label}: "
                          "source-resolved z maps") for f in
                     figure_entries(local, writer, subject, prefix)]
        runs.append({"id": f"run{i + 1}", "label": label, "parts": parts,
                     "failures": run_failures, "failed": bool(run_failures)})
        failed = {f["stage"] for f in run_failures}

        def state(stage: str, result: Any, failed: set = failed) -> str:
            return "failed" if stage in failed else ("done" if result is not None else "-")

        summary.append((label, state("eeg", outcome.eeg), state("fmri", outcome.fmri),
                        state("coupling", outcome.coupling),
                        "failed" if run_failures else "ok"))
    methods, references = methods_text(config)
    html = render("participant.html", subject=subject, runs=runs, summary=summary,
                  failures=failures, methods=methods, references=references,
                  findings=findings,
                  findings_figures=maps, validation=validation,
                  validation_rows=validation_rows(validation),
                  validation_note=validation_note)
    path = root / f"sub-{subject}.html"
    writer.write_bytes(path, html.encode("utf-8"))
    logger.info("Wrote the report %s (%d runs, %d failures).", path, len(runs), len(failures))
    return path
