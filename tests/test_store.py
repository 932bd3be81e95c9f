import csv
import multiprocessing as mp
import os
import signal
import sqlite3
import threading

import numpy as np
import pytest
import soundfile as sf

from serdemo.store import Store, StoreError
from tests.conftest import harmonics, tone
from training.corpora import scan_manifest, scan_store


def test_clip_stored_once_and_history_is_append_only(tmp_path):
    store = Store(tmp_path)
    wave = harmonics(150, 1.0)
    a = store.add_clip(wave, "a.wav", predicted="happy", confidence=0.4, checkpoint="default")
    b = store.add_clip(wave.copy(), "again.wav")
    assert a == b and len(list((tmp_path / "audio").rglob("*.wav"))) == 1
    data, sr = sf.read(store.clip_path(a))
    assert sr == 16000 and np.abs(data - wave).max() < 1e-4
    store.add_label(a, "sad", "ann", predicted="happy", confidence=0.4, checkpoint="default")
    store.add_label(a, "angry", "bob")
    hist = store.history(a)
    assert [h.label for h in hist] == ["sad", "angry"] and hist[0].predicted == "happy"
    assert store.current_labels()[a].label == "angry"
    assert store.counts() == {"label": {"angry": 1}, "annotator": {"ann": 1, "bob": 1}}


def test_bad_relabels_are_refused(tmp_path):
    store = Store(tmp_path)
    sha = store.add_clip(tone(200, 0.5))
    with pytest.raises(StoreError, match="enter your name"):
        store.add_label(sha, "sad", " ")
    with pytest.raises(StoreError, match="choose a label"):
        store.add_label(sha, "", "ann")
    with pytest.raises(StoreError, match="analyse it first"):
        store.add_label("f" * 64, "sad", "ann")
    assert store.history(sha) == []


def test_label_clip_records_the_clips_latest_analysis(tmp_path):
    store = Store(tmp_path)
    sha = store.add_clip(tone(220, 0.5), predicted="happy", confidence=0.4, checkpoint="old")
    store.add_clip(tone(220, 0.5), predicted="sad", confidence=0.7, checkpoint="new")  # analysed again
    confirmed = store.label_clip(sha, None, "ann")
    corrected = store.label_clip(sha, "angry", "bob")
    assert (confirmed.label, confirmed.predicted, confirmed.confidence, confirmed.checkpoint) == \
        ("sad", "sad", 0.7, "new")
    assert (corrected.label, corrected.predicted, corrected.checkpoint) == ("angry", "sad", "new")
    assert [(h.label, h.predicted) for h in store.history(sha)] == [("sad", "sad"), ("angry", "sad")]
    unanalysed = store.add_clip(tone(330, 0.5))
    with pytest.raises(StoreError, match="no model prediction to confirm"):
        store.label_clip(unanalysed, None, "ann")
    with pytest.raises(StoreError, match="analyse it first"):
        store.label_clip("f" * 64, None, "ann")


def test_queue_orders_least_confident_first(tmp_path):
    store = Store(tmp_path)
    ids = [store.add_clip(tone(200 + 50 * i, 0.5), predicted="happy", confidence=c) for i, c in enumerate([0.9, 0.2, 0.5])]
    assert [q["clip"] for q in store.queue()] == [ids[1], ids[2], ids[0]]


def test_eight_threads_relabel_fifty_clips_each(tmp_path):
    store = Store(tmp_path)
    clips = [store.add_clip(tone(100 + 7 * i, 0.3)) for i in range(50)]
    labels = ["neutral", "happy", "sad", "angry"]
    errors = []

    def worker(t):
        try:
            local = Store(tmp_path)  # each writer its own connection, as app workers would have
            for i, clip in enumerate(clips):
                local.add_label(clip, labels[(t + i) % 4], f"annotator-{t}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    for clip in clips:
        hist = store.history(clip)
        assert len(hist) == 8 and sorted(h.annotator for h in hist) == [f"annotator-{t}" for t in range(8)]
    assert store.counts()["annotator"] == {f"annotator-{t}": 50 for t in range(8)}
    assert sum(store.counts()["label"].values()) == 50


def _relabel_forever(path, clip):
    store = Store(path)
    i = 0
    while True:
        store.add_label(clip, "sad", f"writer-{i}")
        i += 1


def test_killed_writer_leaves_a_readable_store(tmp_path):
    store = Store(tmp_path)
    clip = store.add_clip(tone(300, 0.5))
    proc = mp.get_context("spawn").Process(target=_relabel_forever, args=(tmp_path, clip))
    proc.start()
    import time
    deadline = time.time() + 20
    while time.time() < deadline and len(store.history(clip)) < 20:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    con = sqlite3.connect(tmp_path / "store.sqlite3")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = con.execute("SELECT label, annotator, created_utc FROM labels").fetchall()
    assert len(rows) >= 20 and all(r[0] == "sad" and r[1].startswith("writer-") and r[2] for r in rows)
    ids = [r[0] for r in con.execute("SELECT id FROM labels ORDER BY id")]
    assert ids == list(range(1, len(ids) + 1))  # no gap, no partial row
    store.add_label(clip, "happy", "after")  # still writable
    assert store.current_labels()[clip].label == "happy"


def test_exports_feed_training(tmp_path):
    store = Store(tmp_path / "data")
    a = store.add_clip(harmonics(150, 1.0), speaker="alice")
    b = store.add_clip(harmonics(220, 1.0))
    store.add_label(a, "angry", "ann")
    store.add_label(b, "happy", "ann")
    store.add_label(b, "sad", "bob")
    manifest = store.export_manifest(tmp_path / "m.csv")
    scan = scan_manifest(manifest)
    assert not scan.problems
    assert sorted((u.emotion, u.naturalness) for u in scan.utterances) == [("angry", "natural"), ("sad", "natural")]
    assert {u.speaker for u in scan.utterances} >= {"store:alice"}
    folder = store.export_audiofolder(tmp_path / "af")
    rows = list(csv.DictReader(open(folder / "metadata.csv")))
    assert {r["label"] for r in rows} == {"angry", "sad"}
    for r in rows:
        p = (folder / r["file_name"]).resolve()
        assert p.is_file() and folder.resolve() in p.parents
    s = scan_store(tmp_path / "data")
    assert sorted(u.emotion for u in s.utterances) == ["angry", "sad"]
