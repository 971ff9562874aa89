"""FASTR-class removal of the MR gradient (imaging) artifact from EEG.

Method (Allen et al. 2000; Niazy et al. 2005), slice-wise and vectorised:

1. Slice epochs start at every slice onset (volume triggers plus the onsets within a volume
   measured from the artifact, the sidecar's SliceTiming as a prior:
   :mod:`bids_app.eeg.slice_timing`);
   each epoch is a window of the data high-passed at ``template_highpass`` (5 Hz) for
   template estimation, so slow EEG and the pulse artifact stay out of the templates.
2. Sub-sample alignment: every epoch is shifted by its fractional onset plus a correction
   found by cross-correlation with the mean artifact on the strongest channels, evaluated on
   a grid of ``1/upsample`` samples through FFT phase ramps and refined by parabolic
   interpolation (FASTR too aligns on one channel and applies the shifts to all).
3. Template: Hann-weighted moving average of the ``window`` neighbouring aligned epochs on
   each side (the epoch itself excluded), computed by FFT along the epoch axis and scaled
   to each epoch by least squares on its content above 70 Hz (where EEG has no power);
   then the mixture of slice shapes (:mod:`bids_app.eeg.gradient_basis`) that explains the
   epoch's remaining content above 70 Hz is added to it, full band (slices that differ,
   volume amplitude changes, head movements).
4. Optimal basis set: PCA of the residuals high-passed above ``obs_highpass`` (the part a
   mean template cannot follow), the number of components chosen per channel from the
   Marchenko-Pastur edge of the eigenvalue spectrum, fitted and subtracted per epoch.
5. The artifact estimate is shifted back to each epoch's own timing, subtracted from the
   original data over the epoch's own segment, and the data are low-pass filtered
   (zero-phase Butterworth).
6. Optional adaptive noise cancellation (Allen et al. 2000;
   :func:`bids_app.eeg.anc.adaptive_noise_cancel`):
   the residual that a FIR filter of the subtracted artifact estimate predicts is removed
   per channel with the least-squares (Wiener) filter an LMS filter converges to, above
   ``obs_highpass`` only (templates carry a trace of EEG, which a fit in the EEG band would
   use to cancel narrow-band EEG).

All steps run on float32 arrays of shape (channels, epochs, samples) in chunks of channels,
processed by ``n_jobs`` threads (FFTs release the GIL); there is no loop over samples or
epochs, and results do not depend on ``n_jobs`` or ``chunk_channels``.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import mne
import numpy as np
from scipy import fft as sfft

from bids_app.eeg.anc import anc_geometry
from bids_app.eeg.gradient_epochs import EpochPlan, align_epochs, correct_chunk
from bids_app.eeg.kernels import copy_for_rewrite, n_threads, zero_phase
from bids_app.eeg.slice_timing import SliceTimingReport, choose_slice_offsets
from bids_app.eeg.triggers import TriggerReport, find_volume_triggers

logger = logging.getLogger(__name__)

@dataclass
class GradientReport:
    """What :func:`remove_gradient_artifact` did.

    Attributes
    ----------
    triggers : TriggerReport | None
        Volume marker report (None when onsets were given).
    n_volumes, n_slices : int
        Volumes corrected and slices per volume.
    window : int
        Neighbouring slice artifacts averaged into each template.
    upsample : int
        Alignment resolution (1/upsample sample before parabolic refinement).
    shift_std_samples : float
        Spread of the sub-sample timing corrections found by alignment.
    obs_components : dict of str to int
        Optimal-basis-set components removed per channel.
    lowpass : float | None
        Low-pass cutoff applied after subtraction (Hz).
    anc : bool
        Whether adaptive noise cancellation was applied.
    anc_taps : int
        FIR taps of the adaptive noise canceller (0 without ANC).
    duration_s : float
        Wall time.
    volume_onsets : ndarray
        Volume onsets used (samples).
    slice_timing : SliceTimingReport | None
        Which slice onsets were used (sidecar, EEG estimate or even spread) and why.
    """

    triggers: TriggerReport | None
    n_volumes: int
    n_slices: int
    window: int
    upsample: int
    shift_std_samples: float = 0.0
    obs_components: dict[str, int] = field(default_factory=dict)
    lowpass: float | None = None
    anc: bool = False
    anc_taps: int = 0
    duration_s: float = 0.0
    volume_onsets: np.ndarray = field(default_factory=lambda: np.array([]))
    slice_timing: SliceTimingReport | None = None

    def to_dict(self) -> dict:
        """Plain-python view for sidecars."""
        # the run time is logged, not recorded: sidecars must not change between reruns
        out = {k: v for k, v in self.__dict__.items()
               if k not in ("triggers", "volume_onsets", "duration_s", "slice_timing")}
        out["triggers"] = None if self.triggers is None else self.triggers.to_dict()
        out["slice_timing"] = None if self.slice_timing is None else self.slice_timing.to_dict()
        return out


def correct_gradient(
    data: np.ndarray,
    onsets: np.ndarray,
    sfreq: float,
    *,
    window: int = 60,
    upsample: int = 10,
    obs_components: str | int = "auto",
    obs_highpass: float = 70.0,
    template_highpass: float = 5.0,
    lowpass: float | None = 70.0,
    anc: bool = False,
    shapes: bool = True,
    shape_rows: np.ndarray | None = None,
    chunk_channels: int = 4,
    n_jobs: int | None = None,
    picks: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, dict]:
    """Subtract the gradient artifact from an array in place, then low-pass it.

    Parameters
    ----------
    data : ndarray, shape (n_channels, n_times)
        EEG in volts, modified in place (rows in ``picks``).
    onsets : ndarray, shape (n_volumes, n_slices)
        Slice onsets in (fractional) samples.
    sfreq : float
        Sampling rate (Hz).
    window : int
        Neighbouring slice artifacts on each side averaged (Hann weights) into each template.
    upsample : int
        Alignment resolution is ``1 / upsample`` sample before parabolic refinement.
    obs_components : "auto" | int
        Optimal-basis-set components per channel (0 disables the OBS).
    obs_highpass : float
        The OBS and the template amplitudes are fitted on content above this frequency (Hz),
        where the EEG has no power, so neither can remove EEG.
    template_highpass : float
        Templates are averaged from data high-passed at this frequency (Hz), so slow EEG
        does not leak into them; also the lower edge of the ANC band.
    lowpass : float | None
        Zero-phase Butterworth (order 4) low-pass applied after subtraction (Hz); None keeps
        the full band. The OBS only acts above ``obs_highpass``, so it is skipped when
        ``lowpass <= obs_highpass`` (it could not change the result).
    anc : bool
        Apply adaptive noise cancellation
        (:func:`bids_app.eeg.anc.adaptive_noise_cancel`) after the OBS.
    shapes : bool
        Also remove, per epoch, the mixture of slice shapes
        (:mod:`~bids_app.eeg.gradient_basis`) that explains the template's residual above
        ``obs_highpass`` (slices that differ, volume amplitude changes, head movements).
    shape_rows : ndarray of int | None
        Rows the shapes are learnt from (default ``picks``; at most 16 are used).
    chunk_channels : int
        Channels processed together (memory ~ 100 MB per channel of a NATVIEW run).
    n_jobs : int | None
        Threads working on chunks of channels (None: 1; -1: every CPU available).
    picks : ndarray of int | None
        Rows of ``data`` to correct (default: all).
    out : ndarray | None
        Array (shape like ``data``) that receives the corrected rows; None: ``data`` itself.

    Returns
    -------
    data : ndarray
        The corrected array (``out`` when given, else ``data``).
    info : dict
        ``shifts`` (sub-sample corrections), ``obs_components`` (per channel) and
        ``anc_taps``.
    """
    picks = np.arange(data.shape[0]) if picks is None else np.asarray(picks)
    target = data if out is None else out
    plan = EpochPlan(onsets, data.shape[1], sfreq, window=window, obs_highpass=obs_highpass,
                 template_highpass=template_highpass, lowpass=lowpass)  # fmt: skip
    # timing: the strongest channels define the sub-sample corrections of every slice
    sample = plan.idx_c[:: max(1, plan.idx_c.shape[0] // 200)]
    power = np.array([np.var(data[c, sample]) for c in picks])
    strong = picks[np.argsort(power)[::-1][: min(4, picks.size)]]
    hp = np.ascontiguousarray(zero_phase(plan.sos_hp, data[strong], padlen=int(sfreq)))
    spec = sfft.rfft(plan.epochs(hp), axis=-1)
    del hp
    shifts = plan.frac + align_epochs(spec, plan.frac, plan.n_fft, upsample)
    del spec
    plan.set_shifts(shifts)
    if shapes:  # shapes from (EEG) channels, not from the ECG that would leak into them
        rows = picks if shape_rows is None else np.asarray(shape_rows)
        plan.set_basis(data, rows[:: max(1, rows.size // 16)][:16], chunk_channels)
    do_obs = obs_components != 0 and (lowpass is None or lowpass > obs_highpass)
    chunks = [picks[c0 : c0 + chunk_channels] for c0 in range(0, picks.size, chunk_channels)]

    def work(rows):
        y, used = correct_chunk(plan, data[rows].astype(np.float32), anc=anc,
                                 obs_components=obs_components, do_obs=do_obs)  # fmt: skip
        target[rows] = y
        return used

    n_jobs = n_threads(n_jobs)
    if n_jobs > 1 and len(chunks) > 1:
        with ThreadPoolExecutor(max_workers=min(n_jobs, len(chunks))) as pool:
            used = [n for chunk in pool.map(work, chunks) for n in chunk]
    else:
        used = [n for rows in chunks for n in work(rows)]
    _, k = anc_geometry(sfreq, plan.anc_band, int(np.median(plan.seg)))
    return target, {"shifts": shifts - plan.frac, "obs_components": used,
                  "anc_taps": 2 * k + 1 if anc else 0}  # fmt: skip


def remove_gradient_artifact(
    raw: mne.io.BaseRaw,
    *,
    volume_onsets: np.ndarray | None = None,
    marker: str = "R128",
    tr: float | None = None,
    slice_timing=None,
    n_slices: int | None = None,
    window: int = 60,
    upsample: int = 10,
    obs_components: str | int = "auto",
    lowpass: float | None = 70.0,
    anc: bool = False,
    picks=None,
    copy: bool = True,
    chunk_channels: int = 4,
    n_jobs: int | None = None,
    source: str | None = None,
) -> tuple[mne.io.BaseRaw, GradientReport]:
    """Remove the MR gradient artifact (FASTR-class) from a continuous recording.

    Parameters
    ----------
    raw : mne.io.BaseRaw
        Preloaded recording with volume markers as annotations (or give ``volume_onsets``).
    volume_onsets : ndarray | None
        Volume onsets in samples; None finds them from the ``marker`` annotations with
        :func:`~bids_app.eeg.triggers.find_volume_triggers` (robust to missing, duplicated
        and stray markers).
    marker : str
        Volume marker name.
    tr : float | None
        Repetition time (s); None estimates it from the markers.
    slice_timing : sequence of float | None
        BIDS SliceTiming of the BOLD sidecar (s), a prior only: the slice onsets are
        measured from the artifact (:func:`~bids_app.eeg.slice_timing.choose_slice_offsets`)
        and the sidecar is used when the measurement confirms it (or cannot be made).
    n_slices : int | None
        Slices per volume, spread evenly over the TR when neither the sidecar nor the
        artifact gives the onsets.
    window : int
        Neighbouring slice artifacts on each side per template (Hann weights).
    upsample : int
        Alignment resolution 1/upsample sample (then refined by parabolic interpolation).
    obs_components : "auto" | int
        Optimal-basis-set components per channel (0: no OBS).
    lowpass : float | None
        Low-pass cutoff after subtraction (Hz); None keeps the full band.
    anc : bool
        Adaptive noise cancellation of the residual correlated with the artifact estimate
        (:func:`~bids_app.eeg.anc.adaptive_noise_cancel`).
    picks : str | list | None
        Channels to correct (default: all EEG, EOG and ECG channels).
    copy : bool
        Work on a copy of ``raw``.
    chunk_channels : int
        Channels processed together.
    n_jobs : int | None
        Threads (None: 1; -1: every CPU available); results do not depend on it.
    source : str | None
        File name for error messages.

    Returns
    -------
    raw : mne.io.BaseRaw
        The corrected recording.
    report : GradientReport
        Triggers, alignment and OBS summary.
    """
    t0 = time.perf_counter()
    raw, src = copy_for_rewrite(raw) if copy else (raw, raw._data)
    sfreq = raw.info["sfreq"]
    trig_report = None
    if volume_onsets is None:
        volume_onsets, trig_report = find_volume_triggers(raw, marker=marker, tr=tr,
                                                          source=source)  # fmt: skip
    picks = mne.pick_types(raw.info, eeg=True, eog=True, ecg=True, exclude=()) if picks is None \
        else _pick_rows(raw, picks)  # fmt: skip
    offsets, timing = choose_slice_offsets(
        src[_strongest(src, picks, volume_onsets)], volume_onsets, sfreq, prior=slice_timing,
        n_slices=n_slices, tr=tr, source=source)  # fmt: skip
    logger.info("Slice onsets: %s", timing.reason)
    onsets = np.asarray(volume_onsets, dtype=float)[:, None] + offsets[None, :]
    if src is not raw._data:
        rest = np.setdiff1d(np.arange(src.shape[0]), picks)
        raw._data[rest] = src[rest]
    eeg = mne.pick_types(raw.info, eeg=True, exclude="bads")
    _, info = correct_gradient(src, onsets, sfreq, picks=picks, window=window,
                               shape_rows=eeg if eeg.size >= 3 else picks,
                               upsample=upsample, obs_components=obs_components,
                               lowpass=lowpass, anc=anc, chunk_channels=chunk_channels,
                               n_jobs=n_jobs, out=raw._data)  # fmt: skip
    names = [raw.ch_names[p] for p in picks]
    report = GradientReport(
        triggers=trig_report, n_volumes=int(onsets.shape[0]), n_slices=int(onsets.shape[1]),
        window=window, upsample=upsample, shift_std_samples=float(np.std(info["shifts"])),
        obs_components=dict(zip(names, info["obs_components"])), lowpass=lowpass, anc=anc,
        anc_taps=info["anc_taps"], duration_s=time.perf_counter() - t0,
        volume_onsets=np.asarray(volume_onsets, float), slice_timing=timing,
    )  # fmt: skip
    logger.info("Gradient artifact removed: %d volumes x %d slices in %.1f s",
                report.n_volumes, report.n_slices, report.duration_s)  # fmt: skip
    return raw, report


def _strongest(data: np.ndarray, picks: np.ndarray, volume_onsets, n: int = 4) -> np.ndarray:
    """The ``n`` rows of ``picks`` with the most variance during the scan."""
    lo = int(max(np.min(volume_onsets), 0))
    hi = int(min(np.max(volume_onsets) + np.median(np.diff(volume_onsets)), data.shape[1]))
    step = max(1, (hi - lo) // 200_000)
    power = np.array([np.var(data[c, lo:hi:step]) for c in picks])
    return np.asarray(picks)[np.argsort(power)[::-1][: min(n, len(picks))]]


def _pick_rows(raw: mne.io.BaseRaw, picks) -> np.ndarray:
    """Row indices of ``picks`` (channel names or integer indices)."""
    picks = [picks] if isinstance(picks, str | int) else list(picks)
    return np.array([raw.ch_names.index(p) if isinstance(p, str) else int(p) for p in picks])
