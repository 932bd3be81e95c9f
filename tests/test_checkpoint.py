import json

import numpy as np
import pytest
import torch

from serdemo.checkpoint import (CARD, WEIGHTS, CheckpointError, list_checkpoints, load_checkpoint,
                                make_card, save_checkpoint)
from serdemo.features import FeatureConfig
from serdemo.inference import Predictor
from serdemo.models import build_model

FC = FeatureConfig()
HEADS = {"emotion": ["neutral", "happy", "sad", "angry"], "gender": ["female", "male"]}


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    model = build_model("localatt", FC.n_mels, {k: len(v) for k, v in HEADS.items()}, hidden=32, dense=64)
    card = make_card(model, FC, HEADS, {"hidden": 32, "dense": 64}, name="tiny", license="test",
                     metrics={"cv": {"ua": 0.5}})
    return save_checkpoint(tmp_path / "tiny", model, card), model


def test_round_trip(ckpt, emodb_clip):
    path, model = ckpt
    loaded, card = load_checkpoint(path)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)
    assert card["heads"] == HEADS and card["features"] == FC.to_dict()
    assert card["weights"]["parameters"] == sum(p.numel() for p in model.parameters())
    assert list_checkpoints(path.parent) == [path]
    pred = Predictor.from_checkpoint(path, device="cpu").predict(emodb_clip, alpha=1.1)
    assert set(pred.probabilities) == {"emotion", "gender"}
    assert sum(pred.probabilities["emotion"].values()) == pytest.approx(1.0, abs=1e-5)
    assert pred.logmel_warped.shape == pred.logmel.shape
    assert pred.attention.sum() == pytest.approx(1.0, abs=1e-5)
    assert len(pred.attention_times_s) == len(pred.attention)
    assert 0 <= pred.attention_times_s[0] and pred.attention_times_s[-1] <= pred.duration_s


def test_missing_files(ckpt, tmp_path):
    path, _ = ckpt
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    (path / WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        load_checkpoint(path)


def test_missing_card(ckpt):
    path, _ = ckpt
    (path / CARD).unlink()
    with pytest.raises(CheckpointError, match="card.json is missing"):
        load_checkpoint(path)


def test_corrupt_card(ckpt):
    path, _ = ckpt
    (path / CARD).write_text((path / CARD).read_text()[:50])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)


def test_truncated_weights(ckpt):
    path, _ = ckpt
    data = (path / WEIGHTS).read_bytes()
    (path / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


def test_corrupt_weights_same_size(ckpt):
    path, _ = ckpt
    data = bytearray((path / WEIGHTS).read_bytes())
    data[-10] ^= 0xFF
    (path / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(path)


def test_not_safetensors_even_without_hash(ckpt):
    path, _ = ckpt
    card = json.loads((path / CARD).read_text())
    del card["weights"]["sha256"], card["weights"]["bytes"]
    (path / CARD).write_text(json.dumps(card))
    (path / WEIGHTS).write_bytes(b"\x80\x04pickle-looking bytes" * 10)
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_checkpoint(path)


def test_card_that_does_not_match_the_weights(ckpt):
    path, _ = ckpt
    card = json.loads((path / CARD).read_text())
    card["model"]["hparams"]["hidden"] = 48
    (path / CARD).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_checkpoint(path)
    card["model"]["architecture"] = "transformer"
    (path / CARD).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="buildable"):
        load_checkpoint(path)
    card["heads"] = {"gender": ["female", "male"]}
    (path / CARD).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="no 'emotion' head"):
        load_checkpoint(path)


def test_make_card_checks_label_counts():
    model = build_model("localatt", FC.n_mels, {"emotion": 4})
    with pytest.raises(ValueError, match="4 outputs, 3 labels"):
        make_card(model, FC, {"emotion": ["a", "b", "c"]}, {})


def test_batched_prediction_matches_single(ckpt, emodb_clip, ravdess_clip):
    path, _ = ckpt
    pred = Predictor.from_checkpoint(path, device="cpu")
    batch = pred.predict_batch([emodb_clip, ravdess_clip, emodb_clip], alpha=0.9)
    for clip, b in zip([emodb_clip, ravdess_clip], batch):
        one = pred.predict(clip, alpha=0.9)
        for head in one.probabilities:
            for k, v in one.probabilities[head].items():
                assert b.probabilities[head][k] == pytest.approx(v, abs=1e-5)
        np.testing.assert_allclose(b.attention, one.attention, atol=1e-5)
        np.testing.assert_allclose(b.logmel_warped, one.logmel_warped, atol=1e-4)
        assert b.logmel.shape[1] == len(b.frame_times_s)
