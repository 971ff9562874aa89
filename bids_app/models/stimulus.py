"""Stimulus features of the videos shown during a run, aligned to BOLD windows.

Videos are decoded with PyAV (the FFmpeg libraries ship in its wheel) and sampled on a
regular grid (``fps``). For every sampled frame the built-in :class:`HandcraftedExtractor`
computes interpretable features that need no downloaded weights; a learned embedding can
be added with :class:`TorchExtractor` (``--stimulus-model``: a TorchScript file, or a
state dict of :class:`TinyConvNet`). The checkerboard of the checker task comes from the
events, not from a video. :func:`window_features` averages the features over the frames
shown during each EEG window (``[t_k - W, t_k]`` in run time; the movie starts at the task
start marker).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import pandas as pd
import torch
from torch import nn

from bids_app.errors import InputError

logger = logging.getLogger(__name__)

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
ANALYSIS_WIDTH = 160
SF_SPLIT = 0.08  # cycles/pixel at analysis width, low/high spatial-frequency boundary
SCENE_CUT_THRESHOLD = 0.3  # L1 distance of luma histograms (0..2)


class FrameExtractor(Protocol):
    """A feature extractor: ``names`` and ``__call__(frames, previous) -> (n, k)``.

    ``frames`` and ``previous`` are ``(n, H, W, 3)`` uint8 RGB; ``previous[i]`` is the
    decoded frame just before ``frames[i]`` (equal to it at the first frame).
    """

    names: list[str]

    def __call__(self, frames: np.ndarray, previous: np.ndarray) -> np.ndarray: ...


@dataclass
class VideoFeatures:
    """Feature time courses of one video.

    Attributes
    ----------
    times : numpy.ndarray
        Seconds from the start of the video of each sample.
    values : numpy.ndarray
        ``(n, F)`` features.
    names : list of str
        Feature names.
    source : str
        The video file.
    """

    times: np.ndarray
    values: np.ndarray
    names: list[str]
    source: str = ""

    def to_frame(self) -> pd.DataFrame:
        """Features as a DataFrame with a ``time`` column."""
        return pd.DataFrame(self.values, columns=self.names).assign(time=self.times)


def _luma(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float32) @ LUMA / 255.0


class HandcraftedExtractor:
    """Interpretable frame features without learned weights.

    Features: ``luminance`` (mean luma, 0..1), ``contrast`` (RMS luma), ``red``, ``green``,
    ``blue`` (mean channel, 0..1), ``saturation`` (mean HSV saturation), ``sf_low`` and
    ``sf_high`` (log10 spectral power of the luma below / above ``SF_SPLIT`` cycles per
    pixel), ``motion`` (mean absolute difference of the mean-removed luma to the previous
    frame, blind to global luminance changes), ``flow``
    (mean Farneback optical-flow magnitude, fraction of the width per frame),
    ``scene_cut`` (1 where the luma histogram jumps), ``faces`` (number of frontal faces
    found by OpenCV's Haar cascade; only with OpenCV 4.x, whose wheels ship the cascades:
    OpenCV 5 dropped them, and the feature is then left out with a warning).
    """

    def __init__(self, *, faces: bool = True) -> None:
        self.names = ["luminance", "contrast", "red", "green", "blue", "saturation", "sf_low",
                      "sf_high", "motion", "flow", "scene_cut"]  # fmt: skip
        self._cascade = None
        xml = Path(getattr(cv2.data, "haarcascades", "")) / "haarcascade_frontalface_default.xml"
        if faces and hasattr(cv2, "CascadeClassifier") and xml.is_file():
            self._cascade = cv2.CascadeClassifier(str(xml))
            self.names.append("faces")
        elif faces:
            logger.warning(
                "OpenCV %s has no Haar face cascade; 'faces' feature left out.", cv2.__version__
            )

    def __call__(self, frames: np.ndarray, previous: np.ndarray) -> np.ndarray:
        """Features of ``frames`` ``(n, H, W, 3)`` given their predecessors."""
        n, height, width, _ = frames.shape
        luma, prev = _luma(frames), _luma(previous)
        out = np.zeros((n, len(self.names)), np.float32)
        out[:, 0] = luma.mean(axis=(1, 2))
        out[:, 1] = luma.std(axis=(1, 2))
        out[:, 2:5] = frames.mean(axis=(1, 2)) / 255.0
        rgb = frames.astype(np.float32)
        mx, mn = rgb.max(axis=3), rgb.min(axis=3)
        out[:, 5] = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0).mean(axis=(1, 2))
        power = np.abs(np.fft.rfft2(luma - luma.mean(axis=(1, 2), keepdims=True))) ** 2
        fy = np.fft.fftfreq(height)[:, None]
        fx = np.fft.rfftfreq(width)[None, :]
        radius = np.hypot(fx, fy)
        low = (radius > 0) & (radius <= SF_SPLIT)
        out[:, 6] = np.log10(power[:, low].mean(axis=1) + 1e-8)
        out[:, 7] = np.log10(power[:, radius > SF_SPLIT].mean(axis=1) + 1e-8)
        centred = luma - luma.mean(axis=(1, 2), keepdims=True)
        out[:, 8] = np.abs(centred - (prev - prev.mean(axis=(1, 2), keepdims=True))).mean(
            axis=(1, 2)
        )
        bins = np.linspace(0, 1, 33)
        for i in range(n):
            a = np.clip(np.rint(luma[i] * 255), 0, 255).astype(np.uint8)
            b = np.clip(np.rint(prev[i] * 255), 0, 255).astype(np.uint8)
            flow = cv2.calcOpticalFlowFarneback(b, a, None, 0.5, 2, 9, 2, 5, 1.1, 0)
            out[i, 9] = np.hypot(flow[..., 0], flow[..., 1]).mean() / width
            h1 = np.histogram(luma[i], bins)[0] / luma[i].size
            h0 = np.histogram(prev[i], bins)[0] / prev[i].size
            out[i, 10] = float(np.abs(h1 - h0).sum() > SCENE_CUT_THRESHOLD)
            if self._cascade is not None:
                found = self._cascade.detectMultiScale(a, scaleFactor=1.15, minNeighbors=4,
                                                       minSize=(12, 12))  # fmt: skip
                out[i, 11] = len(found)
        return out


class TinyConvNet(nn.Module):
    """Small convolutional backbone for user-trained stimulus embeddings (no torchvision).

    Parameters
    ----------
    n_outputs : int
        Embedding size.
    width : int
        Channels of the first convolution (doubled at each of the three stages).
    input_size : int
        Side of the square input the frames are resized to.
    """

    def __init__(self, n_outputs: int = 16, width: int = 8, input_size: int = 64) -> None:
        super().__init__()
        self.input_size = input_size
        layers: list[nn.Module] = []
        c_in = 3
        for stage in range(3):
            c_out = width * 2**stage
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GELU()]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c_in, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, 3, S, S)`` floats in 0..1 -> ``(n, n_outputs)``."""
        return self.head(self.features(x))


