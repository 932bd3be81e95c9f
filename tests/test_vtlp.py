"""VTLP follows Jaitly & Hinton's formula; nlpaug's VtlpAug does not, and this shows where."""

import numpy as np
import pytest
import torch

from serdemo.features import FeatureConfig, LogMel
from serdemo.vtlp import F_HI_HZ, sample_alpha, warp_frequency, warp_power
from tests.conftest import SR, harmonics, tone

FC = FeatureConfig()
BIN_HZ = SR / FC.n_fft


def power_of(x):
    return LogMel(FC).power(torch.as_tensor(x)[None])


def peak_hz(power):
    return float(power[0].mean(dim=1).argmax()) * BIN_HZ


@pytest.mark.parametrize("alpha", [0.9, 1.1])
@pytest.mark.parametrize("freq", [500.0, 1000.0, 2000.0, 3000.0])
def test_tone_below_knee_moves_to_alpha_f_within_one_bin(alpha, freq):
    warped = warp_power(power_of(tone(freq)), alpha, SR)
    assert abs(peak_hz(warped) - alpha * freq) <= BIN_HZ


@pytest.mark.parametrize("alpha", [0.9, 1.1])
def test_every_harmonic_of_a_vowel_moves(alpha):
    f0 = 200.0
    power = power_of(harmonics(f0, formants=(600, 1500, 2500)))
    warped = warp_power(power, alpha, SR)[0].mean(dim=1)
    for k in (1, 2, 3, 5, 8, 12):  # all below the knee f_hi*min(a,1)/a
        target = int(round(alpha * k * f0 / BIN_HZ))
        local = warped[target - 2: target + 3]
        assert abs(int(local.argmax()) + target - 2 - target) <= 1


def test_identity_nyquist_and_energy():
    power = power_of(harmonics(150.0))
    assert torch.equal(warp_power(power, 1.0, SR), power)  # exactly the identity
    for alpha in (0.8, 0.9, 1.1, 1.2):
        f = np.array([0.0, SR / 2])
        np.testing.assert_allclose(warp_frequency(f, alpha, SR), f)  # 0 and Nyquist fixed
        # energy preserved up to interpolation: tightly for a smooth (noise) spectrum,
        # within a few percent for a line spectrum whose peaks fall between bins
        noise = power_of(np.random.default_rng(0).normal(0, 0.1, SR).astype(np.float32))
        for p, tol in ((noise, 0.01), (power, 0.05)):
            ratio = float(warp_power(p, alpha, SR).sum() / p.sum())
            assert abs(ratio - 1) < tol, (alpha, ratio)


def test_warp_is_continuous_and_monotonic_and_honours_f_hi():
    f = np.linspace(0, SR / 2, 2001)
    for alpha in (0.85, 0.95, 1.05, 1.15):
        for f_hi in (3000.0, F_HI_HZ, 6000.0):
            g = warp_frequency(f, alpha, SR, f_hi)
            assert np.all(np.diff(g) > 0)
            knee = f_hi * min(alpha, 1) / alpha
            below = f <= knee
            np.testing.assert_allclose(g[below], alpha * f[below])
            assert np.max(np.abs(np.diff(g))) < 2 * (f[1] - f[0])  # no jump at the knee
    # a lower f_hi bends the warp earlier: a 3.5 kHz tone moves by alpha only when f_hi is above it
    p = power_of(tone(3500.0))
    assert abs(peak_hz(warp_power(p, 1.1, SR, f_hi_hz=6000)) - 3850) <= BIN_HZ
    assert abs(peak_hz(warp_power(p, 1.1, SR, f_hi_hz=2500)) - 3850) > 3 * BIN_HZ


def test_batched_with_one_alpha_per_example():
    x = power_of(tone(1000.0)).repeat(3, 1, 1)
    alphas = torch.tensor([0.9, 1.0, 1.1])
    warped = warp_power(x, alphas, SR)
    for i, a in enumerate(alphas.tolist()):
        single = warp_power(x[i:i + 1], a, SR)
        torch.testing.assert_close(warped[i:i + 1], single)
        assert abs(peak_hz(warped[i:i + 1]) - 1000 * a) <= BIN_HZ
    with pytest.raises(ValueError, match="one alpha per example"):
        warp_power(x, torch.tensor([0.9, 1.1]), SR)
    g = torch.Generator().manual_seed(0)
    drawn = sample_alpha(1000, 0.9, 1.1, generator=g)
    assert drawn.shape == (1000,) and 0.9 <= float(drawn.min()) and float(drawn.max()) <= 1.1
    assert warp_power(x, drawn[:3], SR).shape == x.shape


def test_nlpaug_departs_from_the_formula():
    """nlpaug 1.1.11 VtlpAug: its frequency axis spans 0..sr (not 0..sr/2) and it rescales the
    warped axis to fit, it ignores ``fhi``, it warps only a 6 % segment by default, and istft
    shortens the output. Measured on a 1 kHz tone at 16 kHz with alpha fixed."""
    from nlpaug.augmenter.audio import VtlpAug
    from nlpaug.model.audio import Vtlp

    x = tone(1000.0, 2.0)
    measured = {}
    for alpha in (0.9, 1.1):
        y = Vtlp()._manipulate(x, sampling_rate=SR, factor=alpha)
        spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
        measured[alpha] = np.argmax(spec) * SR / len(y)
        ours_hz = peak_hz(warp_power(power_of(x), alpha, SR))
        assert abs(ours_hz - 1000 * alpha) <= BIN_HZ
        assert len(y) < len(x)  # istft without a length drops the tail
    # formula: 900 Hz and 1100 Hz; nlpaug: about 844 Hz and 1188 Hz (its 0..sr axis, rescaled)
    assert abs(measured[0.9] - 844) < 20 and abs(measured[1.1] - 1188) < 20
    assert abs(measured[0.9] - 900) > 40 and abs(measured[1.1] - 1100) > 40
    # fhi is ignored: the warp is the same whatever fhi says
    a = VtlpAug(SR, zone=(0, 1), coverage=1.0, fhi=2000, factor=(1.1, 1.1)).augment(x)
    b = VtlpAug(SR, zone=(0, 1), coverage=1.0, fhi=7000, factor=(1.1, 1.1)).augment(x)
    np.testing.assert_allclose(np.asarray(a).ravel(), np.asarray(b).ravel())
    # defaults: zone (0.2, 0.8) x coverage 0.1 = 6 % of the clip is touched
    d = np.asarray(VtlpAug(SR, factor=(1.1, 1.1)).augment(x)).ravel()
    n = min(len(d), len(x))
    changed = np.abs(d[:n] - x[:n]) > 1e-3
    first, last = np.argmax(changed), n - np.argmax(changed[::-1])
    assert 0.04 < (last - first) / len(x) < 0.08
    assert len(d) < len(x)
