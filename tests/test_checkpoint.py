import json
import logging
import shutil

import numpy as np
import pytest
import torch

from serdemo.checkpoint import (CARD, WEIGHTS, CheckpointError, encoder_block, list_checkpoints, load_checkpoint,
                                make_card, read_card, save_checkpoint, sha256_file)
from serdemo.encoders import load as shared_encoder
from serdemo.features import FeatureConfig
from serdemo.inference import Predictor
from serdemo.models import build_model

FC = FeatureConfig()
HEADS = {"emotion": ["neutral", "happy", "sad", "angry"], "gender": ["female", "male"]}


def edit_card(path, change) -> dict:
    card = json.loads((path / CARD).read_text())
    change(card)
    (path / CARD).write_text(json.dumps(card))
    return card


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    model = build_model("localatt", FC.n_mels, {k: len(v) for k, v in HEADS.items()}, hidden=32, dense=64,
                        n_layers=2)
    card = make_card(model, FC, HEADS, {"hidden": 32, "dense": 64, "n_layers": 2}, name="tiny", license="test",
                     metrics={"cv": {"ua": 0.5}}, encoder=encoder_block(shared_encoder()))
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


def test_not_safetensors_is_refused_even_with_a_matching_hash(ckpt):
    path, _ = ckpt
    (path / WEIGHTS).write_bytes(b"\x80\x04pickle-looking bytes" * 10)
    edit_card(path, lambda c: c["weights"].update(sha256=sha256_file(path / WEIGHTS),
                                                  bytes=(path / WEIGHTS).stat().st_size))
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
    with pytest.raises(CheckpointError, match="names architecture 'transformer'.*known: cnnlstm"):
        load_checkpoint(path)
    card["model"]["architecture"] = "localatt"
    card["model"]["hparams"]["hidden"] = 0  # an LSTM of no units: the card builds nothing
    (path / CARD).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="buildable"):
        load_checkpoint(path)
    card["heads"] = {"gender": ["female", "male"]}
    (path / CARD).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="no 'emotion' head"):
        load_checkpoint(path)


def test_a_model_on_the_encoder_names_it_and_uses_its_front_end(ckpt):
    """The card carries the encoder's digest and provenance; another encoder, a missing digest or a front
    end with another frame rate (hop) are refused with the checkpoint's name, never silently run."""
    path, _ = ckpt
    card = read_card(path)
    assert card["encoder"]["digest"] == shared_encoder().digest and "MIT" in card["encoder"]["license"]
    edit_card(path, lambda c: c["encoder"].update(digest="0" * 64))
    with pytest.raises(CheckpointError, match="another pretrained encoder"):
        Predictor.from_checkpoint(path, device="cpu")
    edit_card(path, lambda c: c.pop("encoder"))
    with pytest.raises(CheckpointError, match="'encoder' object"):
        read_card(path)
    edit_card(path, lambda c: c.update(encoder={"digest": shared_encoder().digest}))
    edit_card(path, lambda c: c["features"].update(hop_length=320))
    with pytest.raises(CheckpointError, match="encoder's front end"):
        read_card(path)
    with pytest.raises(ValueError, match="encoder_block"):
        make_card(build_model("probe", 80, {"emotion": 4}), FC, {"emotion": list("abcd")}, {})


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


# ------------------------------------------------------------------ malformed cards: a clear CheckpointError, no path
def _set(*keys_value):
    *keys, last, value = keys_value

    def change(card):
        for k in keys:
            card = card[k]
        card[last] = value
    return change


def _drop(*keys):
    def change(card):
        for k in keys[:-1]:
            card = card[k]
        del card[keys[-1]]
    return change


