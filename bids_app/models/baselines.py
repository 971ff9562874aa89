"""Band-power ridge baselines of the VAEs: the standard EEG-informed fMRI model.

Two linear encoding models are fitted on the training windows, with the ridge penalty
chosen on the validation windows, and scored on the held-out windows exactly like the
VAEs (:mod:`bids_app.models.evaluate`):

- **EEG -> fMRI.** Every voxel is regressed on per-channel EEG band power in
  ``n_subwindows`` consecutive sub-windows of the window that precedes its volume (the
  EEG-informed fMRI model of Goldman et al. 2002 and Laufs et al. 2003, with the
  haemodynamic lag learnt as a finite impulse response over the sub-windows instead of a
  fixed HRF; Huth et al. 2016 for the voxel-wise penalty).
- **Inputs -> stimulus (VAE-2).** Each stimulus feature is regressed on the same EEG
  band-power features, on the fMRI voxels, or on both (VAE-2's inputs); the input set
  and the penalty are chosen on the validation windows.

Band power is the periodogram of each de-meaned sub-window summed over the bins of a
band. The bands are the canonical EEG bands cut at the Nyquist frequency (the lowest
starts above DC); a window rate at or below 8 Hz (simulations) leaves one broadband
band, the sub-window variance.

The penalty is chosen per target (voxel or feature) from a log-spaced grid by the
validation squared error, through one SVD of the standardised training features.

References
----------
Goldman, R. I., et al. (2002). Simultaneous EEG and fMRI of the alpha rhythm.
NeuroReport 13, 2487-2492.
Laufs, H., et al. (2003). EEG-correlated fMRI of human alpha activity. NeuroImage 19,
1463-1476.
Huth, A. G., et al. (2016). Natural speech reveals the semantic maps that tile human
cerebral cortex. Nature 532, 453-458.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Canonical EEG band edges (Hz); the last band ends at the Nyquist frequency at most.
BAND_EDGES = (0.0, 4.0, 8.0, 13.0, 30.0, 45.0)
#: Ridge penalties tried, relative to the number of training windows.
LAMBDA_GRID = tuple(10.0 ** np.arange(-3, 5))


def band_edges(sfreq: float | None) -> list[tuple[float, float]]:
    """Canonical EEG bands below the Nyquist frequency of windows sampled at ``sfreq``.

    Parameters
    ----------
    sfreq : float | None
        Window sampling rate (Hz); None gives one broadband band.

    Returns
    -------
    list of (float, float)
        ``(low, high)`` per band, ``low`` exclusive, ``high`` inclusive.
    """
    if sfreq is None:
        return [(0.0, np.inf)]
    nyquist = sfreq / 2
    edges = [e for e in BAND_EDGES[:-1] if e < nyquist] + [min(nyquist, BAND_EDGES[-1])]
    return list(zip(edges[:-1], edges[1:]))


def band_power_features(
    eeg: np.ndarray, sfreq: float | None, *, n_subwindows: int = 4
) -> np.ndarray:
    """Per-channel EEG band power in consecutive sub-windows of each window.

    Parameters
    ----------
    eeg : numpy.ndarray
        ``(n, C, T)`` windows.
    sfreq : float | None
        Window sampling rate (Hz); None: one broadband band.
    n_subwindows : int
        Equal consecutive sub-windows per window (``numpy.array_split`` of ``T``).

    Returns
    -------
    numpy.ndarray
        ``(n, C * n_subwindows * n_bands)`` float64, channel-major, then sub-window, then
        band: the periodogram power summed over the band's bins, divided by the
        sub-window length (the sub-window variance when one band covers all bins).
    """
    eeg = np.asarray(eeg, dtype=np.float64)
    bands = band_edges(sfreq)
    feats = []
    for seg in np.array_split(eeg, n_subwindows, axis=-1):
        n_t = seg.shape[-1]
        spec = np.fft.rfft(seg - seg.mean(-1, keepdims=True), axis=-1)
        power = np.abs(spec) ** 2 / n_t**2
        power[..., 1 : (n_t + 1) // 2] *= 2  # one-sided: positive and negative frequencies
        freqs = np.fft.rfftfreq(n_t, 1.0 / sfreq) if sfreq else np.arange(spec.shape[-1])
        feats.append(np.stack([power[..., (freqs > lo) & (freqs <= hi)].sum(-1)
                               for lo, hi in bands], axis=-1))  # fmt: skip
    return np.stack(feats, axis=2).reshape(len(eeg), -1)


@dataclass
class RidgeFit:
    """A ridge regression with one penalty per target, fitted on standardised inputs.

    Attributes
    ----------
    x_mean, x_scale : numpy.ndarray
        ``(p,)`` standardisation of the inputs (training windows).
    y_mean : numpy.ndarray
        ``(m,)`` training mean of the targets.
    coef : numpy.ndarray
        ``(p, m)`` coefficients on the standardised inputs.
    lambdas : numpy.ndarray
        ``(m,)`` penalty per target (absolute, in units of the standardised inputs).
    val_sse : numpy.ndarray
        ``(m,)`` validation squared error at the chosen penalty.
    """

    x_mean: np.ndarray
    x_scale: np.ndarray
    y_mean: np.ndarray
    coef: np.ndarray
    lambdas: np.ndarray
    val_sse: np.ndarray

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted targets ``(n, m)`` for inputs ``x`` ``(n, p)``."""
        return ((np.asarray(x, dtype=np.float64) - self.x_mean) / self.x_scale) @ self.coef \
            + self.y_mean


