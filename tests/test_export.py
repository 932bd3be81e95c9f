"""Exports (serdemo.export): every annotator's label per clip with a majority label, the clip's agreement
and its provenance; the audiofolder zip loads with the ``datasets`` library's ``audiofolder`` builder (a
test-only dependency, offline), the training manifest with ``training.corpora.scan_manifest``."""

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from serdemo import export
from serdemo.store import Store, StoreError, as_stored, clip_hash
from tests.conftest import EMODB, RAVDESS, SHARED, SR, harmonics, shared_clip

# source name -> (annotator labels in saving order, majority label, rule, agreement)
CLIPS = {
    "03-01-05-01-01-01-12.flac": ([("first", "neutral"), ("second", "angry")], "angry", "tie: latest", 0.5),
    "03a01Fa.wav": ([("first", "happy"), ("second", "happy")], "happy", "unanimous", 1.0),
    "my recording.webm": ([("first", "sad"), ("second", "neutral"), ("third", "sad")], "sad", "majority", 2 / 3),
    "C:\\Users\\me\\EB0_anger_1.flac": ([("second", "angry")], "angry", "single", None),
}


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "data")
    s.waves = {}
    for i, (name, (labels, *_)) in enumerate(CLIPS.items()):
        wave = as_stored(harmonics(120 + 40 * i, 0.5 + 0.25 * i))
        sha = s.add_clip(wave, source_name=name, predicted="neutral", confidence=0.4, checkpoint="default")
        for who, lab in labels:
            s.label_clip(sha, "fear", who)  # each annotator's earlier label is superseded by their next one
            s.label_clip(sha, lab, who)
        s.waves[sha] = (name, wave)
    s.add_clip(as_stored(harmonics(300, 0.5)), source_name="unlabelled.wav")  # not exported
    return s


def unzip(archive: Path, into: Path) -> Path:
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
        assert all(not n.startswith("/") and ".." not in n for n in names), names
        z.extractall(into)
    (top,) = {n.split("/")[0] for n in names}
    return into / top


EXPECTED_ORIGIN = {  # source name -> (source_name, corpus, speaker, gender, naturalness)
    "03-01-05-01-01-01-12.flac": ("03-01-05-01-01-01-12.flac", "ravdess", "ravdess:12", "female", "acted"),
    "03a01Fa.wav": ("03a01Fa.wav", "emodb", "emodb:03", "male", "acted"),
    "my recording.webm": ("my recording.webm", "", "", "", "unknown"),
    "C:\\Users\\me\\EB0_anger_1.flac": ("EB0_anger_1.flac", "nemo", "nemo:EB0", "", "acted"),
}