MALFORMED = {
    "format_version string": (_set("format_version", "1"), "format_version must be a whole number"),
    "format_version boolean": (_set("format_version", True), "format_version must be a whole number"),
    "format_version future": (_set("format_version", 2), "upgrade serdemo"),
    "heads a list": (_set("heads", ["neutral", "happy"]), "'heads' must be an object"),
    "head with one label": (_set("heads", "gender", ["female"]), "head 'gender' must list at least two"),
    "head with repeated labels": (_set("heads", "emotion", ["sad", "sad", "angry", "happy"]), "distinct"),
    "head labels not strings": (_set("heads", "emotion", [1, 2, 3, 4]), "head 'emotion' must list"),
    "hop_length 0": (_set("features", "hop_length", 0), "'features.hop_length' must be a whole number"),
    "hop_length float": (_set("features", "hop_length", 160.5), "'features.hop_length' must be a whole number"),
    "n_mels string": (_set("features", "n_mels", "64"), "'features.n_mels'"),
    "window longer than fft": (_set("features", "n_fft", 256), "longer than 'features.n_fft'"),
    "fmax above nyquist": (_set("features", "fmax_hz", 9000.0), "fmax_hz <= sample_rate / 2"),
    "unknown feature": (_set("features", "colour", "red"), "not a feature configuration"),
    "features a list": (_set("features", [1, 2]), "'features' must be an object"),
    "model a string": (_set("model", "localatt"), "'model' must be an object"),
    "hparams a list": (_set("model", "hparams", [32, 64]), "'model.hparams' must be an object"),
    "hparam huge": (_set("model", "hparams", "hidden", 10**9), "at most 65536"),
    "hparam not finite": (_set("model", "hparams", "dense", float("inf")), "finite"),
    "tunes more blocks than it runs": (_set("model", "hparams", "tune_layers", 3), "'model.hparams.tune_layers' must"),
    "weights missing": (_drop("weights"), "lacks weights"),
    "sha256 missing": (_drop("weights", "sha256"), "'weights.sha256' must be"),
    "sha256 short": (_set("weights", "sha256", "abc123"), "'weights.sha256' must be"),
    "bytes missing": (_drop("weights", "bytes"), "'weights.bytes' must be"),
    "bytes string": (_set("weights", "bytes", "1000"), "'weights.bytes' must be"),
    "weights file absolute": (_set("weights", "file", "/etc/passwd"), "inside the checkpoint folder"),
    "weights file climbs out": (_set("weights", "file", "../tiny2/model.safetensors"), "inside the checkpoint folder"),
    "weights file a number": (_set("weights", "file", 7), "inside the checkpoint folder"),
    "metrics a list": (_set("metrics", []), "'metrics' must be an object"),
    "name a number": (_set("name", 3), "'name' must be a string"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_card_is_a_clear_error(ckpt, tmp_path, case):
    path, _ = ckpt
    change, message = MALFORMED[case]
    edit_card(path, change)
    for reader in (read_card, load_checkpoint):
        with pytest.raises(CheckpointError, match=message) as info:
            reader(path)
        assert "checkpoint 'tiny'" in str(info.value) and str(tmp_path) not in str(info.value)


def test_weights_outside_the_folder_are_never_read(ckpt, tmp_path):
    """A card cannot make the loader read a file outside its folder, even one with the right hash."""
    path, _ = ckpt
    outside = tmp_path / "outside.safetensors"
    shutil.copy(path / WEIGHTS, outside)
    for name in (str(outside), "../outside.safetensors"):
        edit_card(path, _set("weights", "file", name))
        with pytest.raises(CheckpointError, match="inside the checkpoint folder"):
            load_checkpoint(path)
    (path / "link.safetensors").symlink_to(outside)
    edit_card(path, _set("weights", "file", "link.safetensors"))
    with pytest.raises(CheckpointError, match="outside the checkpoint folder") as info:
        load_checkpoint(path)
    assert str(tmp_path) not in str(info.value)


def test_the_app_catalogue_skips_a_broken_checkpoint_with_one_warning(ckpt, tmp_path, caplog, emodb_clip):
    from serdemo.workbench import Settings, Workbench

    path, _ = ckpt
    for name, case in (("broken-version", "format_version string"), ("broken-heads", "heads a list"),
                       ("broken-hop", "hop_length 0"), ("broken-path", "weights file climbs out")):
        edit_card(shutil.copytree(path, tmp_path / name), MALFORMED[case][0])
    caplog.set_level(logging.WARNING, logger="serdemo")
    bench = Workbench(Settings(checkpoint_dirs=(tmp_path,), data_dir=tmp_path / "data"))
    assert list(bench.catalogue) == ["tiny"] and bench.default_choice() == "tiny"
    assert [name for _, name in bench.choices()] == ["tiny"]
    lines = [r.getMessage() for r in caplog.records]
    for name in ("broken-version", "broken-heads", "broken-hop", "broken-path"):
        assert sum(f"checkpoint '{name}'" in line for line in lines) == 1, lines
    assert all("\n" not in line and str(tmp_path) not in line for line in lines)
    bench.reload()  # the same problems are not logged again on every rescan
    assert len(caplog.records) == len(lines)
    assert bench.predictor("tiny").predict(emodb_clip, alpha=None).label() in HEADS["emotion"]


def test_the_probe_cards_recipe_and_dev_speakers_read_as_what_was_done():
    """The default (a probe, refitted on train + dev) is not described with epochs and augmentation it never
    had, and its dev speakers are not listed as never trained on."""
    from serdemo.cards import card_summary_markdown
    from tests.conftest import ROOT

    card = json.loads((ROOT / "checkpoints" / "default" / "card.json").read_text())
    assert card["training"]["config"]["model"] == "probe" and card["model"]["hparams"]["refit"]
    parts = card_summary_markdown("default", card).split("\n\n")
    recipe = next(p for p in parts if p.startswith("**Recipe**"))
    assert "linear probe" in recipe and "states 2-4" in recipe and "refitted" in recipe
    assert "epochs" not in recipe and "VTLP" not in recipe and "SpecAugment" not in recipe
    held = next(p for p in parts if p.startswith("**Speakers held out**"))
    never, dev = held.split("Dev speakers")
    assert "emodb 03, 13" in never and "emodb 08, 10" not in never and "emodb 08, 10" in dev
    from serdemo.cards import metric_rows

    evaluations = {r.evaluation for r in metric_rows(card)}  # the held-out table says what dev did, as the summary does
    # the shipped default: frame-normalised statistics, a shrinkage LDA fixed by the screen; its card says so,
    # and that its dev speakers chose nothing (one value to try)
    assert "dev speakers (scored it and set its temperature)" in evaluations
    assert not any("epoch" in e or "chose" in e for e in evaluations)
    assert "each frame layer-normalised" in recipe and "linear discriminant analysis" in recipe
    assert "shrinkage 0.8 fixed by the dev-only screen" in recipe and "logistic" not in recipe
    assert "which scored it and set its temperature" in held and "chose" not in held
    hp = card["model"]["hparams"]
    hp["c_grid"] = [0.6, 0.8, 0.9]  # a grid: then the dev speakers chose from it
    summary = card_summary_markdown("default", card)
    assert "shrinkage 0.8 chosen on dev UA" in summary and "which chose the shrinkage" in summary
    assert "dev speakers (chose the shrinkage)" in {r.evaluation for r in metric_rows(card)}
    for key in ("frame_norm", "classifier", "shrinkage", "c_grid"):
        hp.pop(key, None)
    hp.update(pool="mean", nap=4, balance="corpus", C=0.01)  # the screen's other fit-time options
    summary = card_summary_markdown("default", card)
    recipe = next(p for p in summary.split("\n\n") if p.startswith("**Recipe**"))
    assert "the mean over speech" in recipe and "4 directions" in recipe and "(NAP)" in recipe
    assert "class- and corpus-balanced logistic regression with C 0.01" in recipe and "layer-normalised" not in recipe
    assert "dev speakers (chose C)" in {r.evaluation for r in metric_rows(card)} and "chose C" in summary
    other = json.loads((ROOT / "checkpoints" / "localatt" / "card.json").read_text())
    assert "dev speakers (picked the epoch)" in {r.evaluation for r in metric_rows(other)}  # a trained head did
    recipe = next(p for p in card_summary_markdown("localatt", other).split("\n\n") if p.startswith("**Recipe**"))
    assert "epochs" in recipe and "encoder frozen (4 blocks run)" in recipe
    other["model"]["hparams"]["tune_layers"] = 1  # a fine-tuned head says so, and at what rate
    other["training"]["config"]["encoder_lr"] = 0.1
    recipe = next(p for p in card_summary_markdown("localatt", other).split("\n\n") if p.startswith("**Recipe**"))
    assert "top 1 of 4 blocks fine-tuned at 0.1 x lr" in recipe and "frozen" not in recipe
