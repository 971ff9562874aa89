"""Log band-power envelopes of the group windows (``[model] eeg_window_features``)."""

from __future__ import annotations

import numpy as np
import pytest

from bids_app.models.envelopes import band_envelopes, usable_bands
from bids_app.models.windows import eeg_windows

BANDS = (("theta", 4.0, 8.0), ("alpha", 8.0, 13.0), ("beta", 13.0, 30.0))


def test_beta_power_survives_a_25_hz_window_rate():
    """An 18 Hz rhythm switched on for the second half: raw 25 Hz windows lose it
    (Nyquist 12.5 Hz), the beta envelope row keeps it and the other bands do not move."""
    sfreq, n = 250.0, 250 * 40
    t = np.arange(n) / sfreq
    rng = np.random.default_rng(0)
    eeg = 0.1 * rng.standard_normal((2, n)) + (t >= 20) * np.sin(2 * np.pi * 18 * t)
    vol = np.array([18.0, 38.0])  # windows ending in the off and the on half
    raw, _ = eeg_windows(eeg, sfreq=sfreq, volume_times=vol, window_s=8.0, out_sfreq=25.0)
    env, kept = eeg_windows(eeg, sfreq=sfreq, volume_times=vol, window_s=8.0,
                            out_sfreq=25.0, bands=BANDS)
    assert kept.all() and env.shape == (2, 2 * len(BANDS), 200)
    assert abs(raw[1].std() - raw[0].std()) < 0.5  # the rhythm is gone from raw windows
    on_minus_off = env[1].mean(axis=1) - env[0].mean(axis=1)  # z-scored log power
    rows = {name: on_minus_off[b::len(BANDS)] for b, (name, _, _) in enumerate(BANDS)}
    assert np.all(rows["beta"] > 1.5)
    assert np.all(np.abs(rows["theta"]) < 0.5) and np.all(np.abs(rows["alpha"]) < 1.0)


def test_envelope_rows_are_channel_major_and_bands_must_fit():
    sfreq = 100.0
    t = np.arange(2000) / sfreq
    eeg = np.stack([np.sin(2 * np.pi * 6 * t), np.sin(2 * np.pi * 20 * t)])
    env = band_envelopes(eeg, sfreq, BANDS)
    assert env.shape == (6, 2000)
    power = env[:, 200:-200].mean(axis=1).reshape(2, 3)  # (channel, band)
    assert power[0].argmax() == 0 and power[1].argmax() == 2
    assert usable_bands(BANDS + (("gamma", 30.0, 45.0),), 80.0) == BANDS
    with pytest.raises(ValueError, match="Nyquist"):
        band_envelopes(eeg, 50.0, BANDS)


def test_band_power_features_of_envelope_windows_are_subwindow_means():
    from bids_app.models.baselines import band_power_features

    env = np.random.default_rng(1).standard_normal((3, 4, 20))
    feats = band_power_features(env, 25.0, n_subwindows=4, envelopes=True).reshape(3, 4, 4)
    np.testing.assert_allclose(feats[:, :, 1], env[:, :, 5:10].mean(axis=-1))