class TorchExtractor:
    """Learned frame embedding loaded from local weights.

    Parameters
    ----------
    path : Path | str
        A ``torch.export`` program (``.pt2``, exported with a dynamic batch dimension), a
        TorchScript file (``torch.jit.save``), or a ``torch.save`` dict with keys
        ``"arch": "tinyconv"``, ``"kwargs"`` (TinyConvNet arguments) and ``"state_dict"``.
        The model maps ``(n, 3, S, S)`` RGB in 0..1 to ``(n, k)`` features.
    input_size : int | None
        Side of the square network input; default: the model's ``input_size`` attribute
        or 64.
    """

    def __init__(self, path: Path | str, *, input_size: int | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"Stimulus model {path} does not exist.")
        if path.suffix == ".pt2":
            try:
                module = torch.export.load(str(path)).module()
            except Exception as err:  # noqa: BLE001 - any unreadable file is an input error
                raise InputError(f"Stimulus model {path} is not a torch.export program "
                                 f"({err}).") from None  # fmt: skip
        else:
            try:
                with warnings.catch_warnings():  # TorchScript is deprecated but still read
                    warnings.simplefilter("ignore", DeprecationWarning)
                    module = torch.jit.load(str(path), map_location="cpu")
            except (RuntimeError, ValueError):
                module = self._load_state_dict(path)
        if path.suffix != ".pt2":  # exported programs are already in inference form
            module = module.eval()
        self.module = module
        self.input_size = int(input_size or getattr(module, "input_size", 64))
        with torch.no_grad():
            n_out = self.module(torch.zeros(1, 3, self.input_size, self.input_size)).shape[-1]
        self.names = [f"emb_{i:03d}" for i in range(n_out)]

    @staticmethod
    def _load_state_dict(path: Path) -> nn.Module:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file is an input error
            raise InputError(f"Stimulus model {path} is neither TorchScript nor a state "
                             f"dict ({err}).") from None  # fmt: skip
        if not isinstance(state, dict) or state.get("arch") != "tinyconv":
            raise InputError(
                f"Stimulus model {path} must be TorchScript or a dict with arch 'tinyconv'."
            )
        module = TinyConvNet(**state.get("kwargs", {}))
        module.load_state_dict(state["state_dict"])
        return module

    @torch.no_grad()
    def __call__(self, frames: np.ndarray, previous: np.ndarray) -> np.ndarray:
        """Embeddings ``(n, k)`` of ``frames`` (``previous`` unused)."""
        size = (self.input_size, self.input_size)
        x = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])
        x = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
        return self.module(x).reshape(len(frames), -1).numpy().astype(np.float32)


def iter_frames(
    path: Path | str, *, width: int | None = ANALYSIS_WIDTH
) -> Iterator[tuple[float, np.ndarray]]:
    """Decode a video with PyAV, yielding ``(time_s, rgb uint8 (H, W, 3))``.

    Frames are resized to ``width`` pixels (aspect kept, even height) when given.
    """
    import av

    path = Path(path)
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as err:
        raise InputError(f"Stimulus video {path} cannot be decoded ({err}).") from None
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        for index, frame in enumerate(container.decode(stream)):
            t = float(frame.time) if frame.time is not None else index / rate
            rgb = frame.to_ndarray(format="rgb24")
            if width is not None and rgb.shape[1] != width:
                height = max(2, int(round(rgb.shape[0] * width / rgb.shape[1] / 2)) * 2)
                rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
            yield t, rgb