def fit_ridge(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    lambdas: Sequence[float] = LAMBDA_GRID,
    target_block: int = 2048,
) -> RidgeFit:
    """Ridge regression with the penalty of each target chosen on validation windows.

    Inputs are standardised with the training mean and standard deviation (constant
    inputs are left at zero), targets centred on the training mean. For each penalty
    ``lambda * n_train`` of the grid the coefficients come from one SVD of the training
    inputs; each target keeps the penalty with the smallest validation squared error.

    Parameters
    ----------
    x_train, y_train : numpy.ndarray
        ``(n, p)`` inputs and ``(n, m)`` targets of the training windows.
    x_val, y_val : numpy.ndarray
        The same for the validation windows.
    lambdas : sequence of float
        Penalties relative to the number of training windows.
    target_block : int
        Targets scored at once on the validation windows (memory).

    Returns
    -------
    RidgeFit
        The fitted model.
    """
    x_train = np.asarray(x_train, dtype=np.float64)
    y_train = np.asarray(y_train, dtype=np.float64)
    x_mean = x_train.mean(0)
    x_scale = x_train.std(0)
    x_scale[x_scale == 0] = np.inf  # constant input: coefficient 0
    y_mean = y_train.mean(0)
    xs = (x_train - x_mean) / x_scale
    xv = (np.asarray(x_val, dtype=np.float64) - x_mean) / x_scale
    yv = np.asarray(y_val, dtype=np.float64) - y_mean
    u, s, vt = np.linalg.svd(xs, full_matrices=False)
    uty = u.T @ (y_train - y_mean)
    xv_v = xv @ vt.T
    penalties = np.asarray(lambdas, dtype=np.float64) * len(xs)
    best_sse = np.full(y_train.shape[1], np.inf)
    best = np.zeros(y_train.shape[1], dtype=int)
    for start in range(0, y_train.shape[1], target_block):  # bounded memory over voxels
        cols = slice(start, start + target_block)
        for i, lam in enumerate(penalties):
            pred = xv_v @ (uty[:, cols] * (s / (s**2 + lam))[:, None])
            sse = ((pred - yv[:, cols]) ** 2).sum(0)
            better = start + np.flatnonzero(sse < best_sse[cols])
            best[better], best_sse[better] = i, sse[better - start]
    shrink = s[:, None] / (s[:, None] ** 2 + penalties[best][None, :])  # (k, m)
    coef = vt.T @ (uty * shrink)
    return RidgeFit(x_mean, x_scale, y_mean, coef, penalties[best], best_sse)


def _subsample(idx: np.ndarray, max_windows: int, seed: int) -> np.ndarray:
    idx = np.asarray(idx)
    if len(idx) <= max_windows:
        return idx
    return np.sort(np.random.default_rng(seed).permutation(idx)[:max_windows])


