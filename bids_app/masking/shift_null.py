"""Circular-shift null of the masking likelihood drop: exact moments under autocorrelation.

The null hypothesis of a (unit, output) test is that the series of changes a unit causes
in the model's prediction (one per window it is masked in) carries no information about
the series of observed values of that output. Both series are autocorrelated: windows
overlap (an EEG timestamp sits in 4 consecutive NATVIEW windows), BOLD is smooth, and
stimulus features change slowly. Drawing every window's value independently
("permuted windows") breaks that autocorrelation, underestimates the variance of a sum
over consecutive windows and makes p-values too small.

This null shifts the observed series of each run circularly against the windows: a null
draw evaluates each occurrence in window ``w`` at the value observed in window
``w + s_r`` (modulo the run length ``L_r``), one uniform shift ``s_r`` per run, drawn
independently across runs. What is exchangeable is the *shift*: under the null, and for
a stationary observed series, the observed alignment (``s = 0``) is one draw from the
uniform distribution over the ``L_r`` alignments, and every alignment keeps the series'
own autocorrelation and its joint distribution across outputs, while the alignment with
the unit's changes is broken. This is the circular-shift ("toroidal") randomisation of
time series (the circular block of Politis & Romano 1992 taken as one block), used for
autocorrelated data where window-wise permutation or the i.i.d. bootstrap is invalid
(Künsch 1989; Lahiri 2003).

The likelihood change ``dll_i(y) = a_i.y^2 + b_i.y + c_i`` is quadratic in the value, so
the null statistic ``-mean_i dll_i(y_{w_i + s})`` has, over the uniform shifts, the exact

* mean ``-mean_i (coef_i . mu_r + sum c_i)`` with ``mu_r`` the run mean of ``(y^2, y)``,
* variance ``sum_r sum_{i,j in r} coef_i' Gamma_r(p_j - p_i) coef_j / n^2`` with
  ``Gamma_r(l) = mean_w yc_w yc_{w+l}'`` the circular autocovariance of the run-centred
  ``(y^2, y)`` at lag ``l`` and ``p`` the window's position in its run.

The variance is the permuted-windows variance (the ``l = 0`` term) plus every lagged
cross term, which is the effective-sample-size correction of Bartlett (1935) and Bayley &
Hammersley (1946) made exact for this null. Units with few occurrences (EEG timestamps)
sum the lag terms pair by pair; units present in every window (voxels) get the variance
of the circular cross-correlation over all shifts by FFT. A feature defined only in some
windows is shifted along the windows where it is defined (its own circle per run).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bids_app.masking.statistics import segment_sum

#: Units with at most this many occurrences sum lag terms pair by pair; more: FFT.
SPARSE_MAX_OCCURRENCES = 32


@dataclass(frozen=True)
class RunCircles:
    """The circular time axis of every run: which windows it holds, in order.

    Attributes
    ----------
    run : numpy.ndarray
        ``(N,)`` run index of each window (``-1``: not on any circle, unobserved).
    pos : numpy.ndarray
        ``(N,)`` position of the window in its run (``-1``: unobserved).
    windows : list of numpy.ndarray
        Per run, the windows in position order (length ``L_r``).
    """

    run: np.ndarray
    pos: np.ndarray
    windows: list[np.ndarray]

    @classmethod
    def build(cls, window_runs: np.ndarray | None, observed: np.ndarray) -> RunCircles:
        """Circles of the ``observed`` windows (bool ``(N,)``) of each run, in window order."""
        n = len(observed)
        codes = (np.zeros(n, dtype=np.int64) if window_runs is None
                 else np.unique(np.asarray(window_runs), return_inverse=True)[1])
        run, pos, windows = np.full(n, -1), np.full(n, -1), []
        for r in range(int(codes.max(initial=-1)) + 1):
            members = np.flatnonzero((codes == r) & observed)
            if len(members) == 0:
                continue
            run[members], pos[members] = len(windows), np.arange(len(members))
            windows.append(members)
        return cls(run, pos, windows)

    def shifted(self, win: np.ndarray, rng: np.random.Generator, n_draws: int) -> np.ndarray:
        """``(n_draws, n)`` windows of occurrences in ``win`` under random run shifts."""
        lengths = np.array([len(w) for w in self.windows])
        shifts = rng.integers(0, lengths, size=(n_draws, len(lengths)))
        run, pos = self.run[win], self.pos[win]
        out = np.empty((n_draws, len(win)), dtype=np.int64)
        for r, members in enumerate(self.windows):
            sel = run == r
            out[:, sel] = members[(pos[sel][None] + shifts[:, [r]]) % len(members)]
        return out


def _bilinear(x: np.ndarray, gamma: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``x_m' gamma_g y_m`` for ``x, y`` of shape ``(m, G, K)`` and ``gamma`` ``(G, K, K)``."""
    return (np.matmul(x.transpose(1, 0, 2), gamma).transpose(1, 0, 2) * y).sum(axis=-1)


