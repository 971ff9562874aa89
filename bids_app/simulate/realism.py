"""Realism of the simulated MR artifacts: the ``ideal`` and ``hard`` presets.

``ideal`` data follow exactly the model the cleaning methods assume (every slice plays the
same gradient waveform, the BOLD sidecar lists the slice times the scanner played, the
pulse artifact is three fixed kernels scaled per beat) and serve the algebraic unit tests.
``hard`` data break each of these assumptions the way real recordings do; each effect is a
field of :class:`Realism`, can be switched off on its own (``dataclasses.replace``) and is
recorded in the truth folder (``realism.json``):

- ``slice_waveform_sd``: every slice position of the volume plays its own gradient waveform
  (relative change of each gradient axis, SD; slice-select frequency, eddy currents);
- ``volume_amplitude_sd``: the artifact amplitude changes from volume to volume (AR(1) with
  this SD; gradient heating, small movements);
- ``head_jump``: a sudden head movement at a random time in the middle half of the run
  changes every channel's loop areas by this fraction, so the artifact shape changes;
- ``vibration_uv``: vibration lines (cold-head helium pump, ventilation) of this peak
  amplitude (uV) at a wandering fundamental in 20-50 Hz and its second harmonic;
- ``clock_ppm`` and ``clocks_synchronised``: the scanner clock runs ``clock_ppm`` faster
  than the EEG clock; unsynchronised, the volume markers drift off the EEG sample grid too
  (they fall on the first EEG sample after each scanner trigger);
- ``sidecar_slice_timing``: "correct" (the BOLD sidecar lists the slice times played),
  "absent" (no SliceTiming) or "wrong" (slices spread evenly over the TR, as some
  converters write, while the scanner played NATVIEW's 55.47 ms spacing);
- ``bcg_latency_jitter_s``, ``bcg_shape_sd``, ``bcg_resp_depth``: beat-to-beat latency
  jitter of every pulse-artifact component (SD), beat-to-beat change of its width
  (relative SD), and the depth of its respiratory modulation (amplitude by this fraction,
  latency by 40 ms times it);
- EEG (drawn in :mod:`bids_app.simulate.eeg_realism`): ``eeg_electrode_jitter_mm`` (RMS
  tangential electrode displacement from the template the inverse uses),
  ``eeg_head_offset_mm`` (the simulation sphere's centre moves this far again, in a random
  direction, beyond its fixed offset), ``eeg_patch_dipoles`` and ``eeg_patch_radius_mm``
  (each planted source is a patch of dipoles in a ball instead of one dipole),
  ``eeg_amplitude_modulation`` (relative depth of 0.2-2 Hz amplitude modulation of every
  rhythm) and ``eeg_frequency_drift_hz`` (slow frequency wander of the spontaneous and
  feature rhythms; the SSVEP stays locked to the flicker). The background is spatially
  correlated 1/f activity of 300 random dipoles in both modes (channel covariance
  ``L L^T``); in hard mode it passes through the jittered, mismatched head as well.

- ``stimulus_movie``: movie features with the statistics of real films
  (:mod:`bids_app.simulate.film`): log-normal, 1/f-correlated shot lengths (the cuts
  are the luminance onsets), luminance as a level per shot + 1/f^2 fluctuation + a slow
  trend, and a continuous 1/f motion speed with occasional bursts, instead of uniform
  4-10 s scenes with a 7 s sine drift and on/off motion bursts.

BOLD effects (``bold_*`` fields, :mod:`bids_app.simulate.bold_hard`): region- and
run-specific HRFs, AR(1) and 1/f noise, aliased cardiac and respiratory fluctuations, slow
drift, a global signal, motion spikes (in the planted motion and so in the motion
parameters the pipeline estimates) and non-planted signal clusters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

SIDECAR_SLICE_TIMING = ("correct", "absent", "wrong")


@dataclass(frozen=True)
class Realism:
    """Switches of the hard-mode artifact effects (see the module docstring).

    Attributes
    ----------
    name : str
        Preset name ("ideal", "hard", or a custom label).
    slice_waveform_sd, volume_amplitude_sd, head_jump, vibration_uv : float
        Gradient-artifact effects (0 disables each).
    clock_ppm : float
        Scanner clock speed relative to the EEG clock (parts per million).
    clocks_synchronised : bool
        Volume markers on the EEG's TR grid (True, as with a SyncBox) or drifting with the
        scanner clock.
    sidecar_slice_timing : {"correct", "absent", "wrong"}
        What the BOLD sidecar says about the slice times.
    bcg_latency_jitter_s, bcg_shape_sd, bcg_resp_depth : float
        Pulse-artifact effects.
    eeg_electrode_jitter_mm, eeg_head_offset_mm : float
        Electrode misplacement (RMS, mm) and extra head-sphere offset (mm) of the simulation
        forward model relative to the inverse's.
    eeg_patch_dipoles : int
        Dipoles per planted source (1: a point source).
    eeg_patch_radius_mm : float
        Radius of the ball a patch fills.
    eeg_amplitude_modulation, eeg_frequency_drift_hz : float
        Non-stationary rhythms: modulation depth and maximum frequency offset (Hz).
    bold_hrf_variable : bool
        Every region of every run has its own HRF (peak 4-8 s, dispersion, undershoot).
    bold_ar1, bold_ar1_sd, bold_pink_sd, bold_physio_sd, bold_drift_sd, bold_global_sd : float
        AR(1) coefficient and noise sizes (fraction of the baseline signal; 0 disables).
    bold_noise_fwhm_mm : float
        Spatial smoothness (Gaussian FWHM, mm) of the voxel noise (the AR(1) and 1/f noise,
        and the base noise of the MNI-space coupling runs); 0: independent voxels.
    bold_spikes : int
        Sudden one-volume head movements of ``bold_spike_mm`` (mm).
    bold_clusters : int
        Non-planted signal clusters of ``bold_cluster_sd`` (fraction per SD of the driver).
    stimulus_movie : bool
        Movie features with the statistics of real films (shot lengths, 1/f luminance,
        continuous motion) instead of uniform scenes and on/off motion bursts.
    """

    name: str = "ideal"
    slice_waveform_sd: float = 0.0
    volume_amplitude_sd: float = 0.0
    head_jump: float = 0.0
    vibration_uv: float = 0.0
    clock_ppm: float = 1.5
    clocks_synchronised: bool = True
    sidecar_slice_timing: str = "correct"
    bcg_latency_jitter_s: float = 0.0
    bcg_shape_sd: float = 0.0
    bcg_resp_depth: float = 0.1
    eeg_electrode_jitter_mm: float = 0.0
    eeg_head_offset_mm: float = 0.0
    eeg_patch_dipoles: int = 1
    eeg_patch_radius_mm: float = 10.0
    eeg_amplitude_modulation: float = 0.0
    eeg_frequency_drift_hz: float = 0.0
    # --- BOLD ---
    bold_hrf_variable: bool = False
    bold_ar1: float = 0.0
    bold_ar1_sd: float = 0.0
    bold_pink_sd: float = 0.0
    bold_physio_sd: float = 0.0
    bold_drift_sd: float = 0.0
    bold_global_sd: float = 0.0
    bold_noise_fwhm_mm: float = 0.0
    bold_spikes: int = 0
    bold_spike_mm: float = 0.0
    bold_clusters: int = 0
    bold_cluster_sd: float = 0.0
    # --- stimulus ---
    stimulus_movie: bool = False

    def __post_init__(self):
        if self.sidecar_slice_timing not in SIDECAR_SLICE_TIMING:
            raise ValueError(f"sidecar_slice_timing must be one of {SIDECAR_SLICE_TIMING}, "
                             f"got {self.sidecar_slice_timing!r}.")  # fmt: skip

    @property
    def hard(self) -> bool:
        """Whether any effect beyond the ideal model is switched on."""
        return self != dataclasses.replace(REALISM["ideal"], name=self.name)

    @property
    def eeg_hard(self) -> bool:
        """Whether any hard-mode EEG effect is switched on."""
        return any(getattr(self, f.name) != f.default for f in dataclasses.fields(self)
                   if f.name.startswith("eeg_"))  # fmt: skip

    def to_dict(self) -> dict:
        """Plain-python view (written to the truth folder)."""
        return dataclasses.asdict(self)


REALISM: dict[str, Realism] = {
    "ideal": Realism(),
    "hard": Realism(
        "hard", slice_waveform_sd=0.05, volume_amplitude_sd=0.03, head_jump=0.15,
        vibration_uv=2.0, clock_ppm=40.0, clocks_synchronised=False,
        sidecar_slice_timing="wrong", bcg_latency_jitter_s=0.01, bcg_shape_sd=0.15,
        bcg_resp_depth=0.3, eeg_electrode_jitter_mm=7.5, eeg_head_offset_mm=4.0,
        eeg_patch_dipoles=24, eeg_amplitude_modulation=0.5, eeg_frequency_drift_hz=1.0,
        # BOLD: physiological noise about as large as the thermal noise (3 T, 3 mm voxels)
        bold_hrf_variable=True, bold_ar1=0.5, bold_ar1_sd=0.003, bold_pink_sd=0.003,
        bold_physio_sd=0.002, bold_drift_sd=0.005, bold_global_sd=0.003, bold_spikes=3,
        bold_spike_mm=1.0, bold_clusters=6, bold_cluster_sd=0.005,
        # noise as smooth as unsmoothed, normalised 3 mm EPI (FWHM about 2 voxels)
        bold_noise_fwhm_mm=6.0,
        # stimulus: shot lengths, luminance and motion statistics of real films
        stimulus_movie=True,
    ),
}  # fmt: skip


def resolve_realism(realism: str | Realism | dict) -> Realism:
    """A :class:`Realism` from a preset name, an instance or its ``to_dict`` view."""
    if isinstance(realism, Realism):
        return realism
    if isinstance(realism, dict):
        return Realism(**realism)
    if realism not in REALISM:
        raise ValueError(f"realism must be one of {sorted(REALISM)}, got {realism!r}.")
    return REALISM[realism]


def volume_marker_samples(first: int, n_volumes: int, tr_samples: int,
                          realism: Realism) -> np.ndarray:  # fmt: skip
    """Samples of the volume markers: the TR grid, or the scanner clock's drifting grid."""
    if realism.clocks_synchronised:
        return first + tr_samples * np.arange(n_volumes)
    scanner = tr_samples * (1.0 + realism.clock_ppm * 1e-6) * np.arange(n_volumes)
    return first + np.ceil(scanner - 1e-9).astype(np.int64)