def extract_video_features(
    path: Path | str,
    *,
    fps: float = 10.0,
    extractors: Sequence[FrameExtractor] | None = None,
    width: int | None = ANALYSIS_WIDTH,
    chunk: int = 64,
) -> VideoFeatures:
    """Decode a video and compute frame features on a regular ``fps`` grid.

    Parameters
    ----------
    path : Path | str
        Video file (any format FFmpeg reads: .avi, .mp4 ...).
    fps : float
        Sampling rate of the features; the decoded frame shown at each grid time is used
        (all frames when the video is slower).
    extractors : sequence of FrameExtractor | None
        Default: ``[HandcraftedExtractor()]``.
    width : int | None
        Analysis width in pixels (frames are downscaled first).
    chunk : int
        Frames per extractor call.

    Returns
    -------
    VideoFeatures
        Times (s from video start), values and names.
    """
    extractors = list(extractors) if extractors else [HandcraftedExtractor()]
    names = [n for e in extractors for n in e.names]
    times: list[float] = []
    rows: list[np.ndarray] = []
    cur: list[np.ndarray] = []
    prev: list[np.ndarray] = []

    def flush() -> None:
        if cur:
            a, b = np.stack(cur), np.stack(prev)
            rows.append(np.concatenate([e(a, b) for e in extractors], axis=1))
            cur.clear()
            prev.clear()

    last = None
    next_t = 0.0
    for t, rgb in iter_frames(path, width=width):
        if t + 1e-6 >= next_t:
            times.append(t)
            cur.append(rgb)
            prev.append(rgb if last is None else last)
            next_t = (np.floor(t * fps + 1e-6) + 1) / fps
            if len(cur) >= chunk:
                flush()
        last = rgb
    flush()
    if not times:
        raise InputError(f"Stimulus video {path} has no decodable frames.")
    values = np.concatenate(rows).astype(np.float32)
    logger.info("%s: %d samples x %d features", Path(path).name, len(times), len(names))
    return VideoFeatures(np.asarray(times), values, names, str(path))


def checker_timecourse(
    events: pd.DataFrame, times: np.ndarray, *, block_s: float = 20.0
) -> np.ndarray:
    """Flicker state (0/1) of the checker task at ``times`` (s, run time) from events.

    Parameters
    ----------
    events : pandas.DataFrame
        Run events with ``onset`` and ``trial_type`` (or ``value``) columns; rows naming the
        flicker block (``S 25`` marker or a ``flicker`` trial type) start a flicker block
        lasting ``duration`` (``block_s`` when missing).
    times : numpy.ndarray
        Times at which to evaluate the state.
    block_s : float
        Default block length.

    Returns
    -------
    numpy.ndarray
        1.0 during flicker, 0.0 otherwise.
    """
    label = None
    for col in ("trial_type", "value", "description"):
        if col in events:
            text = events[col].astype(str).str.replace(" ", "").str.lower()
            hit = text.str.contains("s25") | text.str.contains("flicker")
            label = hit if label is None else (label | hit)
    state = np.zeros(len(times))
    if label is None:
        return state
    rows = events[label.to_numpy()]
    durations = (
        pd.to_numeric(rows.get("duration"), errors="coerce") if "duration" in rows else None
    )
    for i, onset in enumerate(pd.to_numeric(rows["onset"], errors="coerce")):
        dur = block_s
        if durations is not None and np.isfinite(durations.iloc[i]) and durations.iloc[i] > 1:
            dur = float(durations.iloc[i])
        state[(times >= onset) & (times < onset + dur)] = 1.0
    return state


def window_features(
    times: np.ndarray,
    values: np.ndarray,
    *,
    start_s: float,
    window_end_s: np.ndarray,
    window_s: float,
) -> np.ndarray:
    """Average features over the frames shown during each window.

    Parameters
    ----------
    times : numpy.ndarray
        Feature sample times from the start of the video (s).
    values : numpy.ndarray
        ``(n, F)`` features.
    start_s : float
        Run time at which the video started (task start marker).
    window_end_s : numpy.ndarray
        Run time of the end of each window (the volume's reference time).
    window_s : float
        Window length.

    Returns
    -------
    numpy.ndarray
        ``(n_windows, F)``; NaN rows for windows during which no frame was shown.
    """
    run_t = np.asarray(times) + start_s
    lo = np.searchsorted(run_t, np.asarray(window_end_s) - window_s, side="left")
    hi = np.searchsorted(run_t, np.asarray(window_end_s), side="right")
    csum = np.vstack([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0, dtype=float)])
    count = (hi - lo)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (csum[hi] - csum[lo]) / count
    out[(hi - lo) == 0] = np.nan
    return out.astype(np.float32)
