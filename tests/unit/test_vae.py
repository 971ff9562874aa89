"""VAE-1 / VAE-2: the structure masking relies on, and held-out performance on planted data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bids_app.models.initialise import calibrate_experts, init_from_pca, select_own_paths
from bids_app.models.train import evaluate_vae1, evaluate_vae2, fit, make_model, predict
from bids_app.models.vae import (
    ModalityEncoder,
    MultimodalVAE,
    StimulusVAE,
    build_model,
    product_of_experts,
)
from bids_app.models.windows import split_windows
from bids_app.simulate.stimulus import simulate_windows

C, T, V = 5, 7, 11
BENCHMARKS = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


def _assert_docs_state(rows: list[dict]) -> None:
    """docs/benchmarks.md says, for each measured claim, whether the model beats every
    baseline on the held-out runs and which baseline is best (its comparison tables)."""
    table = {}
    for line in BENCHMARKS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0] in ("VAE-1", "VAE-2"):
            table[(cells[0], cells[1])] = cells
    assert rows
    for row in rows:
        cells = table[(row["model"].upper().replace("VAE", "VAE-"), row["metric"])]
        assert cells[5] == ("yes" if row["beats_all_baselines"] else "no"), cells
        assert cells[4] == row["best_baseline"] and abs(float(cells[2]) - row["value"]) < 0.005


@pytest.fixture
def vae1():
    return make_model("vae1", seed=0, eeg_shape=(C, T), n_voxels=V, latent_dim=3, hidden_dim=16)


def test_encoder_contract_linear_input_channel_major(vae1):
    enc = vae1.eval().eeg_encoder
    assert isinstance(enc, ModalityEncoder) and isinstance(enc.input, nn.Linear)
    assert enc.input.in_features == C * T
    x = torch.randn(4, C, T)
    mu, logvar = enc(x)
    mu2, logvar2 = enc.body(enc.input(x.reshape(4, -1)))
    assert torch.equal(mu, mu2) and torch.equal(logvar, logvar2)
    # masking timestamp t of channel c changes the pre-activation by W[:, c * T + t] * delta
    c, t, delta = 2, 5, -1.7
    x2 = x.clone()
    x2[:, c, t] += delta
    diff = enc.input(x2.reshape(4, -1)) - enc.input(x.reshape(4, -1))
    torch.testing.assert_close(diff, (enc.input.weight[:, c * T + t] * delta).expand(4, -1))


def test_product_of_experts_with_prior(vae1):
    vae1.eval()
    x_eeg, x_fmri = torch.randn(6, C, T), torch.randn(6, V)
    mu_e, lv_e = vae1.eeg_encoder(x_eeg)
    mu_f, lv_f = vae1.fmri_encoder(x_fmri)
    mu, lv = vae1.encode(x_eeg, x_fmri)
    prec = 1 + torch.exp(-lv_e) + torch.exp(-lv_f)
    torch.testing.assert_close(lv, -torch.log(prec))
    torch.testing.assert_close(mu, (mu_e * torch.exp(-lv_e) + mu_f * torch.exp(-lv_f)) / prec)
    # either modality alone infers the latent, always more certain than the prior
    for kw in ({"x_eeg": x_eeg}, {"x_fmri": x_fmri}):
        m, v = vae1.encode(**kw)
        assert m.shape == (6, 3) and torch.all(v < 0)
    m0, v0 = product_of_experts([], 3, x_eeg)
    assert torch.all(m0 == 0) and torch.all(v0 == 0)
    with pytest.raises(ValueError):
        vae1.encode()


def test_decoders_and_rebuild(vae1):
    z = torch.randn(4, 3)
    for (mean, logvar), shape in ((vae1.decode_eeg(z), (4, C, T)), (vae1.decode_fmri(z), (4, V))):
        assert mean.shape == shape and logvar.shape == shape
    vae2 = make_model(
        "vae2",
        seed=0,
        eeg_shape=(C, T),
        n_voxels=V,
        n_features=2,
        feature_names=["lum", "mot"],
        latent_dim=3,
        hidden_dim=16,
    )
    assert vae2.decode_stimulus(z)[0].shape == (4, 2)
    for model in (vae1, vae2):
        clone = build_model(model.architecture())
        clone.load_state_dict(model.state_dict())
        model.eval(), clone.eval()
        x = torch.randn(2, C, T)
        for a, b in zip(model(x_eeg=x).values(), clone(x_eeg=x).values()):
            torch.testing.assert_close(a, b)
    assert isinstance(build_model(vae1.architecture()), MultimodalVAE)
    fixed = make_model("vae1", seed=0, eeg_shape=(C, T), n_voxels=V, latent_dim=3,
                       hidden_dim=16, decoder_variance="fixed")  # fmt: skip
    assert build_model(fixed.architecture()).decoder_variance == "fixed"
    loss, _ = fixed.loss({"eeg": torch.randn(4, C, T), "fmri": torch.randn(4, V)})
    loss.backward()
    assert fixed.fmri_decoder.logvar.grad is None
    assert float(fixed.decode_fmri(z)[1].abs().max()) == 0  # unit variance: squared error
    assert isinstance(build_model(vae2.architecture()), StimulusVAE)


def test_stimulus_loss_ignores_unobserved_features():
    vae2 = make_model(
        "vae2", seed=0, eeg_shape=(C, T), n_voxels=V, n_features=2, latent_dim=3, hidden_dim=16
    ).eval()
    batch = {
        "eeg": torch.randn(3, C, T),
        "fmri": torch.randn(3, V),
        "stimulus": torch.tensor([[0.5, np.nan], [1.0, np.nan], [0.0, np.nan]]),
    }
    loss, _ = vae2.loss(batch)
    assert torch.isfinite(loss)
    batch2 = dict(batch, stimulus=torch.tensor([[0.5, 9.0], [1.0, -9.0], [0.0, 3.0]]))
    assert vae2.loss(batch2)[0] > loss


# ----------------------------------------------------------- held-out performance (planted)
@pytest.fixture(scope="module")
def planted():
    return simulate_windows(
        n_subjects=3,
        n_runs=4,
        n_volumes=150,
        n_channels=16,
        window_s=8.4,
        sfreq=5.0,
        n_voxels=200,
        n_planted=20,
        eeg_noise=0.5,
        global_signal=0.0,
        seed=0,
    )


def test_pca_initialisation_reproduces_balanced_pca(planted):
    pw = planted
    arrays = {"eeg": pw.eeg, "fmri": pw.fmri}
    split = split_windows(pw.meta, seed=0)
    model = make_model(
        "vae1", seed=1, eeg_shape=pw.eeg.shape[1:], n_voxels=200, latent_dim=6, hidden_dim=32
    )
    init_from_pca(model, arrays, split["train"])
    ev = evaluate_vae1(model.eval(), arrays, split["train"], split["test"])
    # the linear VAE at initialisation is the PCA (measured 0.2646 / 0.1775 for both)
    assert abs(ev["ev_eeg"] - ev["ev_pca_eeg"]) < 1e-3 and ev["ev_pca_eeg"] > 0.25
    assert abs(ev["ev_fmri"] - ev["ev_pca_fmri"]) < 1e-3 and ev["ev_pca_fmri"] > 0.1
    # block mode: per-modality PCA, each latent dimension held by one modality's expert
    block = make_model("vae1", seed=1, eeg_shape=pw.eeg.shape[1:], n_voxels=200, latent_dim=6,
                       hidden_dim=32)  # fmt: skip
    init_from_pca(block, arrays, split["train"], mode="block", cross_experts=("eeg",))
    evb = evaluate_vae1(block.eval(), arrays, split["train"], split["test"])
    # measured 0.2650 / 0.1801: the block PCA, already above the concatenated PCA for fMRI
    assert abs(evb["ev_eeg"] - evb["ev_pca_block_eeg"]) < 1e-3
    assert abs(evb["ev_fmri"] - evb["ev_pca_block_fmri"]) < 1e-3
    assert evb["ev_pca_block_fmri"] > evb["ev_pca_fmri"] + 0.002
    assert not block.fmri_encoder.body.net_mask.any()  # fMRI expert stays linear
    # the EEG expert's residual reads the leading EEG principal scores, +/-, nothing else
    lead = make_model("vae1", seed=1, eeg_shape=pw.eeg.shape[1:], n_voxels=200, latent_dim=6,
                      hidden_dim=32)  # fmt: skip
    init_from_pca(lead, arrays, split["train"], mode="block", cross_experts=("eeg",),
                  expert_inputs=8)  # fmt: skip
    w = lead.eeg_encoder.input.weight.detach()
    torch.testing.assert_close(w[6:14], -w[14:22])
    assert not w[22:].any()
    x = pw.eeg[split["train"]].reshape(len(split["train"]), -1)
    scores = x @ w[6:14].numpy().T + lead.eeg_encoder.input.bias.detach()[6:14].numpy()
    np.testing.assert_allclose(scores.std(0), 1.0, atol=0.05)  # standardised scores
    np.testing.assert_allclose(np.corrcoef(scores.T), np.eye(8), atol=0.05)  # principal
    evl = evaluate_vae1(lead.eval(), arrays, split["train"], split["test"])
    assert abs(evl["ev_eeg"] - evb["ev_eeg"]) < 1e-6  # still the block PCA before training
    init_from_pca(lead, arrays, split["train"], mode="block", cross_experts=("eeg",),
                  expert_inputs=20)  # more than hidden_dim holds: reduced to 13
    assert lead.eeg_encoder.input.weight[6:19].any(dim=1).all()
    # the EEG's own non-linear paths: a rank-4 decoder residual on the leading components
    own = make_model("vae1", seed=1, eeg_shape=pw.eeg.shape[1:], n_voxels=200, latent_dim=6,
                     hidden_dim=32, eeg_decoder_rank=4)  # fmt: skip
    init_from_pca(own, arrays, split["train"], mode="block", cross_experts=("eeg",),
                  expert_inputs=8)  # fmt: skip
    evo = evaluate_vae1(own.eval(), arrays, split["train"], split["test"])
    assert abs(evo["ev_eeg"] - evb["ev_eeg"]) < 1e-6  # the block PCA before training
    dec = own.eeg_decoder
    eeg_dims = block.eeg_encoder.body.net_mask[:6] == 0
    assert torch.equal(dec.net_mask.bool(), eeg_dims)  # reads the EEG's dimensions only
    assert own.eeg_encoder.body.net_mask.all()  # the expert may move every mean
    assert not dec.net[-1].weight.requires_grad and dec.net[-2].weight.requires_grad
    basis = dec.net[-1].weight.detach().numpy().astype(np.float64)  # (C*T, 4)
    lead_axes = w[6:10].numpy().astype(np.float64)  # the same 4 leading components
    cos = (basis / np.linalg.norm(basis, axis=0)).T @ (lead_axes / np.linalg.norm(
        lead_axes, axis=1, keepdims=True)).T  # fmt: skip
    np.testing.assert_allclose(np.abs(np.diag(cos)), 1.0, atol=1e-4)
    # fewer training windows than the rank: the components there are, the rest zero
    init_from_pca(own, arrays, split["train"][:3], mode="block", cross_experts=("eeg",),
                  expert_inputs=8)  # fmt: skip
    assert not dec.net[-1].weight[:, 3:].any() and dec.net[-1].weight[:, :2].any()
    assert block.eeg_encoder.body.net_mask[:6].sum() == 3  # EEG's opinion on fMRI dims
    assert not any(p.requires_grad for p in block.fmri_decoder.net.parameters())
    with pytest.raises(ValueError, match="cross_experts"):
        init_from_pca(block, arrays, split["train"], mode="joint", cross_experts=("eeg",))
    with pytest.raises(ValueError, match="hidden_dim"):
        small = make_model("vae1", seed=0, eeg_shape=pw.eeg.shape[1:], n_voxels=200,
                           latent_dim=6, hidden_dim=4)  # fmt: skip
        init_from_pca(small, arrays, split["train"])


def _train_default_vae1(pw, split):
    """VAE-1 with the default recipe (config.model) at the test's size and schedule."""
    arrays = {"eeg": pw.eeg, "fmri": pw.fmri}
    model = make_model(
        "vae1",
        seed=0,
        eeg_shape=pw.eeg.shape[1:],
        n_voxels=200,
        latent_dim=6,
        hidden_dim=128,
        beta=0.1,
        cross_weight=0.3,
        eeg_decoder_rank=6,  # 2 x the 3 EEG dimensions: a plane (rhythm) per dimension
    )
    # block-PCA start; the EEG expert learns EEG -> fMRI and, with the EEG decoder, a
    # non-linear code of the EEG in its own dimensions
    init_from_pca(model, arrays, split["train"], mode="block", expert_precision=100.0,
                  freeze_linear=True, cross_experts=("eeg",), expert_inputs=16)  # fmt: skip
    return fit(
        model,
        arrays,
        split["train"],
        split["val"],
        epochs=100,
        batch_size=32,
        learning_rate=3e-3,
        patience=20,
        seed=0,
        device="cpu",
        include_initial=True,
    )


