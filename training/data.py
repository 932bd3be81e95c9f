"""From corpora to tensors: label mapping, the decoded-audio cache, batches and augmentation."""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from serdemo.audio import AudioError, load_audio
from serdemo.features import pad_batch
from serdemo.fsutil import atomic_write
from serdemo.labels import AUX_HEADS, LabelSet
from training.corpora import Utterance

log = logging.getLogger(__name__)
IGNORE = -100  # target for an example without a label for that head


def default_cache_dir() -> Path:
    return Path(os.environ.get("SERDEMO_CACHE", Path.home() / ".cache" / "serdemo")) / "waves"


class WaveCache:
    """Decoded 16 kHz mono waveforms, in memory and on disk (``.npy``, never pickled).

    The key covers the file's path, size and modification time and the decode settings, so an
    edited file is decoded again. After the first epoch no audio is decoded at all.
    """

    def __init__(self, directory: Path | None = None, sample_rate: int = 16000, max_duration_s: float = 60.0):
        self.directory = Path(directory) if directory else default_cache_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.sample_rate, self.max_duration_s = sample_rate, max_duration_s
        self.memory: dict[str, np.ndarray] = {}
        self.hits = self.misses = 0

    def key(self, path: str) -> str:
        st = os.stat(path)
        raw = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{self.sample_rate}|{self.max_duration_s}"
        return hashlib.sha1(raw.encode()).hexdigest()

    def get(self, path: str) -> np.ndarray:
        if path in self.memory:
            self.hits += 1
            return self.memory[path]
        file = self.directory / f"{self.key(path)}.npy"
        try:
            wave = np.load(file, allow_pickle=False)
            self.hits += 1
        except (OSError, ValueError):
            self.misses += 1
            wave = load_audio(path, target_rate=self.sample_rate, max_duration_s=self.max_duration_s)
            atomic_write(file, lambda f: np.save(f, wave, allow_pickle=False))
        self.memory[path] = wave
        return wave

    def warm(self, paths: list[str], workers: int = 2) -> dict[str, str]:
        """Decode all ``paths`` in parallel; returns ``{path: error message}`` for those that fail."""
        errors: dict[str, str] = {}

        def one(p):
            try:
                self.get(p)
            except AudioError as exc:
                errors[p] = str(exc)

        with ThreadPoolExecutor(max(1, workers)) as pool:
            list(pool.map(one, paths))
        return errors


@dataclass
class Example:
    utt: Utterance
    targets: dict[str, int]  # head -> class index or IGNORE


def build_examples(utts: list[Utterance], label_set: LabelSet, aux_heads: list[str]) -> tuple[list[Example], dict]:
    """Map utterances onto the label set; returns examples and a summary of what was dropped."""
    examples, dropped = [], {}
    for u in utts:
        idx = label_set.index(u.emotion)
        if idx is None:
            dropped[u.emotion] = dropped.get(u.emotion, 0) + 1
            continue
        targets = {"emotion": idx}
        for head in aux_heads:
            value = getattr(u, head)
            targets[head] = AUX_HEADS[head].index(value) if value in AUX_HEADS[head] else IGNORE
        examples.append(Example(u, targets))
    return examples, dropped


def class_weights(examples: list[Example], n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, normalised to mean 1 over the classes present."""
    counts = np.bincount([e.targets["emotion"] for e in examples], minlength=n_classes).astype(float)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max((counts > 0).sum(), 1), 0.0)
    w = w / w[counts > 0].mean()
    return torch.tensor(w, dtype=torch.float32)


class WaveAugment:
    """Optional waveform augmenters from nlpaug, each applied with probability ``p``."""

    NAMES = ("noise", "speed", "loudness", "shift")

    def __init__(self, names: list[str], sample_rate: int, p: float = 0.5, seed: int = 0):
        unknown = set(names) - set(self.NAMES)
        if unknown:
            raise ValueError(f"unknown augmenters {sorted(unknown)}; choose from {self.NAMES}")
        import nlpaug.augmenter.audio as naa

        makers = {
            "noise": lambda: naa.NoiseAug(zone=(0.0, 1.0), coverage=1.0),
            "speed": lambda: naa.SpeedAug(zone=(0.0, 1.0), coverage=1.0, factor=(0.9, 1.1)),
            "loudness": lambda: naa.LoudnessAug(zone=(0.0, 1.0), coverage=1.0, factor=(0.5, 2.0)),
            "shift": lambda: naa.ShiftAug(sampling_rate=sample_rate, duration=0.2),
        }
        self.augmenters = [makers[n]() for n in names]
        self.p = p
        self.rng = np.random.default_rng(seed)

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        for aug in self.augmenters:
            if self.rng.random() < self.p:
                out = aug.augment(wave)
                out = out[0] if isinstance(out, list) else out
                wave = np.asarray(out, dtype=np.float32)
        return wave


def collate(waves: list[np.ndarray], examples: list[Example], heads: list[str]):
    """-> ``(batch, samples)`` waves, ``(batch,)`` lengths, head -> ``(batch,)`` targets."""
    x, lengths = pad_batch(waves)
    targets = {h: torch.tensor([e.targets.get(h, IGNORE) for e in examples], dtype=torch.long) for h in heads}
    return x, lengths, targets


def batches(order: list[int], batch_size: int, lengths: list[int] | None = None, bucket: bool = True):
    """Split ``order`` into batches; with ``bucket``, sort by length within windows of 8 batches
    to cut padding while keeping the shuffle."""
    if bucket and lengths is not None:
        window = batch_size * 8
        chunks = [sorted(order[i:i + window], key=lambda j: lengths[j]) for i in range(0, len(order), window)]
        order = [j for c in chunks for j in c]
    out = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return out
