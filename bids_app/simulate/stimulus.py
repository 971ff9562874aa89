"""Planted stimulus features and the video frames that carry them.

For movie tasks the simulator renders a small video whose frames carry the planted
features of :data:`bids_app.simulate.scenario.PLANTED_FEATURES`:

* **luminance**: mean Rec.601 luma of each frame (0..1): a level per "scene" (scene
  changes every 4-10 s are the luminance onsets) with a slow drift inside each scene;
* **motion**: speed (0..1) of a drifting sinusoidal grating, 0 outside motion bursts of
  1-3 s (burst starts are the motion onsets). The grating has an integer number of cycles
  across the frame, so it never changes the mean luminance;
* **checker** (checker task only): on during the flicker blocks of the 5 x (20 s rest +
  20 s flicker) design; no video is rendered (the checkerboard is defined by the events).

Hard mode (``realism`` with ``stimulus_movie``, :mod:`bids_app.simulate.realism`) draws
features with the statistics of real films instead (:mod:`bids_app.simulate.film`).

``null=True`` renders the same kind of video: the null variant only removes the neural
links, which :mod:`bids_app.simulate.neural` handles.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from bids_app.natview import facts as nv
from bids_app.simulate.film import BURST_S, film_features, segments
from bids_app.simulate.realism import Realism, resolve_realism

logger = logging.getLogger(__name__)


#: Rec.601 luma weights (R, G, B) defining "luminance".
LUMA = np.array([0.299, 0.587, 0.114])
GRATING_CYCLES = 8  # cycles across the frame width
GRATING_AMPLITUDE = 0.15  # of full scale
GRATING_HZ = 2.0  # temporal frequency at speed 1
SCENE_S = (4.0, 10.0)
BURST_GAP_S = (3.0, 8.0)


@dataclass
class StimulusSim:
    """A simulated stimulus and its planted truth.

    Attributes
    ----------
    task : str
        NATVIEW task name.
    fps : float
        Sampling rate of ``features``, ``checker_on`` and ``frames``.
    duration_s : float
        Length from the task start marker.
    features : dict of str to numpy.ndarray
        Planted feature time courses at ``fps`` (keys from ``PLANTED_FEATURES``).
    onsets : dict of str to numpy.ndarray
        Onsets (s from task start) of each feature's events.
    frames : numpy.ndarray | None
        ``(n, H, W, 3)`` uint8 RGB frames; None for tasks without a video.
    checker_on : numpy.ndarray
        Boolean flicker state at ``fps`` (all False outside the checker task).
    null : bool
        Whether the neural simulator should treat this stimulus as unlinked.
    """

    task: str
    fps: float
    duration_s: float
    features: dict[str, np.ndarray]
    onsets: dict[str, np.ndarray]
    frames: np.ndarray | None
    checker_on: np.ndarray
    null: bool = False

    @property
    def times(self) -> np.ndarray:
        """Time (s from task start) of each sample of the features."""
        return np.arange(len(self.checker_on)) / self.fps


def checker_design(duration_s: float, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Flicker state and flicker-block onsets of the 20 s rest / 20 s flicker design.

    Parameters
    ----------
    duration_s : float
        Task length from the task start marker.
    fps : float
        Sampling rate of the returned state.

    Returns
    -------
    on : numpy.ndarray of bool
        Flicker on at each sample.
    onsets : numpy.ndarray
        Onsets (s) of the flicker blocks.
    """
    t = np.arange(int(round(duration_s * fps))) / fps
    block = nv.CHECKER_BLOCK_S
    on = (np.floor(t / block).astype(int) % 2) == 1
    onsets = np.arange(block, duration_s, 2 * block)
    return on, onsets