class CircularShiftNull:
    """Exact null moments of one head's likelihood drop under circular shifts within runs.

    Parameters
    ----------
    values : numpy.ndarray
        ``(N, G, K)`` observed values of every window (NaN: the group is not defined in
        that window; it is then shifted along its defined windows only).
    window_runs : numpy.ndarray | None
        ``(N,)`` run of every window (None: one run). Windows of a run are taken in the
        order given.
    """

    def __init__(self, values: np.ndarray, window_runs: np.ndarray | None) -> None:
        values = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(values)
        self._values = values
        if finite.all():  # one class: every group defined in every window
            self.classes = [(np.arange(values.shape[1]),
                             RunCircles.build(window_runs, np.ones(len(values), bool)))]
        else:
            self._values = np.where(finite, values, 0.0)
            observed = finite.all(axis=-1)  # (N, G)
            patterns, group_class = np.unique(observed.T, axis=0, return_inverse=True)
            self.classes = [(np.flatnonzero(group_class.ravel() == k),
                             RunCircles.build(window_runs, patterns[k]))
                            for k in range(len(patterns))]
        self._cache: dict[tuple, np.ndarray] = {}

    def shifted(self, win: np.ndarray, rng: np.random.Generator, n_draws: int) -> np.ndarray:
        """``(n_draws, n)`` windows under random run shifts (every group observed)."""
        if len(self.classes) != 1:
            raise ValueError("pvalue='permutation' needs every output observed in every "
                             "masked window; use pvalue='gaussian'.")
        return self.classes[0][1].shifted(win, rng, n_draws)

    # ------------------------------------------------------------------ per-run tables
    def _run_features(self, k: int, quadratic: bool, r: int) -> np.ndarray:
        """``(y^2, y)`` (or ``y``) of class ``k``'s groups in run ``r``, in position order."""
        groups, circles = self.classes[k]
        rows = self._values[circles.windows[r]]
        y = rows if len(groups) == rows.shape[1] else rows[:, groups]
        return np.concatenate([y**2, y], axis=-1) if quadratic else y

    def _run_means(self, k: int, quadratic: bool) -> np.ndarray:
        """``(R, G_k, K')`` run means of the features (the null mean of each window)."""
        key = ("means", k, quadratic)
        if key not in self._cache:
            self._cache[key] = np.stack([self._run_features(k, quadratic, r).mean(axis=0)
                                         for r in range(len(self.classes[k][1].windows))])
        return self._cache[key]

    def _centred(self, k: int, quadratic: bool, r: int) -> np.ndarray:
        return self._run_features(k, quadratic, r) - self._run_means(k, quadratic)[r]

    def _autocov(self, k: int, quadratic: bool, r: int, lag: int) -> np.ndarray:
        """``Gamma_r(lag)``, ``(G_k, K', K')``: circular autocovariance in run ``r``."""
        key = ("autocov", k, quadratic, r, lag)
        if key not in self._cache:
            yr = self._centred(k, quadratic, r)
            self._cache[key] = np.einsum("wgk,wgl->gkl", yr, np.roll(yr, -lag, axis=0),
                                         optimize=True) / len(yr)
        return self._cache[key]

    def _spectrum(self, k: int, quadratic: bool, r: int) -> np.ndarray:
        """Real FFT along the run of the centred features of run ``r`` (cached)."""
        key = ("spectrum", k, quadratic, r)
        if key not in self._cache:
            self._cache[key] = np.fft.rfft(self._centred(k, quadratic, r), axis=0)
        return self._cache[key]

    @property
    def n_groups(self) -> int:
        """Number of output groups ``G``."""
        return self._values.shape[1]

    @property
    def group_size(self) -> int:
        """Number of values ``K`` in each output group."""
        return self._values.shape[2]

    def centred_values(self, r: int, k: int = 0) -> np.ndarray:
        """``(L_r, G_k, K)`` values of class ``k``'s groups in run ``r``, in position order,
        minus their run mean."""
        return self._centred(k, False, r)

    def run_means(self, k: int = 0) -> np.ndarray:
        """``(R, G_k, K)`` run means of class ``k``'s values (the null mean of a window)."""
        return self._run_means(k, False)

    def autocovariance(self, r: int, lag: int, k: int = 0) -> np.ndarray:
        """``(G_k, K, K)`` circular autocovariance of run ``r`` at ``lag`` (cached)."""
        return self._autocov(k, False, r, lag)

    def spectrum(self, r: int, k: int = 0) -> np.ndarray:
        """``(L_r // 2 + 1, G_k, K)`` real FFT of the run-centred values of run ``r``."""
        return self._spectrum(k, False, r)

    # ------------------------------------------------------------------ variance
    def _lag_sums(self, k, quadratic, coef, run, pos, unit, starts) -> np.ndarray:
        """Variance as ``sum_{i,j} coef_i' Gamma(p_j - p_i) coef_j``, pair offset by pair
        offset within each unit (units with few occurrences)."""
        lengths = np.array([len(w) for w in self.classes[k][1].windows])
        n = len(coef)
        acc = np.zeros(coef.shape[:2])
        for offset in range(int(np.diff(starts).max(initial=0))):
            i = np.arange(n - offset)
            j = i + offset
            ok = (unit[i] == unit[j]) & (run[i] >= 0) & (run[i] == run[j])
            i, j = i[ok], j[ok]
            lag = (pos[j] - pos[i]) % lengths[run[i]] if len(i) else i
            key = run[i] * (lengths.max(initial=1) + 1) + lag
            for value in np.unique(key):
                sel = key == value
                gamma = self._autocov(k, quadratic, int(run[i][sel][0]), int(lag[sel][0]))
                acc[i[sel]] += (1 if offset == 0 else 2) * _bilinear(coef[i[sel]], gamma,
                                                                     coef[j[sel]])
        return segment_sum(acc, starts)

    def _circular(self, k, quadratic, coef, run, pos, unit, n_units) -> np.ndarray:
        """Variance as the mean square over shifts of the circular cross-correlation of each
        unit's coefficient series with the centred run (FFT; units in many windows)."""
        circles = self.classes[k][1]
        out = np.zeros((n_units, coef.shape[1]))
        for r, members in enumerate(circles.windows):
            sel = np.flatnonzero(run == r)
            if len(sel) == 0:
                continue
            units_r, row = np.unique(unit[sel], return_inverse=True)
            n_r, length = len(units_r), len(members)
            if len(sel) == n_r * length and np.array_equal(pos[sel],
                                                           np.tile(np.arange(length), n_r)):
                series = coef[sel].reshape(n_r, length, *coef.shape[1:])  # every window
            else:
                series = np.zeros((n_r, length, *coef.shape[1:]))
                np.add.at(series, (row, pos[sel]), coef[sel])
            spec = np.einsum("ufgk,fgk->ufg", np.conj(np.fft.rfft(series, axis=1)),
                             self._spectrum(k, quadratic, r))
            corr = np.fft.irfft(spec, n=length, axis=1)  # (u, L, G)
            out[units_r] += (corr**2).mean(axis=1)
        return out

    def variance(self, coef: np.ndarray, win: np.ndarray, starts: np.ndarray,
                 k: int = 0, quadratic: bool = False) -> np.ndarray:
        """Variance over shifts of ``sum_i coef_i . yc_{w_i + s}`` per unit and group.

        Parameters
        ----------
        coef : numpy.ndarray
            ``(n, G_k, K')`` coefficients of the occurrences of class ``k``'s groups (zero
            rows for occurrences to leave out), grouped by unit by ``starts``.
        win : numpy.ndarray
            ``(n,)`` window of each occurrence.
        starts : numpy.ndarray
            ``(U + 1,)`` segment offsets.
        k : int
            Observation class (groups defined in the same windows).
        quadratic : bool
            ``coef`` multiplies ``(y^2, y)`` rather than ``y``.

        Returns
        -------
        numpy.ndarray
            ``(U, G_k)``, summed over runs (shifts are independent across runs).
        """
        circles = self.classes[k][1]
        run, pos = circles.run[win], circles.pos[win]
        counts = np.diff(starts)
        unit = np.repeat(np.arange(len(counts)), counts)
        if counts.max(initial=0) <= SPARSE_MAX_OCCURRENCES:
            return self._lag_sums(k, quadratic, coef, run, pos, unit, starts)
        return self._circular(k, quadratic, coef, run, pos, unit, len(counts))

    def moments(self, a: np.ndarray | None, b: np.ndarray, c: np.ndarray, win: np.ndarray,
                starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact mean and SD over shifts of each unit's statistic ``-mean_i dll_i``.

        ``dll_i(y) = sum_K (a_i y^2 + b_i y + c_i)`` (``a`` None: linear). Each unit's mean
        runs over its occurrences in windows where the group is defined (NaN: none).

        Returns
        -------
        mean, sd : numpy.ndarray
            ``(U, G)``.
        """
        n_units = len(starts) - 1
        mean = np.full((n_units, b.shape[1]), np.nan)
        sd = np.full_like(mean, np.nan)
        quadratic = a is not None
        for k, (groups, circles) in enumerate(self.classes):
            if not circles.windows:  # never defined: untested
                continue
            coef = b[:, groups] if a is None else np.concatenate([a[:, groups], b[:, groups]],
                                                                   axis=-1)
            ok = circles.run[win] >= 0
            coef = coef * ok[:, None, None]
            run_means = self._run_means(k, quadratic)
            e = (coef * run_means[np.where(ok, circles.run[win], 0)]).sum(axis=-1)
            e += c[:, groups].sum(axis=-1) * ok[:, None]
            count = segment_sum(ok.astype(float), starts)[:, None]
            var = self.variance(coef, win, starts, k=k, quadratic=quadratic)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean[:, groups] = -segment_sum(e, starts) / count
                sd[:, groups] = np.sqrt(np.maximum(var, 0.0)) / count
        return mean, sd