def test_audiofolder_keeps_every_annotators_label_and_loads_with_datasets(store, tmp_path, monkeypatch):
    """Issue 17: one annotator said neutral, another angry; the zip said angry and the first label was gone.
    Now every annotator's latest label is in ``annotations``, ``label`` is the majority (a tie goes to the
    label saved last, and says so), with the clip's agreement and where it came from."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    summary = export.export_zip(store, "audiofolder", work_dir=tmp_path / "work")
    archive = summary.archive
    assert archive.suffix == ".zip" and not str(archive).startswith(str(store.directory))
    assert list(summary.folder.iterdir()) == [archive]  # the unzipped copy is gone
    assert (summary.n_clips, summary.n_labels, summary.n_annotators) == (4, 8, 3)
    assert (summary.unknown_speaker, summary.unknown_naturalness, summary.ties) == (1, 1, 1)
    assert "speaker unknown for 1" in summary.message()
    folder = unzip(archive, tmp_path / "unzipped")
    assert "speaker unknown for 1" in (folder / "README.txt").read_text()
    ds = datasets.load_dataset("audiofolder", data_dir=str(folder), split="train", cache_dir=str(tmp_path / "cache"))
    ds = ds.cast_column("audio", datasets.Audio(decode=False))  # decoding needs torchcodec; bytes suffice
    assert len(ds) == len(CLIPS)
    seen = set()
    for row in ds:
        sha = Path(row["audio"]["path"]).stem
        name, wave = store.waves[sha]
        labels, label, rule, agreement = CLIPS[name]
        assert json.loads(row["annotations"]) == dict(labels)  # every annotator, their latest label
        assert (row["label"], row["label_rule"], row["n_annotators"]) == (label, rule, len(labels))
        assert (row["agreement"] is None and agreement is None) or row["agreement"] == pytest.approx(agreement, abs=1e-3)
        source_name, corpus, speaker, gender, naturalness = EXPECTED_ORIGIN[name]
        assert row["source_name"] == source_name and row["source_clip"] == sha  # a whole upload: its own hash
        assert (row["corpus"] or "", row["speaker"] or "", row["gender"] or "", row["naturalness"]) == \
            (corpus, speaker, gender, naturalness)
        samples, sr = sf.read(row["audio"]["path"], dtype="float32")
        assert sr == SR and np.array_equal(samples, wave)
        seen.add(name)
    assert seen == set(CLIPS)


def test_training_manifest_keeps_what_training_reads_and_invents_no_speaker(store, tmp_path):
    """Issue 17: the manifest marked acted RAVDESS clips "natural" and gave each clip its own speaker. Now a
    corpus-named clip is acted with its corpus speaker; a clip of unknown origin has no naturalness and
    the one shared speaker name "unknown" with speaker_known = no (scan_manifest needs a speaker)."""
    from training.corpora import scan_manifest

    folder = unzip(export.export_zip(store, "manifest", work_dir=tmp_path / "w").archive, tmp_path / "unzipped")
    rows = list(csv.DictReader(io.StringIO((folder / "manifest.csv").read_text())))
    assert set(export.MANIFEST_COLUMNS) == set(rows[0])
    by_source = {r["source_name"]: r for r in rows}
    for name, (labels, label, rule, _) in CLIPS.items():
        r = by_source[EXPECTED_ORIGIN[name][0]]
        _, corpus, speaker, gender, naturalness = EXPECTED_ORIGIN[name]
        assert (r["emotion"], r["label_rule"], json.loads(r["annotations"])) == (label, rule, dict(labels))
        assert (r["source_corpus"], r["gender"], r["corpus"]) == (corpus, gender, "store")
        assert r["speaker"] == (speaker or "unknown") and r["speaker_known"] == ("yes" if speaker else "no")
        assert r["naturalness"] == ("" if naturalness == "unknown" else naturalness)
        assert r["path"].startswith("audio/") and (folder / r["path"]).is_file()
        assert r["source_clip"] == Path(r["path"]).stem
    scan = scan_manifest(folder / "manifest.csv")  # what --corpus manifest=FILE reads
    assert not scan.problems and len(scan.utterances) == len(CLIPS)
    assert "natural" not in {u.naturalness for u in scan.utterances}
    assert {u.speaker for u in scan.utterances} == {"store:ravdess:12", "store:emodb:03", "store:nemo:EB0",
                                                    "store:unknown"}
    # the app's retraining reads the same table with absolute paths into the store
    absolute = export.write_manifest(store, tmp_path / "retrain" / "manifest.csv")
    scan = scan_manifest(absolute)
    assert not scan.problems and all(Path(u.path).is_absolute() and Path(u.path).is_file() for u in scan.utterances)
    assert sorted(u.emotion for u in scan.utterances) == sorted(label for _, label, _, _ in CLIPS.values())


def test_names_parse_as_the_training_corpus_adapters_read_them():
    """origin_of follows training/corpora.py's conventions: for real corpus files, the same corpus, speaker
    and gender as the adapters (nEMO's gender is in data.tsv only: unknown from a name)."""
    from training.corpora import scan_emodb, scan_nemo, scan_ravdess

    checked = 0
    for scan_fn, root in ((scan_emodb, EMODB), (scan_ravdess, RAVDESS), (scan_nemo, SHARED / "nemo")):
        if not Path(root).is_dir():
            pytest.skip(f"shared corpus not found: {root}")
        for u in scan_fn(root).utterances[::25]:
            o = export.origin_of(Path(u.path).name)
            assert (o.corpus, o.speaker, o.naturalness) == (u.corpus, u.speaker, u.naturalness), u.path
            assert o.gender == (u.gender if u.corpus != "nemo" else ""), u.path
            checked += 1
    assert checked > 50
    for name in ("speech.wav", "01-01-01-01-01-01.wav", "02-01-05-01-01-01-12.mp4", "", "x @ 1.00 s"):
        assert export.origin_of(name).naturalness == "unknown" and export.origin_of(name).speaker == ""
    assert export.origin_of("mine.wav", speaker="alice").speaker == "alice"  # an entered speaker is kept


def test_a_segment_cut_from_a_held_out_corpus_clip_keeps_its_source(tmp_path):
    """Issue 18: a timeline segment of a corpus clip was caught by exact hash only, and the manifest dropped
    source_clip. The export now carries the recording's content hash (the hash training.splits gives the
    corpus file) and the corpus speaker parsed from the recording's name, so training can drop it."""
    from serdemo.audio import load_audio
    from training.splits import content_hash

    path = shared_clip(RAVDESS / "Actor_12" / "03-01-05-01-01-01-12.flac")
    whole = load_audio(str(path), target_rate=SR)
    s = Store(tmp_path / "data")
    segment = whole[int(0.5 * SR):int(2.0 * SR)]
    sha = s.add_clip(segment, source_name=f"{path.name} @ 0.50 s", predicted="angry", confidence=0.5,
                     source_clip=clip_hash(whole), offset_s=0.5)  # as the Timeline tab stores a segment
    s.label_clip(sha, "sad", "ann")
    assert sha != content_hash(str(path))  # the segment's own hash matches no corpus file
    rows = list(csv.DictReader(open(export.write_manifest(s, tmp_path / "m.csv"), encoding="utf-8")))
    (row,) = rows
    assert row["source_clip"] == content_hash(str(path))
    assert (row["source_name"], row["offset_s"]) == (path.name, "0.500")
    assert (row["source_corpus"], row["speaker"], row["naturalness"]) == ("ravdess", "ravdess:12", "acted")
    meta = export.export_audiofolder(s, tmp_path / "af")
    (row,) = list(csv.DictReader(open(meta.folder / "metadata.csv", encoding="utf-8")))
    assert row["source_clip"] == content_hash(str(path)) and row["speaker"] == "ravdess:12"


def test_nothing_to_export_is_a_clear_error(tmp_path):
    s = Store(tmp_path / "empty")
    for kind in export.KINDS:
        with pytest.raises(StoreError, match="label some clips first"):
            export.export_zip(s, kind, work_dir=tmp_path)
    with pytest.raises(StoreError, match="unknown export"):
        export.export_zip(s, "../../etc", work_dir=tmp_path)
    assert list(tmp_path.glob("serdemo-export-*")) == []  # nothing left behind


def test_store_methods_delegate_to_the_export(store, tmp_path):
    """The Store's export methods (the UI and training.corpora call them) write the same tables."""
    folder = export.export_audiofolder(store, tmp_path / "af").folder
    assert {r["label"] for r in csv.DictReader(open(folder / "metadata.csv"))} == {"angry", "happy", "sad"}
    folder = export.export_training_folder(store, tmp_path / "tf").folder
    assert (folder / "manifest.csv").is_file() and not (folder / "metadata.csv").exists()
    assert export.write_manifest(store, tmp_path / "m.csv").read_text().startswith(",".join(export.MANIFEST_COLUMNS))


def test_exported_audio_is_a_copy_the_store_keeps_its_own(store, tmp_path):
    summary = export.export_audiofolder(store, tmp_path / "af")
    for sha in store.waves:
        exported = summary.folder / "audio" / f"{sha}.wav"
        assert exported.read_bytes() == store.clip_path(sha).read_bytes()
        exported.write_bytes(b"edited")  # someone edits the export in place
        assert store.clip_path(sha).read_bytes()[:4] == b"RIFF"


def test_old_export_folders_are_removed_and_recent_ones_kept(store, tmp_path):
    import os
    import time

    work = tmp_path / "exports"
    old = export.export_zip(store, "audiofolder", work_dir=work)
    new = export.export_zip(store, "manifest", work_dir=work)
    hour_ago = time.time() - 3601
    os.utime(old.folder, (hour_ago, hour_ago))
    (work / "unrelated").mkdir()
    os.utime(work / "unrelated", (hour_ago, hour_ago))
    assert export.remove_old_exports(work, older_than_s=3600) == 1
    assert not old.folder.exists() and new.archive.is_file() and (work / "unrelated").is_dir()


# ------------------------------------------------------------------ formula injection (issue 29 item 3)
HOSTILE_NAMES = ["=1+1.wav", '=HYPERLINK("evil.example";"click").wav', "@SUM(1+1).wav", "-2+3.wav",
                 "+1.wav", "\t=1+1.wav", "\r=1+1.wav"]
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cells(csv_file: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(csv_file.read_text(encoding="utf-8"))))