def sidecar_slice_timing(played: list[float], tr: float, realism: Realism) -> list | None:
    """SliceTiming written to the BOLD sidecar for the slice times the scanner ``played``."""
    if realism.sidecar_slice_timing == "correct":
        return list(played)
    if realism.sidecar_slice_timing == "absent":
        return None
    played = np.asarray(played, dtype=float)
    rank = np.argsort(np.argsort(played))  # even spread over the TR, same acquisition order
    return [round(float(r * tr / played.size), 6) for r in rank]


def slice_gains(rng: np.random.Generator, n_slices: int, sd: float) -> np.ndarray:
    """Gain of each gradient axis (columns z, x, y) per slice position, shape (n, 3)."""
    return 1.0 + sd * rng.standard_normal((n_slices, 3))


def volume_gains(rng: np.random.Generator, n_volumes: int, sd: float) -> np.ndarray:
    """Artifact amplitude per volume: 1 + AR(1) (coefficient 0.7) with standard deviation sd."""
    out = np.zeros(n_volumes)
    state = 0.0
    for v in range(n_volumes):
        state = 0.7 * state + np.sqrt(1 - 0.49) * rng.standard_normal()
        out[v] = state
    return 1.0 + sd * out


def jump(rng: np.random.Generator, n_times: int, mix: np.ndarray, size: float):
    """Sample of a sudden head movement and the change of the loop-area mixture it causes."""
    at = int(rng.uniform(0.25, 0.75) * n_times)
    scale = np.abs(mix).mean(axis=1, keepdims=True)
    return at, size * rng.standard_normal(mix.shape) * scale


