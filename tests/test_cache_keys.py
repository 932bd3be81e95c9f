"""The caches know how their speech masks were made: another detector (or another setting of it) is a miss for
the mask, and the encoder states already computed are reused rather than encoded again."""

import dataclasses

import numpy as np

from serdemo.vad import SpeechDetector, default_detector
from tests.conftest import harmonics


def test_the_detectors_identity_changes_with_its_settings():
    det = default_detector()
    assert det.identity == default_detector().identity and len(det.identity) == 12
    quieter = dataclasses.replace(det, normalise_level=not det.normalise_level)
    assert quieter.identity != det.identity
    assert SpeechDetector(backend="energy").identity != det.identity


def test_a_new_detector_misses_the_mask_and_reuses_the_states(tmp_path):
    from training.encoded import EncodedCache, wave_digest

    wave = harmonics(duration_s=1.0)
    frames = len(wave) // 160
    first = np.zeros(frames, dtype=bool)
    first[20:60] = True
    old = EncodedCache(tmp_path, mask_id="detector-a")
    old.fill([wave], [first])
    d = wave_digest(wave)
    states, mask = old.lookup(d)
    assert old.misses == 1 and mask.any()

    new = EncodedCache(tmp_path, mask_id="detector-b")
    assert new.lookup(d) is None  # the key includes how the mask was made: a miss
    second = np.zeros(frames, dtype=bool)
    second[70:] = True
    new.fill([wave], [second])
    states2, mask2 = new.lookup(d)
    assert new.misses == 0 and new.remasked == 1  # no encoder pass: the states were reused ...
    np.testing.assert_array_equal(states2, states)
    assert not (mask2 & mask).any() and mask2[-1]  # ... under the new detector's mask
    assert EncodedCache(tmp_path, mask_id="detector-a").lookup(d)[1].tolist() == mask.tolist()  # the old one stays


def test_the_wave_caches_mask_file_is_keyed_by_the_detector(tmp_path, monkeypatch):
    import serdemo.vad as vad
    from tests.conftest import write
    from training.data import WaveCache

    path = write(tmp_path / "v.wav", harmonics(duration_s=1.0))
    cache = WaveCache(tmp_path / "waves")
    cache.speech(str(path))
    before = sorted(p.name for p in (tmp_path / "waves").glob("*-speech-*"))
    monkeypatch.setattr(vad, "_DEFAULT", SpeechDetector(backend="energy"))
    WaveCache(tmp_path / "waves").speech(str(path))
    after = sorted(p.name for p in (tmp_path / "waves").glob("*-speech-*"))
    assert len(before) == 1 and len(after) == 2 and before[0] in after


def test_a_closed_form_fit_holds_no_states_or_waves_in_memory(tmp_path):
    """The probe reads each clip's states once for its statistics: after the whole fit (dev scoring, calibration,
    test) neither cache holds a clip, so its memory does not grow with the data."""
    from tests.conftest import EMODB, RAVDESS
    from training import fit

    if not (EMODB.is_dir() and RAVDESS.is_dir()):
        import pytest

        pytest.skip("shared corpora not found")
    cfg = fit.parse_args(["--corpus", f"emodb={EMODB}", "--corpus", f"ravdess={RAVDESS}", "--limit-per-corpus", "24",
                          "--n-folds", "3", "--fold", "0", "--out", str(tmp_path / "p"), "--cache-dir",
                          str(tmp_path / "cache"), "--model", "probe", "--aux-heads", "",
                          "--hparams", '{"n_layers": 2, "layers": [1, 2], "c_grid": [0.1]}'])
    trainer = fit.Trainer(cfg)
    metrics = trainer.fit()
    assert metrics["test"]["overall"]["n"] > 0
    assert trainer.data.encoded_cache.memory == {}  # every clip's states were read and let go
    assert not [k for k in trainer.data.cache.memory if isinstance(k, str)]  # and no decoded wave is held
