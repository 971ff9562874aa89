"""Gradient and pulse-artifact removal: eegfmri vs MNE, side by side, on simulator truth.

Usage::

    python benchmarks/eeg_artifacts.py [--scale tiny|demo|natview] [--realism ideal|hard]
                                       [--output table.md] [--cache DIR] [--n-jobs N]

One run simulates a 64-channel 5 kHz in-scanner recording (``tiny`` 20 volumes, ``demo``
60, ``natview`` 289 volumes = 10 min), then times and scores

- gradient: eegfmri (:func:`bids_app.eeg.gradient.remove_gradient_artifact`, without and
  with adaptive noise cancellation) vs MNE's volume
  AAS (:func:`mne.preprocessing.remove_fmri_gradient_artifact`, window (4, 4), followed by
  the same 70 Hz low-pass so both outputs cover the same band);
- pulse: eegfmri (:func:`bids_app.eeg.cardiac.remove_bcg_artifact`, R-peak detection
  included) vs :func:`mne.preprocessing.apply_pca_obs` (4 components, given eegfmri's
  R-peaks), both on eegfmri's gradient-corrected data (BCG rows: time of that step only).

Scores (EEG channels, inside the scan): RMS error vs the noise-free truth relative to the
sensor noise RMS (1-70 Hz; 1.0 = as good as the noise allows), power reduction at the slice
harmonics below 70 Hz, the cardiac-locked residual (RMS of the beat-locked average of
the error / of the BCG, 0.5-40 Hz) and, for the BCG rows, the total RMS error within
+-0.5 s of each R-peak relative to the noise there (1-40 Hz). ``--realism hard`` simulates
hard-mode artifacts (:mod:`bids_app.simulate.realism`) and runs the gradient step with the
correct, an absent and a wrong SliceTiming (the onsets then come from the EEG). Peak memory
is the tracemalloc peak of each call (it includes the copy of the recording that every
method makes); CPU time is the process time, the better measure on a shared machine.
eegfmri runs with ``--n-jobs`` threads (default: the CPUs available); ``--cache DIR`` keeps
the simulated recording as .npy files between runs.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import mne
import numpy as np
from scipy import signal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bids_app.eeg.cardiac import detect_qrs, remove_bcg_artifact  # noqa: E402
from bids_app.eeg.gradient import remove_gradient_artifact  # noqa: E402
from bids_app.eeg.kernels import n_threads  # noqa: E402
from bids_app.natview import facts as nv  # noqa: E402
from bids_app.simulate.artifacts import simulate_artifacts  # noqa: E402
from bids_app.simulate.realism import (  # noqa: E402
    SIDECAR_SLICE_TIMING,
    resolve_realism,
    sidecar_slice_timing,
    volume_marker_samples,
)

SCALES = {"tiny": 20, "demo": 60, "natview": 289}
SFREQ = nv.EEG_SFREQ
TR_SAMPLES = int(round(nv.TR * SFREQ))


def simulate(n_volumes: int, seed: int = 0, realism: str = "ideal"):
    """Recording (RawArray), truth without gradient and noise, noise, BCG, R-peaks."""
    rng = np.random.default_rng(seed)
    extra = int(3 * SFREQ)
    n = 2 * extra + TR_SAMPLES * n_volumes
    onsets = volume_marker_samples(extra, n_volumes, TR_SAMPLES, resolve_realism(realism))
    art = simulate_artifacts(n, SFREQ, onsets / SFREQ, nv.slice_timing(), rng,
                             realism=realism)  # fmt: skip
    eeg = [nv.CHANNEL_NAMES.index(c) for c in nv.EEG_CHANNELS]
    clean = np.zeros((64, n), dtype=np.float32)
    bg = signal.lfilter([1.0], [1.0, -0.999], rng.standard_normal((len(eeg), n),
                                                                   dtype=np.float32))  # fmt: skip
    bg = signal.sosfiltfilt(signal.butter(2, 0.5, "highpass", fs=SFREQ, output="sos"), bg)
    clean[eeg] = 10e-6 * bg / bg.std(axis=1, keepdims=True)
    del bg
    t = np.arange(n) / SFREQ
    clean[eeg] += (10e-6 * np.sin(2 * np.pi * 10 * t)).astype(np.float32)
    clean += art.bcg + art.line
    clean[nv.CHANNEL_NAMES.index("ECG")] = art.ecg
    for row, name in zip(art.eog, nv.EOG_CHANNELS):
        clean[nv.CHANNEL_NAMES.index(name)] += row
    data = clean.astype(np.float64)
    data += art.gradient
    data += art.noise
    info = mne.create_info(list(nv.CHANNEL_NAMES), SFREQ,
                           [nv.CHANNEL_TYPES[c] for c in nv.CHANNEL_NAMES])  # fmt: skip
    raw = mne.io.RawArray(data, info, verbose=False)
    raw.set_annotations(mne.Annotations(onsets / SFREQ, 0.0, "Response/R128"))
    return raw, clean, art.noise, art.bcg, art.r_peaks_s, onsets


def simulate_cached(n_volumes: int, cache: Path | None, realism: str = "ideal"):
    """:func:`simulate`, loaded from / saved to ``cache`` (a folder) when given."""
    names = ("data", "clean", "noise", "bcg", "r_peaks", "onsets")
    files = [cache / f"eeg_artifacts_{realism}_{n_volumes}_{k}.npy" for k in names] if cache \
        else []  # fmt: skip
    if files and all(f.exists() for f in files):
        data, clean, noise, bcg, r_peaks, onsets = (np.load(f) for f in files)
        info = mne.create_info(list(nv.CHANNEL_NAMES), SFREQ,
                               [nv.CHANNEL_TYPES[c] for c in nv.CHANNEL_NAMES])  # fmt: skip
        raw = mne.io.RawArray(data, info, verbose=False)
        raw.set_annotations(mne.Annotations(onsets / SFREQ, 0.0, "Response/R128"))
        return raw, clean, noise, bcg, r_peaks, onsets
    raw, *rest = simulate(n_volumes, realism=realism)
    if files:
        cache.mkdir(parents=True, exist_ok=True)
        for f, arr in zip(files, [raw._data, *rest]):
            np.save(f, arr)
    return (raw, *rest)


def measure(func):
    """Run ``func``; return (result, (wall s, CPU s), peak MiB of new allocations)."""
    gc.collect()
    tracemalloc.start()
    t0, c0 = time.perf_counter(), time.process_time()
    out = func()
    elapsed = (time.perf_counter() - t0, time.process_time() - c0)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return out, elapsed, peak


def _band(x, lo, hi):
    return signal.sosfiltfilt(signal.butter(4, [lo, hi], "bandpass", fs=SFREQ, output="sos"),
                              x, axis=-1)  # fmt: skip


def scores(corrected, truth, noise, bcg, r_peaks, scan, raw_before, *, bcg_removed):
    """Error/noise, slice-harmonic reduction (dB), cardiac-locked residual and error/noise
    within +-0.5 s of the R-peaks (1-40 Hz) (both None without a BCG step).

    The truth is the recording without gradient artifact and sensor noise (and without the
    BCG when ``bcg_removed``), low-passed at 70 Hz like the outputs.
    """
    lp = signal.butter(4, 70.0, "lowpass", fs=SFREQ, output="sos")
    ref = signal.sosfiltfilt(lp, truth - bcg if bcg_removed else truth, axis=-1)
    err = _band(corrected - ref, 1, 70)[:, scan]
    nz = _band(noise, 1, 70)[:, scan]
    ratio = float(np.sqrt(np.mean(err**2) / np.mean(nz**2)))
    slices = (nv.N_SLICES / (nv.LAST_SLICE_TIME * 38 / 37)) * np.arange(1, 4)
    f, pb = signal.welch(raw_before[:, scan], SFREQ, nperseg=int(8 * SFREQ))
    _, pa = signal.welch(corrected[:, scan], SFREQ, nperseg=int(8 * SFREQ))
    near = (np.abs(f[:, None] - slices[None, :]) <= 0.25).any(axis=1)
    red = float(10 * np.log10(pb[:, near].sum() / pa[:, near].sum()))
    resid = _band(corrected - signal.sosfiltfilt(lp, truth - bcg, axis=-1) - noise, 0.5, 40)
    ref_b = _band(bcg, 0.5, 40)
    lags = np.arange(int(0.8 * SFREQ))
    ev = np.round(r_peaks * SFREQ).astype(int)
    ev = ev[(ev > scan.start) & (ev + lags[-1] < scan.stop)]
    locked = resid[:, ev[:, None] + lags].mean(axis=1)
    ref_l = ref_b[:, ev[:, None] + lags].mean(axis=1)
    card = float(np.sqrt(np.mean(locked**2) / np.mean(ref_l**2)))
    if not bcg_removed:
        return ratio, red, None, None
    near = np.zeros(truth.shape[1], bool)
    for r in ev:
        near[r - int(0.5 * SFREQ): r + int(0.5 * SFREQ)] = True
    near &= np.isin(np.arange(truth.shape[1]), np.arange(scan.start, scan.stop))
    err_b = _band(corrected - signal.sosfiltfilt(lp, truth - bcg, axis=-1), 1, 40)[:, near]
    nz_b = _band(noise, 1, 40)[:, near]
    return ratio, red, card, float(np.sqrt(np.mean(err_b**2) / np.mean(nz_b**2)))


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="tiny")
    parser.add_argument("--channels", type=int, default=16,
                        help="EEG channels scored (all 64 are always processed)")
    parser.add_argument("--realism", choices=("ideal", "hard"), default="ideal",
                        help="artifact realism (bids_app.simulate.realism); hard also scores "
                        "the gradient step with correct, absent and wrong SliceTiming")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder keeping the simulated recording between runs")
    parser.add_argument("--n-jobs", type=int, default=-1,
                        help="threads of the eegfmri steps (default -1: every CPU available)")
    args = parser.parse_args(argv)
    n_vol = SCALES[args.scale]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    raw, clean, noise, bcg, r_peaks, onsets = simulate_cached(n_vol, args.cache, args.realism)
    print(f"simulated {n_vol} volumes x 64 channels in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)  # fmt: skip
    eeg = [nv.CHANNEL_NAMES.index(c) for c in nv.EEG_CHANNELS]
    picks = eeg[:: max(1, len(eeg) // args.channels)][: args.channels]
    scan = slice(int(onsets[0]), int(onsets[-1]) + TR_SAMPLES)
    before = raw._data[picks].copy()
    rows = []

    def record(name, corrected, seconds, mib, bcg_removed=False):
        r, d, c, b = scores(corrected, clean[picks], noise[picks], bcg[picks], r_peaks, scan,
                            before, bcg_removed=bcg_removed)  # fmt: skip
        rows.append((name, seconds, mib, r, d, c, b))
        print(rows[-1], file=sys.stderr)

    real = resolve_realism(args.realism)
    # "correct" last: its output feeds the BCG rows
    variants = sorted(SIDECAR_SLICE_TIMING, key="correct".__eq__) if real.hard else ["correct"]
    for variant in variants:
        timing = sidecar_slice_timing(nv.slice_timing(), nv.TR, replace(
            real, sidecar_slice_timing=variant))  # fmt: skip
        (ours, grep), sec, mib = measure(lambda timing=timing: remove_gradient_artifact(
            raw, slice_timing=timing, n_slices=nv.N_SLICES, tr=nv.TR, n_jobs=args.n_jobs))
        record(f"gradient: eegfmri (slice template + alignment + OBS, 70 Hz LP), SliceTiming "
               f"{variant}", ours._data[picks], sec, mib)  # fmt: skip
    total = [sec, mib]
    (anc, _), sec, mib = measure(lambda: remove_gradient_artifact(
        raw, slice_timing=nv.slice_timing(), tr=nv.TR, anc=True, n_jobs=args.n_jobs))
    record("gradient: eegfmri + ANC (optional)", anc._data[picks], sec, mib)
    del anc
    gc.collect()

    def mne_aas():
        out = mne.preprocessing.remove_fmri_gradient_artifact(raw, onsets, tr_tol=2,
                                                              verbose=False)  # fmt: skip
        return out.filter(None, 70.0, picks="all", verbose=False)

    aas, sec, mib = measure(mne_aas)
    record("gradient: MNE remove_fmri_gradient_artifact (AAS 4+4) + 70 Hz LP",
           aas._data[picks], sec, mib)  # fmt: skip
    del aas
    gc.collect()
    (bout, brep), sec, mib = measure(lambda: remove_bcg_artifact(ours, n_jobs=args.n_jobs))
    record("BCG: eegfmri (OBS, 4 components)", bout._data[picks], sec, mib, True)
    total = [(total[0][0] + sec[0], total[0][1] + sec[1]), max(total[1], mib)]
    del bout
    gc.collect()
    peaks, _, _ = detect_qrs(ours.get_data(picks=["ECG"])[0], SFREQ)
    names = [ours.ch_names[i] for i in mne.pick_types(ours.info, eeg=True, eog=True)]
    mout, sec, mib = measure(lambda: mne.preprocessing.apply_pca_obs(
        ours, picks=names, qrs_times=peaks / SFREQ, verbose=False))
    record("BCG: MNE apply_pca_obs (4 components)", mout._data[picks], sec, mib, True)
    header = ("| method | wall time (s) | CPU time (s) | peak memory (MiB) | error / noise floor"
              " | slice-harmonic reduction (dB) | cardiac-locked residual | error / noise "
              "within 0.5 s of R-peaks (1-40 Hz) |\n|---|---|---|---|---|---|---|---|\n")
    body = "".join(f"| {n} | {s[0]:.1f} | {s[1]:.1f} | {m:.0f} | {r:.2f} | {d:.1f} | "
                   f"{'n/a' if c is None else f'{c:.3f}'} | "
                   f"{'n/a' if b is None else f'{b:.2f}'} |\n"
                   for n, s, m, r, d, c, b in rows)  # fmt: skip
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
               f"Python {platform.python_version()}, MNE {mne.__version__}, "
               f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, eegfmri "
               f"n_jobs={n_threads(args.n_jobs)}, load average "
               f"{load:.1f} at the start")  # fmt: skip
    text = (f"Scale `{args.scale}`, realism `{args.realism}`: {n_vol} volumes, 64 channels, "
            f"{raw.n_times / SFREQ:.0f} s at 5 kHz; {len(picks)} EEG channels scored; "
            f"{grep.n_volumes} volumes x {grep.n_slices} slices; heart rate "
            f"{brep.heart_rate_bpm:.0f} bpm. Machine: {machine}.\n\n" + header + body
            + f"\neegfmri gradient + BCG: {total[0][0]:.1f} s wall, {total[0][1]:.1f} s CPU, "
            f"peak {total[1]:.0f} MiB (target <= 20 s and <= 4096 MiB).\n")
    print(text)
    if args.output:
        args.output.write_text(text)
    return text


if __name__ == "__main__":
    main()
