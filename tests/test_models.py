import pytest
import torch

from serdemo.encoding import FrontEnd
from serdemo.features import FeatureConfig, LogMel, pad_batch
from serdemo.models import ARCHITECTURES, AttentionPooling, build_model, encoder_layers, uses_encoder
from serdemo.encoders import load as shared_encoder
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


def small(arch: str) -> dict:
    return {"n_layers": 2} if getattr(ARCHITECTURES[arch], "input_kind", "") == "encoder" else {}


def inputs(model, waves):
    """The model's input through the one front end (log-mel, and the shared encoder for models on it)."""
    enc = shared_encoder() if uses_encoder(model) else None
    fe = FrontEnd(FC, enc, encoder_layers(model))
    x, lengths = pad_batch(waves)
    with torch.no_grad():
        out = fe(x, lengths)
    return (out.states, out.lengths) if enc is not None else (out.logmel, out.frames)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_outputs_do_not_depend_on_batch_companions(arch):
    torch.manual_seed(0)
    model = build_model(arch, FC.n_mels, HEADS, input_frame_rate_hz=FC.frame_rate_hz, **small(arch)).eval()
    waves = clips()
    feats, frames = inputs(model, waves)
    with torch.no_grad():
        batched = model(feats, frames)
        for i, w in enumerate(waves):
            f1, n1 = inputs(model, [w])
            alone = model(f1, n1)
            n_att = int(alone.attention_lengths[0])
            assert int(batched.attention_lengths[i]) == n_att
            for head in HEADS:
                torch.testing.assert_close(batched.logits[head][i], alone.logits[head][0], atol=2e-3, rtol=1e-3)
            torch.testing.assert_close(batched.attention[i, :n_att], alone.attention[0], atol=1e-3, rtol=1e-3)
    # weights sum to 1 over real frames and are exactly 0 on padding
    att = batched.attention
    torch.testing.assert_close(att.sum(1), torch.ones(len(waves)))
    for i in range(len(waves)):
        assert torch.all(att[i, int(batched.attention_lengths[i]):] == 0)
    # attention covers the clip: 1.3 s of audio is 1.3 s of attention frames
    assert int(batched.attention_lengths[0]) / batched.frame_rate_hz == pytest.approx(1.3, abs=0.05)


@pytest.mark.parametrize("arch", sorted(set(ARCHITECTURES) - {"probe"}))
def test_one_signature_and_gradients_reach_every_head(arch):
    torch.manual_seed(0)
    model = build_model(arch, FC.n_mels, HEADS, input_frame_rate_hz=FC.frame_rate_hz, **small(arch))
    feats, frames = inputs(model, clips())
    out = model(feats, frames)
    assert set(out.logits) == set(HEADS)
    assert {k: v.shape[1] for k, v in out.logits.items()} == HEADS
    sum((v * torch.randn_like(v)).sum() for v in out.logits.values()).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and float(p.grad.abs().sum()) > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("n_layers,tune", [(2, 1), (6, 2)])
def test_fine_tuned_top_blocks_start_as_the_encoders_own_and_only_they_learn(n_layers, tune):
    """``tune_layers``: the model's copies of the top blocks continue the frozen encoder's states exactly
    (padding masked, the final LayerNorm where the top block is tuned); the shared encoder runs only the
    blocks below them, and a gradient step moves the copies, never the shared encoder."""
    enc = shared_encoder()
    model = build_model("localatt", FC.n_mels, {"emotion": 4}, n_layers=n_layers, tune_layers=tune)
    assert encoder_layers(model) == n_layers - tune and len(model.tuned) == tune
    model.start_from(enc)
    x, lengths = pad_batch(clips())
    logmel, frames = LogMel(FC)(x, lengths)
    with torch.no_grad():
        states, enc_len = enc(logmel, frames, n_layers)
        real = torch.arange(states[0].shape[1])[None] < enc_len[:, None]
        assert not real.all()  # the batch is padded: the copies must not attend to the padding
        got = model.run_tuned(torch.stack(states[: n_layers - tune + 1], 1), real)
    assert got.shape[1] == n_layers + 1
    for layer in range(n_layers - tune + 1, n_layers + 1):
        torch.testing.assert_close(got[:, layer][real], states[layer][real], atol=2e-4, rtol=1e-4)
        assert not got[:, layer][~real].any()
    frozen = {k: v.clone() for k, v in enc.state_dict().items()}
    feats, n = inputs(model, clips())
    assert feats.shape[1] == n_layers - tune + 1  # the shared encoder ran the frozen blocks only
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(feats, n).logits["emotion"].sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.tuned.parameters())
    before = model.tuned[0].fc1.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.tuned[0].fc1.weight)
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in frozen.items())
    with pytest.raises(ValueError, match="tune_layers"):
        build_model("localatt", FC.n_mels, {"emotion": 4}, n_layers=2, tune_layers=3)


