import pytest
import torch

from serdemo.features import FeatureConfig, LogMel, pad_batch
from serdemo.models import ARCHITECTURES, AttentionPooling, build_model
from tests.conftest import SR, harmonics, tone

FC = FeatureConfig()
HEADS = {"emotion": 7, "gender": 2, "naturalness": 2}


def clips():
    return [harmonics(140, 1.3), tone(300, 2.9) + harmonics(220, 2.9), harmonics(180, 0.6)]


def test_attention_pooling_masks_padding():
    torch.manual_seed(0)
    pool = AttentionPooling(8)
    y = torch.randn(3, 10, 8)
    lengths = torch.tensor([10, 4, 1])
    mask = torch.arange(10)[None] < lengths[:, None]
    z, w = pool(y, mask)
    torch.testing.assert_close(w.sum(1), torch.ones(3))
    assert torch.all(w[~mask] == 0)
    assert w[2, 0] == 1.0
    # the pooled vector is the weighted mean of the real frames only
    torch.testing.assert_close(z[1], (w[1, :4, None] * y[1, :4]).sum(0))


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_outputs_do_not_depend_on_batch_companions(arch):
    torch.manual_seed(0)
    model = build_model(arch, FC.n_mels, HEADS, input_frame_rate_hz=FC.frame_rate_hz).eval()
    fe = LogMel(FC)
    waves = clips()
    x, lengths = pad_batch(waves)
    feats, frames = fe(x, lengths)
    with torch.no_grad():
        batched = model(feats, frames)
        for i, w in enumerate(waves):
            f1, n1 = fe(torch.as_tensor(w)[None])
            alone = model(f1, n1)
            n_att = int(alone.attention_lengths[0])
            assert int(batched.attention_lengths[i]) == n_att
            for head in HEADS:
                torch.testing.assert_close(batched.logits[head][i], alone.logits[head][0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(batched.attention[i, :n_att], alone.attention[0], atol=1e-5, rtol=1e-5)
    # weights sum to 1 over real frames and are exactly 0 on padding
    att = batched.attention
    torch.testing.assert_close(att.sum(1), torch.ones(len(waves)))
    for i in range(len(waves)):
        assert torch.all(att[i, int(batched.attention_lengths[i]):] == 0)
    assert batched.frame_rate_hz == pytest.approx(FC.frame_rate_hz / model.time_stride)
    # attention covers the clip: frames' x stride spans the input frames
    assert int(batched.attention_lengths[1]) * model.time_stride >= int(frames[1])


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_one_signature_and_gradients_reach_every_head(arch):
    model = build_model(arch, FC.n_mels, HEADS, input_frame_rate_hz=FC.frame_rate_hz)
    x, lengths = pad_batch(clips())
    feats, frames = LogMel(FC)(x, lengths)
    out = model(feats, frames)
    assert set(out.logits) == set(HEADS)
    assert {k: v.shape[1] for k, v in out.logits.items()} == HEADS
    sum(v.sum() for v in out.logits.values()).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name


def test_registry_rejects_unknown():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("transformer", 64, {"emotion": 4})
    with pytest.raises(ValueError, match="'emotion' head"):
        build_model("localatt", 64, {"gender": 2})
    with pytest.raises(ValueError, match="encoder must be one of"):
        build_model("multitask", 64, {"emotion": 4}, encoder="resnet")


def test_logmel_frames_and_times():
    fe = LogMel(FC)
    x = torch.as_tensor(tone(1000, 1.0))[None]
    feats, frames = fe(x)
    assert feats.shape == (1, FC.n_mels, 1 + SR // FC.hop_length) and int(frames) == feats.shape[2]
    times = FC.frame_times_s(feats.shape[2])
    assert times[1] - times[0] == pytest.approx(0.01) and times[-1] == pytest.approx(1.0)
    # a 1 kHz tone lights up the mel band containing 1 kHz
    import torchaudio.functional as AF
    centres = AF.melscale_fbanks(FC.n_bins, FC.fmin_hz, FC.fmax_hz, FC.n_mels, SR, norm="slaney",
                                 mel_scale="slaney").argmax(0) * SR / FC.n_fft
    band = int(feats[0].mean(1).argmax())
    assert abs(float(centres[band]) - 1000) < 80


def test_ge2e_bfloat16_inference_matches_float32_on_real_speech(monkeypatch):
    """The bfloat16 GE2E path (used on CPUs with native bf16) gives the same answers as float32 on
    real speech of three corpora: same label, probabilities within 0.05."""
    from pathlib import Path

    from serdemo.inference import Predictor
    from serdemo.models.ge2e import cpu_has_native_bf16
    from tests.conftest import EMODB, RAVDESS, SHARED, shared_clip

    clips = [shared_clip(EMODB / "wav" / name) for name in ("03a01Fa.wav", "08a02Ab.wav", "11a01Ld.wav")]
    clips += [shared_clip(RAVDESS / "Actor_01" / "03-01-05-01-01-01-01.flac")]
    clips += sorted((SHARED / "nemo" / "samples").glob("*.flac"))[:2]
    ckpt = Path(__file__).resolve().parents[1] / "checkpoints" / "default"
    results = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("SERDEMO_GE2E_BF16", flag)
        cpu_has_native_bf16.cache_clear()
        pred = Predictor.from_checkpoint(ckpt, device="cpu")
        assert bool(pred.model.ge2e._fast_lstm) == (flag == "1")
        results[flag] = pred.predict_batch([str(c) for c in clips])
    cpu_has_native_bf16.cache_clear()
    for a, b in zip(results["0"], results["1"]):
        assert a.label() == b.label()
        for c, p in a.probabilities["emotion"].items():
            assert abs(p - b.probabilities["emotion"][c]) < 0.05


def test_ge2e_runs_long_spans_in_float32_even_with_the_bfloat16_path_on():
    """bf16 error accumulates in the LSTM state over long spans, so spans over BF16_MAX_FRAMES run in
    float32: identical to the float32 encoder; a short span takes the bf16 path (close, not identical)."""
    from serdemo.models.ge2e import BF16_MAX_FRAMES, GE2EEncoder

    torch.manual_seed(0)
    enc = GE2EEncoder()
    fast = GE2EEncoder()
    fast.load_state_dict(enc.state_dict())
    fast.use_bfloat16()
    long_wave = torch.as_tensor(harmonics(150, (BF16_MAX_FRAMES + 200) / 100))[None]
    short_wave = long_wave[:, :32000]
    for wave, exact in ((long_wave, True), (short_wave, False)):
        n = torch.tensor([wave.shape[1]])
        a, b = enc(wave, n), fast(wave, n)
        assert torch.equal(a, b) == exact
        assert torch.nn.functional.cosine_similarity(a, b, dim=-1).min() > 0.99
