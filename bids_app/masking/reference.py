"""Reference occlusion: the per-unit loop that :func:`occlusion_effects` must equal."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bids_app.masking import statistics as st
from bids_app.masking.data import MaskingData, compute_baseline, occurrences
from bids_app.masking.occlusion import (
    _context_inputs,
    _decode,
    _model_name,
    _output_names,
    _targets,
    _unmasked_heads,
    _windows_forward,
    head_names,
    model_dtype,
    resolve_device,
)
from bids_app.masking.omnibus import calibrated_variance


def naive_occlusion(
    model: Any,
    data: MaskingData,
    *,
    kind: str,
    baseline: str = "zero",
    context: str = "single",
    units: np.ndarray | None = None,
    device: str | torch.device | None = "cpu",
    batch_size: int = 4096,
    outputs_of: np.ndarray | None = None,
) -> list[st.HeadEffects]:
    """Reference occlusion: one full forward pass of the unit's windows per masked unit.

    For each unit, a copy of the windows that contain it is made with the unit set to its
    baseline wherever it occurs, the model is run end to end (``encode`` then the
    decoders) on those windows in one batch, and the change is measured there. Windows
    are independent inputs of the model, so the windows a unit does not touch cannot
    change and are not forwarded (a fair naive loop: an EEG timestamp sits in a few
    windows, not in all of its run's). This is the per-unit loop of generic occlusion
    tools (Captum ``Occlusion``); it exists to check :func:`occlusion_effects` and as the
    baseline of ``benchmarks/masking.py``.

    The whole-output head ``cross`` of VAE-1 is computed here from every output (the
    output layer runs for each masked unit and window); ``cross_outputs`` covers every
    unit.

    Parameters are those of :func:`occlusion_effects` (``units`` restricts the loop);
    ``outputs_of`` keeps ``cross_outputs`` only for these unit ids (None: every unit), as
    the hierarchical test reports the per-output effects of the selected units only.

    Returns
    -------
    list of HeadEffects
        ``smd``, ``kl`` and ``dll`` filled (no statistics), heads as in
        :func:`occlusion_effects` with ``cross_outputs="all"``.
    """
    device = resolve_device(device)
    model = model.to(device).eval()
    heads = head_names(model, kind)
    if "cross" in heads:
        heads = (*heads, "cross_outputs")
    ref, _, _ = _unmasked_heads(model, data, kind, heads, device, batch_size, context)
    base = compute_baseline(data, kind, baseline)
    units, starts, occ = occurrences(data, kind, units)
    keep = np.ones(len(units), bool) if outputs_of is None else np.isin(units, outputs_of)
    if "cross" in heads:  # calibrated variance: MSE of the unmasked prediction per output
        y_all = _targets(data, kind, "cross_outputs")
        sse = ((y_all - ref["cross_outputs"][0]) ** 2).reshape(len(y_all), -1).sum(axis=0)
        calib = calibrated_variance(sse, len(y_all))
    acc: dict[str, dict[str, list]] = {h: {"smd": [], "kl": [], "dll": []} for h in heads}
    dtype = torch.empty(0, dtype=model_dtype(model)).numpy().dtype  # the model's precision
    x_eeg = np.asarray(data.x_eeg, dtype=dtype)
    x_fmri = np.asarray(data.x_fmri, dtype=dtype)
    for u in range(len(units)):
        win, pos = occ[starts[u] : starts[u + 1], 0], occ[starts[u] : starts[u + 1], 1]
        rows = np.unique(win)  # only the windows the unit touches
        local = np.searchsorted(rows, win)
        xe, xf = x_eeg[rows], x_fmri[rows]  # fancy indexing: copies
        if kind == "eeg":
            xe[local, :, pos] = base[win, :, pos]
        else:
            xf[local, pos] = base[win, pos]
        mu, lv = _windows_forward(model, *_context_inputs(data, kind, context, xe, xf), device,
                                  batch_size)
        for head in (h for h in heads if h != "cross"):
            with torch.no_grad():
                m1, l1 = (t.double().cpu().numpy() for t in _decode(model, head, kind, mu, lv))
            m0, l0 = ref[head][0][win], ref[head][1][win]
            smd, kl = st.predictive_change(m0, l0, m1[local], l1[local])
            y = _targets(data, kind, head)
            dll = (np.full_like(smd, np.nan) if y is None else
                   (st.gaussian_loglik(y[win], m1[local], l1[local])
                    - st.gaussian_loglik(y[win], m0, l0)).sum(axis=-1))
            if head != "cross_outputs" or keep[u]:
                for key, val in (("smd", smd), ("kl", kl), ("dll", dll)):
                    acc[head][key].append(val.mean(axis=0))
            if head == "cross_outputs":  # the whole prediction, calibrated variance
                m1f, m0f, yf = (x.reshape(len(win), -1) for x in (m1[local], m0, y[win]))
                d2 = ((m1f - m0f) ** 2 / calib).sum(axis=1)
                dll_all = (((yf - m0f) ** 2 - (yf - m1f) ** 2) / (2 * calib)).sum(axis=1)
                for key, val in (("smd", np.sqrt(d2 / m0f.shape[1])), ("kl", 0.5 * d2),
                                 ("dll", dll_all)):
                    acc["cross"][key].append(np.atleast_1d(val.mean(axis=0)))
    name = _model_name(model)
    out = []
    for h in heads:
        rows = keep if h == "cross_outputs" else np.ones(len(units), bool)
        g = 1 if h == "cross" else ref[h][0].shape[1]
        out.append(st.HeadEffects(
            kind=kind, model=name, head=h, units=units[rows],
            outputs=_output_names(model, kind, h, g, None), n_windows=np.diff(starts)[rows],
            **{k: np.stack(v) if v else np.zeros((0, g)) for k, v in acc[h].items()}))
    return out