def test_a_clip_with_one_speech_frame_gives_finite_gradients_to_tuned_blocks():
    """The statistics branch takes a standard deviation over speech frames; with one frame it is 0, and the
    square root's infinite slope there made every tuned block's gradient NaN (a fine-tuning screen's loss went
    NaN in epoch 5). The values are unchanged; the gradient there is 0."""
    torch.manual_seed(0)
    model = build_model("localatt", FC.n_mels, {"emotion": 4}, n_layers=2, tune_layers=1, stats=True,
                        hidden=8, dense=16)
    states = torch.randn(2, 2, 10, 512)
    speech = torch.zeros(2, 10, dtype=torch.bool)
    speech[0, 3] = True  # one speech frame
    speech[1, 2:8] = True
    model(states, torch.tensor([10, 10]), speech=speech).logits["emotion"].sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    from serdemo.models.encoder import layer_statistics

    one = layer_statistics(states[:1], speech[:1])
    assert not one[:, 512:1024].any()  # the std of one frame is exactly 0, as before


def test_probe_attention_is_uniform_over_speech():
    model = build_model("probe", FC.n_mels, {"emotion": 3}, n_layers=2).eval()
    states = torch.randn(1, 3, 10, 512)
    speech = torch.zeros(1, 10, dtype=torch.bool)
    speech[0, 2:6] = True
    out = model(states, torch.tensor([10]), speech=speech)
    assert out.attention[0, 2:6].tolist() == [0.25] * 4 and float(out.attention[0].sum()) == pytest.approx(1.0)


def test_a_frame_normalised_probe_reads_each_frames_shape_not_its_scale():
    """``frame_norm``: each frame's state is layer-normalised before the mean and std over speech (checked
    against a plain numpy reading on the encoder's real states), so a frame's overall scale and offset, which
    the voice and the recording set, no longer move the statistics; without it they do."""
    import numpy as np

    enc = shared_encoder()
    fe = FrontEnd(FC, enc, 2)
    x, lengths = pad_batch([harmonics(140, 1.3) + 0.3 * tone(1800, 1.3)])
    with torch.no_grad():
        out = fe(x, lengths)
    states, n = out.states, out.lengths
    speech = torch.zeros(1, states.shape[2], dtype=torch.bool)
    speech[0, 3:20] = True
    normed = build_model("probe", FC.n_mels, {"emotion": 3}, n_layers=2, layers=[1, 2], frame_norm=True).eval()
    plain = build_model("probe", FC.n_mels, {"emotion": 3}, n_layers=2, layers=[1, 2]).eval()
    got = normed.features(states, n, speech)[0].numpy()
    ref = []
    for layer in (1, 2):
        f = states[0, layer, 3:20].double().numpy()
        f = (f - f.mean(1, keepdims=True)) / np.sqrt(f.var(1, keepdims=True) + 1e-5)
        ref += [f.mean(0), f.std(0)]
    np.testing.assert_allclose(got, np.concatenate(ref), atol=2e-4)
    scale = torch.linspace(0.5, 40.0, states.shape[2])[None, None, :, None]  # every frame its own gain and offset
    moved = states * scale + 3.0
    torch.testing.assert_close(normed.features(moved, n, speech), normed.features(states, n, speech), atol=2e-3, rtol=1e-3)
    assert (plain.features(moved, n, speech) - plain.features(states, n, speech)).abs().max() > 1.0
    # localatt's statistics branch takes the same option; its layer mix already normalises each frame, so with
    # it the whole model ignores a frame's gain and offset, and without it the statistics branch does not
    torch.manual_seed(0)
    heads = {"emotion": 3}
    for frame_norm, moves in ((True, False), (False, True)):
        m = build_model("localatt", FC.n_mels, heads, n_layers=2, stats=True, frame_norm=frame_norm).eval()
        with torch.no_grad():
            a, b = m(states, n, speech).logits["emotion"], m(moved, n, speech).logits["emotion"]
        assert bool((a - b).abs().max() > 1e-2) is moves
    for bad, msg in (({"frame_norm": "false"}, "frame_norm must be true or false"),
                     ({"classifier": "svm"}, "classifier must be one of logistic, lda")):
        with pytest.raises(ValueError, match=msg):  # a recipe or a card: refused before any statistics are read
            build_model("probe", FC.n_mels, {"emotion": 3}, n_layers=2, **bad)


def test_registry_rejects_unknown():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("transformer", 80, {"emotion": 4})
    with pytest.raises(ValueError, match="'emotion' head"):
        build_model("localatt", 80, {"gender": 2})
    with pytest.raises(ValueError, match="n_layers"):
        build_model("localatt", 80, {"emotion": 4}, n_layers=7)


def test_logmel_frames_and_times():
    fe = LogMel(FC)
    x = torch.as_tensor(tone(1000, 1.0))[None]
    feats, frames = fe(x)
    assert feats.shape == (1, FC.n_mels, SR // FC.hop_length) and int(frames) == feats.shape[2]
    times = FC.frame_times_s(feats.shape[2])
    assert times[1] - times[0] == pytest.approx(0.01) and times[-1] == pytest.approx(0.99)
    # a 1 kHz tone lights up the mel band containing 1 kHz
    import torchaudio.functional as AF
    centres = AF.melscale_fbanks(FC.n_bins, FC.fmin_hz, FC.fmax_hz, FC.n_mels, SR, norm="slaney",
                                 mel_scale="slaney").argmax(0) * SR / FC.n_fft
    band = int(feats[0].mean(1).argmax())
    assert abs(float(centres[band]) - 1000) < 80