def fit_eeg_to_fmri_ridge(
    arrays: Mapping[str, np.ndarray],
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    sfreq: float | None,
    *,
    n_subwindows: int = 4,
    seed: int = 0,
    max_windows: int = 2000,
) -> Callable[[np.ndarray], np.ndarray]:
    """Voxel-wise ridge of fMRI on EEG band power (the EEG-informed fMRI baseline).

    Parameters
    ----------
    arrays : mapping
        ``{"eeg" (n, C, T), "fmri" (n, V)}`` window arrays (memory maps are fine).
    train_idx, val_idx : numpy.ndarray
        Training windows (fit) and validation windows (penalty per voxel); at most
        ``max_windows`` of each, drawn with ``seed``.
    sfreq : float | None
        Window sampling rate (bands, :func:`band_edges`).
    n_subwindows : int
        Sub-windows of each window (the lag structure the ridge can learn).
    seed, max_windows : int
        Subsample of the training windows.

    Returns
    -------
    callable
        ``predict(eeg)``: fMRI ``(n, V)`` predicted from EEG windows ``(n, C, T)``.
    """
    train = _subsample(train_idx, max_windows, seed)
    val = _subsample(val_idx, max_windows, seed)

    def features(idx: np.ndarray) -> np.ndarray:
        return band_power_features(arrays["eeg"][idx], sfreq, n_subwindows=n_subwindows)

    fit = fit_ridge(features(train), arrays["fmri"][train], features(val), arrays["fmri"][val])
    return lambda eeg: fit.predict(band_power_features(eeg, sfreq, n_subwindows=n_subwindows))


STIMULUS_INPUTS = ("eeg_band_power", "fmri", "both")


def fit_stimulus_ridge(
    arrays: Mapping[str, np.ndarray],
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    sfreq: float | None,
    *,
    n_subwindows: int = 4,
    seed: int = 0,
    max_windows: int = 2000,
) -> tuple[Callable[[np.ndarray], np.ndarray], list[str]]:
    """Ridge of each stimulus feature on VAE-2's inputs (the VAE-2 baseline).

    For every feature the inputs (EEG band power as in :func:`fit_eeg_to_fmri_ridge`, the
    fMRI voxels, or both, each standardised) and the penalty are chosen by the validation
    squared error; windows where the feature is not observed (NaN) are left out of its
    fit and choice.

    Parameters
    ----------
    arrays : mapping
        ``{"eeg", "fmri", "stimulus" (n, F)}`` window arrays.
    train_idx, val_idx : numpy.ndarray
        Training and validation windows.
    sfreq : float | None
        Window sampling rate.
    n_subwindows, seed, max_windows : int
        As in :func:`fit_eeg_to_fmri_ridge`.

    Returns
    -------
    predict : callable
        ``predict(idx)``: stimulus features ``(len(idx), F)`` of windows ``idx``
        (NaN for a feature without enough observed training or validation windows).
    inputs : list of str
        The input set chosen per feature (one of :data:`STIMULUS_INPUTS`, or ``""``).
    """
    train = _subsample(train_idx, max_windows, seed)
    val = _subsample(val_idx, max_windows, seed)

    def inputs(idx: np.ndarray) -> dict[str, np.ndarray]:
        eeg = band_power_features(arrays["eeg"][idx], sfreq, n_subwindows=n_subwindows)
        fmri = np.asarray(arrays["fmri"][idx], dtype=np.float64)
        return {"eeg_band_power": eeg, "fmri": fmri, "both": np.hstack([eeg, fmri])}

    x_tr, x_va = inputs(train), inputs(val)
    y_tr = np.asarray(arrays["stimulus"][train], dtype=np.float64)
    y_va = np.asarray(arrays["stimulus"][val], dtype=np.float64)
    chosen: list[tuple[str, RidgeFit, int] | None] = [None] * y_tr.shape[1]
    ok_tr, ok_va = np.isfinite(y_tr), np.isfinite(y_va)
    # features observed in the same windows share one SVD per input set
    patterns: dict[bytes, list[int]] = {}
    for j in range(y_tr.shape[1]):
        if ok_tr[:, j].sum() >= 5 and ok_va[:, j].sum() >= 2:
            key = ok_tr[:, j].tobytes() + ok_va[:, j].tobytes()
            patterns.setdefault(key, []).append(j)
    for cols in patterns.values():
        rt, rv = ok_tr[:, cols[0]], ok_va[:, cols[0]]
        fits = {name: fit_ridge(x_tr[name][rt], y_tr[np.ix_(rt, cols)],
                                x_va[name][rv], y_va[np.ix_(rv, cols)])
                for name in STIMULUS_INPUTS}  # fmt: skip
        for k, j in enumerate(cols):
            name = min(STIMULUS_INPUTS, key=lambda n: float(fits[n].val_sse[k]))
            chosen[j] = (name, fits[name], k)

    def predict(idx: np.ndarray) -> np.ndarray:
        x = inputs(np.asarray(idx))
        out = np.full((len(idx), len(chosen)), np.nan)
        for j, pick in enumerate(chosen):
            if pick is not None:
                name, fit, k = pick
                out[:, j] = fit.predict(x[name])[:, k]
        return out

    return predict, [pick[0] if pick else "" for pick in chosen]