@pytest.fixture(scope="module")
def trained_vae1(planted):
    pw = planted
    arrays = {"eeg": pw.eeg, "fmri": pw.fmri}
    split = split_windows(pw.meta, seed=0)
    res = _train_default_vae1(pw, split)
    planted = np.concatenate(list(pw.planted_voxels.values()))
    kw = {"planted_voxels": planted, "val_idx": split["val"], "sfreq": 5.0}
    raw = evaluate_vae1(res.model, arrays, split["train"], split["test"], **kw)
    own = select_own_paths(res.model, arrays, split["val"])
    offsets = calibrate_experts(res.model, arrays, split["val"])
    ev = evaluate_vae1(res.model, arrays, split["train"], split["test"], **kw)
    return {**ev, "uncalibrated": raw, "offsets": offsets, "best_epoch": res.best_epoch,
            "own_paths": own}  # fmt: skip


def test_vae1_reconstruction_vs_baselines_on_held_out_runs(trained_vae1):
    ev = trained_vae1
    # Held-out runs, both modalities in, latent size 6 for the VAE and both PCAs. Claims
    # (docs/benchmarks.md; margins over split seeds 0-3): EEG beats every baseline by
    # > 0.005 (+0.011 to +0.016); fMRI beats the PCA of the concatenation by > 0.001
    # (+0.0022 to +0.0036) and does NOT beat the per-modality PCA: within 0.001 below it
    # (-0.0003 to -0.0002; the fMRI is linear and rank 3, PCA is the ceiling).
    best_eeg = max(ev["ev_pca_eeg"], ev["ev_pca_block_eeg"])
    assert ev["ev_eeg"] > best_eeg + 0.005
    assert ev["ev_fmri"] > ev["ev_pca_fmri"] + 0.001
    assert -0.001 < ev["ev_fmri"] - ev["ev_pca_block_fmri"] <= 0
    _assert_docs_state(ev["baseline_comparison"])
    assert ev["best_epoch"] > 10  # training moved away from the PCA start
    assert ev["own_paths"]["kept"]  # the non-linear EEG code lowers the validation loss
    # the EEG expert's learned confidence about the fMRI dimensions is over-confident on
    # new runs; calibration on the validation runs (offset 1.0) recovers the joint fMRI
    # reconstruction (measured 0.1781 -> 0.1798) and keeps the cross-modal r (0.570) and
    # the EEG reconstruction (the offset leaves the EEG's own dimensions alone)
    raw = ev["uncalibrated"]
    assert ev["offsets"]["eeg"] > 0 and "fmri" not in ev["offsets"]
    assert ev["ev_fmri"] > raw["ev_fmri"] + 0.001
    assert abs(ev["r_eeg_to_fmri"] - raw["r_eeg_to_fmri"]) < 0.02
    assert abs(ev["ev_eeg"] - raw["ev_eeg"]) < 1e-3