def test_upload_names_that_look_like_formulas_are_written_as_text_in_every_export(tmp_path):
    """Issue 29 item 3: an upload named ``=HYPERLINK(...)`` reached ``source_name`` in metadata.csv and
    manifest.csv verbatim, a live formula in whoever opened the export in a spreadsheet. Every untrusted cell
    starting like a formula now starts with ``'``; the paths we generate are kept, so the manifest still
    trains (scan_manifest finds every file)."""
    from training.corpora import scan_manifest

    store = Store(tmp_path / "data")
    for i, name in enumerate(HOSTILE_NAMES):
        sha = store.add_clip(as_stored(harmonics(110 + 30 * i, 0.5)), source_name=name, speaker="@boss",
                             predicted="neutral", confidence=0.4, checkpoint="default")
        store.label_clip(sha, "sad", "-ann")
    audiofolder = unzip(export.export_zip(store, "audiofolder", work_dir=tmp_path / "a").archive, tmp_path / "ua")
    manifest = unzip(export.export_zip(store, "manifest", work_dir=tmp_path / "m").archive, tmp_path / "um")
    retrain = export.write_manifest(store, tmp_path / "retrain" / "manifest.csv")
    for table in (audiofolder / "metadata.csv", manifest / "manifest.csv", retrain):
        rows = _cells(table)
        assert len(rows) == len(HOSTILE_NAMES)
        for row in rows:
            for column, cell in row.items():
                assert not cell.startswith(FORMULA_STARTS), (table.name, column, cell)
        names = sorted(r["source_name"] for r in rows)
        assert all(n.startswith("'") for n in names), names
        assert "'=1+1.wav" in names and "'@SUM(1+1).wav" in names and "'-2+3.wav" in names
        assert {r["speaker"] for r in rows} == {"'@boss"}
    for table in (manifest / "manifest.csv", retrain):  # paths are ours: unchanged, and they resolve
        scan = scan_manifest(table)
        assert not scan.problems and len(scan.utterances) == len(HOSTILE_NAMES)
        assert all(Path(u.path).is_file() for u in scan.utterances)
    assert all(r["file_name"].startswith("audio/") for r in _cells(audiofolder / "metadata.csv"))


def test_the_timeline_csv_writes_formula_like_text_as_text():
    """The Timeline tab's CSV: a relabelled segment's annotator ``@alice`` or a label ``=1+1`` is text; the
    numbers (start, end, probabilities) stay numbers."""
    from serdemo.timeline import Segment, Timeline

    probs = {"emotion": {"angry": 0.25, "sad": 0.75}}
    segments = [Segment(0, 0.0, 1.5, probs), Segment(1, 2.0, 3.0, probs)]
    segments[0].human_label, segments[0].annotator = "=1+1", "@alice"
    tl = Timeline("=evil.wav", 3.0, ["angry", "sad"], "default", segments, [], [], np.zeros(0), np.zeros(0),
                  np.zeros(0))
    rows = list(csv.DictReader(io.StringIO(tl.csv_text())))
    assert rows[0]["human_label"] == "'=1+1" and rows[0]["annotator"] == "'@alice"
    assert rows[0]["start"] == "0.0" and rows[0]["sad"] == "0.75" and rows[1]["annotator"] == ""
    for row in rows:
        assert not any(v.startswith(FORMULA_STARTS) for v in row.values()), row