def vibration_lines(rng: np.random.Generator, n_ch: int, n_times: int, sfreq: float,
                    peak_uv: float) -> np.ndarray:  # fmt: skip
    """Vibration lines: a wandering fundamental (20-50 Hz) and its harmonic, per channel."""
    t = np.arange(n_times) / sfreq
    f0 = rng.uniform(20.0, 50.0)
    wander = 0.2 * np.sin(2 * np.pi * t / rng.uniform(40.0, 90.0) + rng.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * np.cumsum(f0 + wander) / sfreq
    out = np.zeros((n_ch, n_times), dtype=np.float32)
    for harmonic, rel in ((1, 1.0), (2, 0.4)):
        amp = rel * peak_uv * 1e-6 * rng.uniform(0.2, 1.0, n_ch)
        offset = rng.uniform(0, 2 * np.pi, n_ch)
        c, s = np.cos(harmonic * phase), np.sin(harmonic * phase)
        out += ((amp * np.cos(offset))[:, None] * c - (amp * np.sin(offset))[:, None] * s
                ).astype(np.float32)  # fmt: skip
    return out


def beat_variation(rng: np.random.Generator, r_peaks: np.ndarray, n_comp: int,
                   realism: Realism):  # fmt: skip
    """Per-beat latency offsets (s), width factors and amplitude factors, shape (n_comp, beats).

    Respiration (rate 0.2-0.33 Hz, drifting) modulates the amplitude by ``bcg_resp_depth``
    and the latency by 40 ms x ``bcg_resp_depth``; on top, every component of every beat has
    its own latency jitter and width change.
    """
    rate = rng.uniform(0.2, 0.33)
    drift = 1.0 + 0.15 * np.sin(2 * np.pi * r_peaks / rng.uniform(60.0, 120.0))
    resp = np.sin(2 * np.pi * rate * np.cumsum(np.diff(r_peaks, prepend=0.0) * drift)
                  + rng.uniform(0, 2 * np.pi))  # fmt: skip
    depth = realism.bcg_resp_depth
    latency = 0.04 * depth * resp[None, :] + realism.bcg_latency_jitter_s * rng.standard_normal(
        (n_comp, r_peaks.size))  # fmt: skip
    width = np.clip(1.0 + realism.bcg_shape_sd * rng.standard_normal((n_comp, r_peaks.size)),
                    0.5, 1.5)  # fmt: skip
    amp = 1.0 + depth * resp[None, :] * np.ones((n_comp, 1))
    return latency, width, amp