def _held_out_pca_ev(a: np.ndarray, train: np.ndarray, test: np.ndarray, k: int) -> float:
    """Held-out explained variance of the k-component PCA of one modality."""
    a = a.reshape(len(a), -1).astype(np.float64)
    mean = a[train].mean(0)
    axes = np.linalg.svd(a[train] - mean, full_matrices=False)[2][:k]
    x = a[test] - mean
    sst = ((a[test] - a[test].mean(0)) ** 2).sum()
    return float(1 - ((x - x @ axes.T @ axes) ** 2).sum() / sst)


def test_where_the_margins_come_from(planted, trained_vae1):
    # docs/benchmarks.md: the fMRI is linear and rank 3, so no 3-dimensional code does
    # much better than PCA: projecting the held-out fMRI on the three planted-voxel
    # patterns (an oracle) explains < 0.005 more than the 3-component PCA (0.1824 vs
    # 0.1801; +0.0014 to +0.0026 on splits 0-3). VAE-1's 3 EEG dimensions (0.281) lie
    # between EEG-only PCA with 3 (0.265) and 4 components (0.309), on every split.
    pw = planted
    split = split_windows(pw.meta, seed=0)
    train, test = split["train"], split["test"]
    patterns = np.zeros((pw.fmri.shape[1], 3))
    for i, voxels in enumerate(pw.planted_voxels.values()):
        patterns[voxels, i] = 1.0
    f = pw.fmri.astype(np.float64)
    x = f[test] - f[train].mean(0)
    oracle = 1 - ((x - x @ patterns @ np.linalg.pinv(patterns)) ** 2).sum() / (
        (f[test] - f[test].mean(0)) ** 2).sum()  # fmt: skip
    assert 0 < oracle - _held_out_pca_ev(pw.fmri, train, test, 3) < 0.005
    eeg_pca = [_held_out_pca_ev(pw.eeg, train, test, k) for k in (3, 4)]
    assert eeg_pca[0] < trained_vae1["ev_eeg"] < eeg_pca[1]


