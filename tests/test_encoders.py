"""The encoder seam: a contract, a registry, several encoders in one process, each checkpoint served on the
encoder its card names (Whisper base, Whisper tiny.en, and a toy encoder added with one registry line)."""

import json
import shutil

import numpy as np
import pytest
import torch

from serdemo import encoders
from serdemo.checkpoint import CheckpointError, encoder_block, load_checkpoint, make_card, save_checkpoint
from serdemo.encoders import EncoderError, whisper_tiny_en
from serdemo.encoders.ct2 import find_weights
from serdemo.features import FeatureConfig
from serdemo.inference import Predictor
from serdemo.models import build_model
from tests.conftest import EMODB, shared_clip

FC = FeatureConfig()
HEADS = {"emotion": ["anger", "happiness", "neutral", "sadness"]}


@pytest.fixture
def toy_registered(monkeypatch):
    """What a contributor's diff adds: the encoder's own file (tests/plugins/toy_encoder.py) and one line."""
    monkeypatch.setitem(encoders.REGISTRY, "toy", "tests.plugins.toy_encoder")
    yield
    encoders._LOADED.pop("toy", None)


def probe_checkpoint(tmp_path, name: str) -> str:
    enc = encoders.load(name)
    torch.manual_seed(0)
    model = build_model("probe", FC.n_mels, {"emotion": 4}, encoder=enc.info, layers=[1, 2])
    with torch.no_grad():
        for p in model.heads.parameters():
            p.normal_(0, 0.01)
    card = make_card(model, FC, HEADS, {"layers": [1, 2]}, name=f"probe-{name}", license="test",
                     encoder=encoder_block(enc))
    return save_checkpoint(tmp_path / name, model, card)


def test_info_is_read_without_loading_weights_and_matches_the_loaded_encoder():
    for name in ("whisper-base", "whisper-tiny.en"):
        info = encoders.info(name)
        enc = encoders.load(name)
        assert enc.info == info and len(enc.digest) == 64
        assert not any(p.requires_grad for p in enc.parameters())
        wave = torch.as_tensor(np.sin(2 * np.pi * 220 * np.arange(24000) / 16000), dtype=torch.float32)[None]
        states, lengths = enc.states(wave, torch.tensor([24000]))
        assert len(states) == info.n_layers + 1 and int(lengths[0]) == 75  # 1.5 s at 50 frames/s
        assert all(s.shape == (1, 75, info.width) for s in states)
    assert (encoders.info("whisper-base").width, encoders.info("whisper-tiny.en").width) == (512, 384)
    assert (encoders.info("whisper-base").n_layers, encoders.info("whisper-tiny.en").n_layers) == (6, 4)
    with pytest.raises(EncoderError, match="unknown encoder 'whisper-large'; known: whisper-base, whisper-tiny.en"):
        encoders.info("whisper-large")


def test_both_whisper_encoders_stay_loaded_in_one_process_and_differ():
    base, tiny = encoders.load("whisper-base"), encoders.load("whisper-tiny.en")
    assert encoders.load("whisper-base") is base and encoders.load("whisper-tiny.en") is tiny
    assert base.digest != tiny.digest


def test_tiny_en_weights_are_hash_checked(tmp_path):
    _, (path,) = find_weights(whisper_tiny_en.SOURCES)
    bad = tmp_path / "model.bin"
    shutil.copy(path, bad)
    with open(bad, "r+b") as f:  # one byte of a tensor changed
        f.seek(40_000_000)
        b = f.read(1)
        f.seek(40_000_000)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(EncoderError, match="SHA-256 .* not the Whisper tiny.en upload"):
        whisper_tiny_en.load([bad])


def test_the_predictor_serves_a_checkpoint_of_each_encoder_in_one_process(tmp_path):
    clip = shared_clip(EMODB / "wav" / "03a01Fa.wav")
    results = {}
    for name in ("whisper-base", "whisper-tiny.en"):
        path = probe_checkpoint(tmp_path, name)
        card = json.loads((path / "card.json").read_text())
        assert card["encoder"]["name"] == name and card["encoder"]["digest"] == encoders.load(name).digest
        pred = Predictor.from_checkpoint(path, device="cpu")
        assert pred.frontend.encoder is encoders.load(name) and pred.model.width == encoders.info(name).width
        results[name] = pred.predict(clip)
        assert abs(sum(results[name].probabilities["emotion"].values()) - 1) < 1e-6
    # different encoders, different statistics: the two predictions are not the same numbers
    assert results["whisper-base"].probabilities != results["whisper-tiny.en"].probabilities


def test_a_card_naming_one_encoder_with_anothers_digest_or_an_unknown_encoder_is_refused(tmp_path):
    path = probe_checkpoint(tmp_path, "whisper-tiny.en")
    card = json.loads((path / "card.json").read_text())
    card["encoder"]["digest"] = encoders.load("whisper-base").digest
    (path / "card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="another pretrained encoder"):
        Predictor.from_checkpoint(path, device="cpu")
    card["encoder"]["name"] = "wavlm-large"
    (path / "card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="'encoder.name' is 'wavlm-large'.*known: whisper-base, whisper-tiny.en"):
        load_checkpoint(path)


def test_a_card_without_an_encoder_name_is_read_as_whisper_base(tmp_path):
    """Every card written before encoders had names (the shipped ones among them) still loads, on base."""
    path = probe_checkpoint(tmp_path, "whisper-base")
    card = json.loads((path / "card.json").read_text())
    del card["encoder"]["name"], card["encoder"]["width"], card["encoder"]["n_layers"]
    (path / "card.json").write_text(json.dumps(card))
    assert Predictor.from_checkpoint(path, device="cpu").frontend.encoder is encoders.load("whisper-base")


def test_an_encoder_added_with_its_own_file_and_one_registry_line_trains_saves_and_serves(tmp_path, toy_registered):
    from tests.plugins.toy_encoder import ToyEncoder

    enc = encoders.load("toy")
    assert isinstance(enc, ToyEncoder) and encoders.info("toy").width == 24
    path = probe_checkpoint(tmp_path, "toy")
    pred = Predictor.from_checkpoint(path, device="cpu")
    assert pred.model.width == 24 and pred.frontend.n_layers == 2
    out = pred.predict(shared_clip(EMODB / "wav" / "03a01Fa.wav"))
    assert set(out.probabilities["emotion"]) == set(HEADS["emotion"])
    # a model on it that reads more blocks than it has is refused with the encoder's own depth
    with pytest.raises(ValueError, match=r"n_layers must be within 1..2 \(toy has 2 blocks\)"):
        build_model("localatt", FC.n_mels, {"emotion": 4}, encoder="toy", n_layers=3)
