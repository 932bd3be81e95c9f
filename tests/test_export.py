"""Exports are zip files a user downloads: the audiofolder one loads with the ``datasets`` library's
``audiofolder`` builder (a test-only dependency) with the clips and labels of the store."""

import csv
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from serdemo.store import Store, as_stored
from serdemo.ui import Settings, Workbench
from tests.conftest import ROOT, SR, harmonics

LABELS = {0: "happy", 1: "sad", 2: "angry"}


@pytest.fixture
def bench(tmp_path):
    b = Workbench(Settings(checkpoint_dirs=(ROOT / "checkpoints",), data_dir=tmp_path / "data"))
    clips = []
    for i, label in LABELS.items():
        wave = as_stored(harmonics(120 + 40 * i, 0.5 + 0.25 * i))
        sha = b.store.add_clip(wave, source_name=f"clip{i}.wav", predicted="neutral", confidence=0.4,
                               checkpoint="default")
        b.store.label_clip(sha, "neutral", "first")  # superseded by the next label
        b.store.label_clip(sha, label, "second")
        clips.append((sha, wave, label))
    b.store.add_clip(as_stored(harmonics(300, 0.5)), source_name="unlabelled.wav")  # not exported
    b.clips = clips
    return b


def unzip(archive: Path, into: Path) -> Path:
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
        assert all(not n.startswith("/") and ".." not in n for n in names), names
        z.extractall(into)
    (top,) = {n.split("/")[0] for n in names}
    return into / top


def test_audiofolder_zip_loads_with_the_datasets_audiofolder_builder(bench, tmp_path):
    datasets = pytest.importorskip("datasets")
    archive = bench.export("audiofolder")
    assert archive.suffix == ".zip" and archive.stat().st_size > 0
    assert not str(archive).startswith(str(bench.store.directory))  # served from a temp dir, not the store
    folder = unzip(archive, tmp_path / "unzipped")
    ds = datasets.load_dataset("audiofolder", data_dir=str(folder), split="train", cache_dir=str(tmp_path / "cache"))
    ds = ds.cast_column("audio", datasets.Audio(decode=False))  # decoding needs torchcodec; bytes suffice
    assert len(ds) == len(LABELS)
    expected = {sha: (wave, label) for sha, wave, label in bench.clips}
    for row in ds:
        sha = Path(row["audio"]["path"]).stem
        wave, label = expected.pop(sha)
        assert row["label"] == label and row["annotator"] == "second"
        samples, sr = sf.read(row["audio"]["path"], dtype="float32")
        assert sr == SR and np.array_equal(samples, wave)
    assert not expected


def test_training_manifest_zip_holds_its_audio_with_relative_paths(bench, tmp_path):
    from training.corpora import scan_manifest

    folder = unzip(bench.export("manifest"), tmp_path / "unzipped")
    rows = list(csv.DictReader(io.StringIO((folder / "manifest.csv").read_text())))
    assert sorted(r["emotion"] for r in rows) == sorted(LABELS.values())
    assert all(r["path"].startswith("audio/") and (folder / r["path"]).is_file() for r in rows)
    scan = scan_manifest(folder / "manifest.csv")  # what --corpus manifest=FILE reads
    assert not scan.problems and sorted(u.emotion for u in scan.utterances) == sorted(LABELS.values())


def test_nothing_to_export_is_a_clear_error(tmp_path):
    import gradio as gr

    b = Workbench(Settings(checkpoint_dirs=(ROOT / "checkpoints",), data_dir=tmp_path / "empty"))
    with pytest.raises(gr.Error, match="label some clips first"):
        b.export("audiofolder")
    assert isinstance(Store(tmp_path / "empty"), Store)