def test_eeg_code_that_does_not_generalise_is_switched_off():
    # Phase-locked rhythms (phase_diffusion=0): each run's windows lie on one curve, the
    # non-linear EEG code learns the training runs' curves and loses to PCA on new runs
    # (measured 0.2756 vs 0.3139); the validation runs show it, and select_own_paths
    # switches the code off (0.3131, the per-modality PCA), keeping the cross-modal r.
    pw = simulate_windows(n_subjects=3, n_runs=4, n_volumes=150, n_channels=16, window_s=8.4,
                          sfreq=5.0, n_voxels=200, n_planted=20, eeg_noise=0.5,
                          global_signal=0.0, phase_diffusion=0.0, seed=0)  # fmt: skip
    arrays = {"eeg": pw.eeg, "fmri": pw.fmri}
    split = split_windows(pw.meta, seed=3)
    res = _train_default_vae1(pw, split)
    planted = {"planted_voxels": np.concatenate(list(pw.planted_voxels.values()))}
    raw = evaluate_vae1(res.model, arrays, split["train"], split["test"], **planted)
    own = select_own_paths(res.model, arrays, split["val"])
    ev = evaluate_vae1(res.model, arrays, split["train"], split["test"], **planted)
    assert raw["ev_eeg"] < raw["ev_pca_eeg"] - 0.02  # the code does not carry over
    assert not own["kept"] and own["val_loss_with"] > own["val_loss_without"]
    assert abs(ev["ev_eeg"] - ev["ev_pca_block_eeg"]) < 1e-3  # back to the PCA
    assert not res.model.eeg_decoder.net[-1].weight.any()
    assert abs(ev["r_eeg_to_fmri"] - raw["r_eeg_to_fmri"]) < 1e-6  # EEG -> fMRI kept
    assert ev["r_eeg_to_fmri"] > 0.45
    assert select_own_paths(res.model, arrays, split["val"]) == {}  # nothing left to test