def simulate_stimulus(
    task: str,
    duration_s: float,
    fps: float,
    size: tuple[int, int],
    rng: np.random.Generator,
    null: bool = False,
    *,
    render: bool = True,
    realism: str | Realism = "ideal",
) -> StimulusSim:
    """Simulate the stimulus of one task: planted features, onsets and video frames.

    Parameters
    ----------
    task : str
        NATVIEW task name (movie tasks get a video, ``checker*`` the block design, other
        tasks such as rest no stimulus features).
    duration_s : float
        Length from the task start marker.
    fps : float
        Frame rate.
    size : tuple of int
        ``(width, height)`` of the frames (even numbers for video encoding).
    rng : numpy.random.Generator
        Source of randomness.
    null : bool
        Null variant flag (stored; the video is rendered the same way).
    render : bool
        Render the frames (False: ``frames`` is None, features and onsets unchanged).
    realism : {"ideal", "hard"} | Realism
        With ``stimulus_movie`` the movie features have the statistics of real films
        (module docstring); ideal features are unchanged.

    Returns
    -------
    StimulusSim
        Features, onsets, frames and checker state.
    """
    n = int(round(duration_s * fps))
    t = np.arange(n) / fps
    if task in nv.CHECKER_TASKS:
        on, onsets = checker_design(duration_s, fps)
        return StimulusSim(task, fps, duration_s, {"checker": on.astype(float)},
                           {"checker": onsets}, None, on, null)  # fmt: skip
    if task not in nv.MOVIE_TASKS:
        return StimulusSim(task, fps, duration_s, {}, {}, None, np.zeros(n, bool), null)

    if resolve_realism(realism).stimulus_movie:
        cuts, scene, luminance, motion, kept = film_features(t, duration_s, rng)
    else:
        # luminance: one level per scene + slow drift
        cuts = segments(duration_s, SCENE_S, rng)
        scene = np.searchsorted(cuts, t, side="right")
        levels = rng.uniform(0.25, 0.65, size=len(cuts) + 1)
        drift_phase = rng.uniform(0, 2 * np.pi, size=len(cuts) + 1)
        luminance = levels[scene] + 0.04 * np.sin(2 * np.pi * t / 7.0 + drift_phase[scene])
        # motion: bursts of a drifting grating
        starts = segments(duration_s, BURST_GAP_S, rng)
        motion = np.zeros(n)
        kept = []
        for s in starts:
            stop = min(s + rng.uniform(*BURST_S), duration_s)
            sel = (t >= s) & (t < stop)
            if sel.any():
                motion[sel] = 1.0
                kept.append(s)
    tints = rng.normal(size=(len(cuts) + 1, 3))
    tints -= np.outer(tints @ LUMA, np.ones(3))  # zero luma: tint keeps luminance
    tints = 1.0 + 0.12 * tints / np.abs(tints).max(axis=1, keepdims=True)
    frames = render_frames(luminance, motion, tints[scene], size=size, fps=fps) if render else None
    return StimulusSim(
        task,
        fps,
        duration_s,
        {"luminance": luminance, "motion": motion},
        {"luminance": cuts, "motion": np.asarray(kept)},
        frames,
        np.zeros(n, bool),
        null,
    )


def render_frames(
    luminance: np.ndarray,
    motion: np.ndarray,
    tint: np.ndarray,
    *,
    size: tuple[int, int],
    fps: float,
) -> np.ndarray:
    """Render frames with a given mean luminance, grating speed and colour tint.

    Parameters
    ----------
    luminance : numpy.ndarray
        Target mean luma per frame (0..1).
    motion : numpy.ndarray
        Grating speed per frame (0..1; 1 = ``GRATING_HZ`` cycles per second).
    tint : numpy.ndarray
        ``(n, 3)`` RGB gains with unit luma.
    size : tuple of int
        ``(width, height)``.
    fps : float
        Frame rate.

    Returns
    -------
    numpy.ndarray
        ``(n, H, W, 3)`` uint8 RGB.
    """
    width, height = size
    x = np.arange(width) / width
    y = np.arange(height) / height
    phase = np.cumsum(motion * GRATING_HZ / fps)
    n = len(luminance)
    frames = np.empty((n, height, width, 3), np.uint8)
    # A vertical grating (varies along x) with a fixed oblique texture on top; both have
    # integer cycles across the frame, hence zero mean.
    texture = 0.05 * np.sin(2 * np.pi * (3 * x[None, :] + 2 * y[:, None]))
    for i in range(n):
        grating = GRATING_AMPLITUDE * np.sin(2 * np.pi * (GRATING_CYCLES * x - phase[i]))
        luma = luminance[i] + grating[None, :] + texture
        rgb = luma[..., None] * tint[i][None, None, :]
        frames[i] = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    return frames


#: RGB -> Y'CbCr, ITU-R BT.601 with limited range (what FFmpeg assumes for yuv420p).
_YCBCR = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0],
                   [112.0, -93.786, -18.214]]) / 255.0


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """One RGB frame as planar YUV 4:2:0 (BT.601, limited range), as PyAV lays it out.

    Done here rather than by FFmpeg's scaler, whose output for the same frame was found
    to depend on what the process had converted before, so that the same seed wrote a
    different video.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``(H, W, 3)`` uint8 with even ``H`` and ``W``.

    Returns
    -------
    numpy.ndarray
        ``(3 H / 2, W)`` uint8: the Y plane, then the Cb and Cr planes (2 x 2 averages).
    """
    h, w, _ = rgb.shape
    ycc = rgb.astype(np.float64) @ _YCBCR.T + np.array([16.0, 128.0, 128.0])
    chroma = ycc[..., 1:].reshape(h // 2, 2, w // 2, 2, 2).mean(axis=(1, 3))
    planes = np.concatenate([ycc[..., 0].ravel(), chroma[..., 0].ravel(),
                             chroma[..., 1].ravel()]).reshape(3 * h // 2, w)
    return np.clip(np.rint(planes), 0, 255).astype(np.uint8)


def write_video(
    path: Path | str, frames: np.ndarray, fps: float, *, codec: str | None = None
) -> Path:
    """Encode RGB frames to a video file with PyAV (no system ffmpeg needed).

    Parameters
    ----------
    path : Path | str
        Output file (``.mp4`` or ``.avi``).
    frames : numpy.ndarray
        ``(n, H, W, 3)`` uint8 RGB, ``H`` and ``W`` even.
    fps : float
        Frame rate.
    codec : str | None
        Encoder; default ``libx264`` for ``.mp4`` when the PyAV wheel has it, else
        ``mpeg4``.

    Returns
    -------
    Path
        ``path``.
    """
    import av

    path = Path(path)
    if codec is None:
        codec = (
            "libx264" if path.suffix == ".mp4" and "libx264" in av.codecs_available else "mpeg4"
        )
    n, height, width, _ = frames.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # one encoder thread: a multi-threaded encoder's output depends on the CPUs it
        # sees (x264 picks its thread count from them), so the same seed would give a
        # different video, and different stimulus features, on another machine
        stream.thread_count = 1
        if codec == "libx264":
            stream.options = {"crf": "10", "preset": "veryfast", "threads": "1"}
        else:
            stream.bit_rate = 8_000_000
            stream.options = {"qscale": "2"}
        for frame in frames:
            yuv = av.VideoFrame.from_ndarray(rgb_to_yuv420p(frame), format="yuv420p")
            for packet in stream.encode(yuv):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    logger.debug("wrote %d frames to %s (%s)", n, path, codec)
    return path


@dataclass
class PlantedWindows:
    """Model-ready windows synthesised from the planted scenario (tests, benchmarks).

    Attributes
    ----------
    eeg : numpy.ndarray
        ``(N, C, T)`` EEG windows, z-scored per run and channel.
    fmri : numpy.ndarray
        ``(N, V)`` voxels, z-scored per run and voxel.
    stimulus : numpy.ndarray
        ``(N, 2)`` planted luminance and motion averaged over each window.
    meta : pandas.DataFrame
        subject, session, task, run, volume, time_s, has_stimulus.
    planted_voxels : dict of str to numpy.ndarray
        Voxel columns driven by each source (``luminance``, ``motion``, ``alpha``).
    feature_names : list of str
        ``["luminance", "motion"]``.
    sfreq : float
        Sampling rate of the EEG windows.
    """

    eeg: np.ndarray
    fmri: np.ndarray
    stimulus: np.ndarray
    meta: Any
    planted_voxels: dict[str, np.ndarray]
    feature_names: list[str]
    sfreq: float


def _hrf(sfreq: float, length_s: float = 32.0) -> np.ndarray:
    """SPM canonical double-gamma HRF sampled at ``sfreq`` (unit sum)."""
    from scipy.stats import gamma

    t = np.arange(0, length_s, 1.0 / sfreq)
    h = gamma.pdf(t, 6) - gamma.pdf(t, 16) / 6.0
    return h / h.sum()


def simulate_windows(
    *,
    n_subjects: int = 2,
    n_runs: int = 4,
    n_volumes: int = 100,
    n_channels: int = 16,
    window_s: float = 4.2,
    sfreq: float = 10.0,
    n_voxels: int = 200,
    n_planted: int = 20,
    null: bool = False,
    seed: int = 0,
    eeg_noise: float = 1.0,
    global_signal: float = 0.5,
    phase_diffusion: float = 0.35,
    out: dict[str, np.ndarray] | None = None,
) -> PlantedWindows:
    """Synthesise EEG-fMRI windows with the planted causal chain, without raw data.

    Per run a movie stimulus (luminance, motion) drives two sources whose oscillation
    amplitude follows the feature (plus an evoked transient at each onset); a third,
    spontaneous source runs on its own. Scalp EEG is a fixed random mixture of the
    sources plus noise; the BOLD of each source's planted voxels follows the source's
    power through the SPM HRF (the alpha voxels with negative sign), plus a global
    fluctuation and noise. The null variant draws source amplitudes and BOLD regressors
    from independent stimuli, so nothing links stimulus, EEG and fMRI.

    Parameters
    ----------
    n_subjects, n_runs, n_volumes : int
        Group size (windows = product).
    n_channels : int
        EEG channels.
    window_s, sfreq : float
        EEG window length and rate (``T = round(window_s * sfreq)``).
    n_voxels, n_planted : int
        Voxels, and voxels planted per source.
    null : bool
        Null variant.
    seed : int
        Seed.
    eeg_noise : float
        Standard deviation of the sensor noise (sources have unit-scale mixing).
    global_signal : float
        Mean loading of a global BOLD fluctuation shared by all voxels.
    phase_diffusion : float
        Standard deviation (rad per square root of a second) of a random walk of each
        source's phase: rhythms are narrow-band processes whose phase drifts, not
        sinusoids locked to one phase for a whole run (0 gives those; their windows then
        lie on one curve per run, a structure that does not carry over to new runs).
        Drawn from its own random stream, so the other outputs do not depend on it.
    out : dict | None
        Preallocated ``eeg``, ``fmri``, ``stimulus`` arrays (e.g. memory maps) to fill.

    Returns
    -------
    PlantedWindows
        Windows, stimulus, metadata and planted voxels.
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    n_t = int(round(window_s * sfreq))
    n_win = n_subjects * n_runs * n_volumes
    out = out or {
        "eeg": np.empty((n_win, n_channels, n_t), np.float32),
        "fmri": np.empty((n_win, n_voxels), np.float32),
        "stimulus": np.empty((n_win, 2), np.float32),
    }
    mixing = rng.normal(size=(n_channels, 3))
    freqs = sfreq * np.array([0.3, 0.17, 0.4])
    planted = {name: np.arange(i * n_planted, (i + 1) * n_planted)
               for i, name in enumerate(("luminance", "motion", "alpha"))}  # fmt: skip
    signs = np.array([1.0, 1.0, -1.0])
    hrf = _hrf(sfreq)
    loading = global_signal * rng.normal(1.0, 0.4, size=n_voxels)
    rows = []
    k = 0
    tr = nv.TR
    for sub in range(n_subjects):
        for run in range(n_runs):
            duration = n_volumes * tr + window_s + 2.0
            n = int(round(duration * sfreq))
            t = np.arange(n) / sfreq
            stim = simulate_stimulus("tp", duration, sfreq, (16, 16), rng, null, render=False)
            feats = np.stack([(stim.features["luminance"] - 0.25) / 0.4, stim.features["motion"]])
            drive = feats
            if null:
                other = simulate_stimulus("tp", duration, sfreq, (16, 16), rng, render=False)
                drive = np.stack([(other.features["luminance"] - 0.25) / 0.4,
                                  other.features["motion"]])  # fmt: skip
            alpha_amp = np.convolve(rng.normal(size=n), np.ones(int(3 * sfreq)), "same")
            alpha_amp = 0.6 + 0.4 * np.tanh(alpha_amp / alpha_amp.std())
            amp = np.vstack([0.2 + drive, alpha_amp])
            phase = rng.uniform(0, 2 * np.pi, size=3)[:, None]
            if phase_diffusion > 0:
                steps = np.random.default_rng([seed, sub, run]).normal(
                    scale=phase_diffusion / np.sqrt(sfreq), size=(3, n))
                phase = phase + np.cumsum(steps, axis=1)
            sources = amp * np.sin(2 * np.pi * freqs[:, None] * t[None, :] + phase)
            onsets = stim.onsets if not null else other.onsets
            for i, name in enumerate(("luminance", "motion")):
                for onset in onsets[name]:
                    sel = (t >= onset + 0.05) & (t < onset + 0.45)
                    sources[i, sel] += 1.5
            eeg = mixing @ sources + rng.normal(scale=eeg_noise, size=(n_channels, n))
            power = amp**2
            if null:
                power = np.vstack([0.2 + np.roll(drive, n // 2, axis=1), alpha_amp[::-1]]) ** 2
            vol_t = window_s + 1.0 + tr * np.arange(n_volumes)
            vol_i = np.round(vol_t * sfreq).astype(int)
            reg = np.stack([np.convolve(p, hrf)[:n][vol_i] for p in power])
            reg = (reg - reg.mean(1, keepdims=True)) / reg.std(1, keepdims=True)
            bold = rng.normal(size=(n_volumes, n_voxels))
            glob = np.convolve(rng.normal(size=n_volumes), np.ones(3) / 3, "same")
            bold += np.outer(glob, loading)
            for i, name in enumerate(planted):
                bold[:, planted[name]] += 1.2 * signs[i] * reg[i][:, None]
            offs = np.arange(n_t) - n_t
            win = eeg[:, vol_i[:, None] + offs[None, :]]  # (C, n_vol, T)
            win = (win - eeg.mean(1)[:, None, None]) / eeg.std(1)[:, None, None]
            sl = slice(k, k + n_volumes)
            out["eeg"][sl] = win.transpose(1, 0, 2)
            out["fmri"][sl] = (bold - bold.mean(0)) / bold.std(0)
            cs = np.concatenate([np.zeros((2, 1)), np.cumsum(feats, axis=1)], axis=1)
            out["stimulus"][sl] = ((cs[:, vol_i] - cs[:, vol_i - n_t]) / n_t).T
            rows.append(pd.DataFrame({"subject": f"{sub + 1:02d}", "session": "01",
                                      "task": "tp", "run": f"{run + 1:02d}",
                                      "volume": np.arange(n_volumes), "time_s": vol_t,
                                      "has_stimulus": True}))  # fmt: skip
            k += n_volumes
    return PlantedWindows(out["eeg"], out["fmri"], out["stimulus"],
                          pd.concat(rows, ignore_index=True), planted,
                          ["luminance", "motion"], sfreq)  # fmt: skip