def test_vae1_eeg_alone_predicts_planted_voxels(trained_vae1):
    ev = trained_vae1
    # fMRI of planted voxels from EEG alone (measured r = 0.570; split seeds 1-3: 0.53 to
    # 0.56) beats the EEG of shuffled windows (0.010) and the PCA latent inferred from EEG
    # alone (-0.004: BOLD follows EEG power, which is not linear in the EEG), but does NOT
    # beat the band-power ridge (0.588; margin -0.032 to +0.014 over splits 0-3). Claim:
    # within 0.05 of the ridge in r and within 0.02 in explained variance (-0.010 to
    # +0.002), not above it on split 0 (docs/benchmarks.md, checked by _assert_docs_state).
    assert ev["r_eeg_to_fmri"] > 0.45
    assert ev["r_eeg_to_fmri"] > ev["r_eeg_to_fmri_shuffled"] + 0.35
    assert ev["r_eeg_to_fmri"] > ev["r_pca_eeg_to_fmri"] + 0.35
    assert abs(ev["r_eeg_to_fmri"] - ev["r_ridge_eeg_to_fmri"]) < 0.05
    assert abs(ev["ev_eeg_to_fmri"] - ev["ev_ridge_eeg_to_fmri"]) < 0.02


@pytest.mark.parametrize("null", [False, True])
def test_vae2_predicts_stimulus_above_permutation_null(null):
    pw = simulate_windows(
        n_subjects=4,
        n_runs=4,
        n_volumes=100,
        n_channels=16,
        window_s=8.4,
        sfreq=5.0,
        n_voxels=100,
        n_planted=15,
        null=null,
        seed=0,
    )
    stim = (pw.stimulus - pw.stimulus.mean(0)) / pw.stimulus.std(0)
    arrays = {"eeg": pw.eeg, "fmri": pw.fmri, "stimulus": stim}
    split = split_windows(pw.meta, seed=0)
    model = make_model(
        "vae2",
        seed=0,
        eeg_shape=pw.eeg.shape[1:],
        n_voxels=100,
        n_features=2,
        feature_names=pw.feature_names,
        latent_dim=4,
        hidden_dim=64,
        beta=0.01,
    )
    res = fit(
        model,
        arrays,
        split["train"],
        split["val"],
        epochs=30,
        batch_size=32,
        patience=5,
        seed=0,
        device="cpu",
    )
    labels = (pw.meta["subject"] + "/" + pw.meta["run"]).to_numpy()
    ev = evaluate_vae2(res.model, arrays, split["test"], labels[split["test"]], n_permutations=500,
                       train_idx=split["train"], val_idx=split["val"], sfreq=5.0)  # fmt: skip
    for name in ("luminance", "motion"):
        r, p = ev["features"][name]["r"], ev["features"][name]["p"]
        ridge = ev["ridge_features"][name]
        if null:  # nothing links stimulus and brain: no significant prediction
            assert p > 0.01 and r < 0.2
            assert ridge["p"] > 0.01 and ridge["r"] < 0.2
        else:  # measured r = 0.83 (luminance), 0.42 (motion), p = 1/501
            assert p < 0.01 and r > 0.3
            # claim: VAE-2 does not beat the band-power ridge (0.91, 0.76; seeds 0-2:
            # margins -0.118 to -0.080 and -0.372 to -0.272)
            assert r <= ridge["r"]
    if not null:
        _assert_docs_state(ev["baseline_comparison"])
    pred = predict(res.model, arrays, split["test"][:5], inputs=("eeg",))
    assert pred["stimulus_mean"].shape == (5, 2)
