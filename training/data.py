"""From corpora to tensors: label mapping, the decoded-audio cache and batches (augmentation: training.augment)."""

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
from training import corpora as C
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

    def get(self, path: str, keep: bool = True) -> np.ndarray:
        """The decoded wave (``keep``: held in memory for the next call; off where a clip is read once)."""
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
        if keep:
            self.memory[path] = wave
        return wave

    def speech(self, path: str, hop_length: int = 160) -> np.ndarray:
        """The clip's speech mask on the log-mel frame grid (``len // hop`` frames; serdemo.vad), cached
        beside its wave."""
        key = ("speech", path, hop_length)
        if key in self.memory:
            return self.memory[key]
        from serdemo.vad import default_detector

        det = default_detector()
        file = self.directory / f"{self.key(path)}-speech-{det.identity}-{hop_length}.npy"  # how the mask was made
        try:
            mask = np.load(file, allow_pickle=False)
        except (OSError, ValueError):
            wave = self.get(path, keep=False)
            mask = det.frame_mask(wave, max(1, len(wave) // hop_length))
            atomic_write(file, lambda f: np.save(f, mask, allow_pickle=False))
        self.memory[key] = mask
        return mask

    def speech_batch(self, paths: list[str], n_frames: int, hop_length: int = 160) -> torch.Tensor:
        """``(batch, n_frames)`` bool speech masks for a padded batch."""
        out = torch.zeros(len(paths), n_frames, dtype=torch.bool)
        for i, p in enumerate(paths):
            m = self.speech(p, hop_length)[:n_frames]
            out[i, : len(m)] = torch.as_tensor(m)
        return out

    def warm(self, paths: list[str], workers: int = 2) -> dict[str, str]:
        """Decode all ``paths`` in parallel; returns ``{path: error message}`` for those that fail."""
        errors: dict[str, str] = {}

        def one(p):
            try:
                self.get(p, keep=False)  # decoded and stored on disk now; memory only once a clip is used
            except AudioError as exc:
                errors[p] = str(exc)

        with ThreadPoolExecutor(max(1, workers)) as pool:
            list(pool.map(one, paths))
        return errors


def load_corpora(specs: list[str], limit_per_corpus: int = 0):
    """``KIND=PATH`` specs -> (utterances, one report per corpus). ``limit_per_corpus`` > 0 keeps that
    many utterances of each corpus, dealt round-robin over its speakers (tests)."""
    utts, reports = [], []
    for spec in specs:
        kind, path = C.parse_spec(spec)
        scan = C.scan(kind, path)
        reports.append({"corpus": scan.corpus, "root": scan.root, "utterances": len(scan.utterances),
                        "not_understood": len(scan.problems), "excluded": len(scan.excluded)})
        got = scan.utterances
        if limit_per_corpus:
            by_spk: dict[str, list] = {}
            for u in got:
                by_spk.setdefault(u.speaker, []).append(u)
            got, i = [], 0
            while len(got) < limit_per_corpus and any(by_spk.values()):
                for s in sorted(by_spk):
                    if by_spk[s] and len(got) < limit_per_corpus:
                        got.append(by_spk[s].pop(i % len(by_spk[s])))
                i += 7
        utts += got
    return utts, reports


def file_list_hash(utts: list[Utterance]) -> str:
    """SHA-256 over the sorted (path, emotion, speaker) of ``utts``; goes into every card."""
    h = hashlib.sha256()
    for u in sorted(utts, key=lambda u: u.path):
        h.update(f"{u.path}|{u.emotion}|{u.speaker}\n".encode())
    return h.hexdigest()


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


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, max_steps: int = 0) -> list[list[int]]:
    """One epoch's batches of indices into a training set with clip ``lengths``: shuffled, bucketed,
    in shuffled order, a function of ``(seed, epoch)`` only, so every DDP rank (and a resumed run) gets
    the same; ``max_steps`` > 0 keeps the first that many."""
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    bs = batches(order, batch_size, lengths)
    bs = [bs[i] for i in torch.randperm(len(bs), generator=gen).tolist()]
    return bs[:max_steps] if max_steps else bs


def shard(batch: list[int], rank: int, world: int) -> tuple[list[int], float]:
    """Rank ``rank``'s disjoint share of ``batch`` and its weight in the loss. A rank whose share is empty
    (a batch smaller than the world) gets a stand-in example with weight 0: DDP needs every rank to run."""
    mine = batch[rank::world]
    return (mine, 1.0) if mine else (batch[:1], 0.0)


class Data:
    """The corpora of one run, split speaker-independently, with their decoded waves, speech masks and
    (for models on the encoder) cached encoder states. Cross-validation, screening and the trainer take
    their data from here (the retrain comparison scores two finished checkpoints on the same held-out
    speakers with :func:`training.evaluate.evaluate_checkpoint`); nothing in it builds a model or an
    optimiser.

    ``train``/``dev``/``test``: lists of :class:`Example`; ``heads``: the heads with at least two
    classes in the training data (``untrained_heads`` says why the others were dropped).
    """

    def __init__(self, cfg, label_set, utts: list[Utterance] | None = None, corpus_reports=None):
        self.cfg, self.label_set = cfg, label_set
        if utts is None:
            utts, corpus_reports = load_corpora(cfg.corpora, cfg.limit_per_corpus)
        if not utts:
            raise SystemExit("no utterances found: check --corpus KIND=PATH")
        self.all_utts, self.corpus_reports = utts, corpus_reports or []
        examples, self.dropped = build_examples(utts, label_set, cfg.aux_heads)
        from training.splits import train_dev_test

        train_u, dev_u, test_u = train_dev_test([e.utt for e in examples], cfg.split, cfg.n_folds, cfg.fold, cfg.seed)
        by_path = {e.utt.path: e for e in examples}
        self.cache = WaveCache(cfg.cache_dir or None, 16000, cfg.max_duration_s)
        self.skipped_audio = self.cache.warm([u.path for u in train_u + dev_u + test_u], cfg.workers)
        for p, msg in self.skipped_audio.items():
            log.warning("skipping %s: %s", p, msg)
        self.train, self.dev, self.test = ([by_path[u.path] for u in part if u.path not in self.skipped_audio]
                                           for part in (train_u, dev_u, test_u))
        self.file_list_sha256 = file_list_hash([e.utt for e in self.train + self.dev])
        self.store_report = self._store_report(utts, examples, dev_u + test_u)
        self.heads, self.untrained_heads = self._heads(cfg.aux_heads)
        self._encoded = None
        self._digests: dict[str, str] = {}

    def _heads(self, aux_heads: list[str]) -> tuple[list[str], dict[str, str]]:
        """The heads the training part can teach (two classes or more), and why the others cannot."""
        heads, untrained = ["emotion"], {}
        for h in aux_heads:
            seen = {e.targets.get(h, IGNORE) for e in self.train} - {IGNORE}
            if len(seen) >= 2:
                heads.append(h)
            else:
                untrained[h] = f"training data has {len(seen)} class(es) of {h}"
        return heads, untrained

    def parts(self, train: list[Example], dev: list[Example], aux_heads: list[str] = ()) -> "Data":
        """The same corpora and caches split otherwise (a screening task: no test part); the heads follow
        the new training part. Its examples must have been built with ``aux_heads``' targets."""
        import copy

        self.encoded_cache  # noqa: B018  built before the copy, so every part shares its memory of read states
        d = copy.copy(self)
        d.train, d.dev, d.test = list(train), list(dev), []
        d.file_list_sha256 = file_list_hash([e.utt for e in d.train + d.dev])
        d.store_report = None
        d.heads, d.untrained_heads = d._heads(list(aux_heads))
        return d

    def _store_report(self, utts, examples, held_out) -> dict | None:
        """How many clips of the annotation store train, and why the others do not (None: no store)."""
        from serdemo.store_rules import why_left_out  # the rule the app's retraining plan applies too
        from training.splits import STORE_CORPUS

        stored = [u for u in utts if u.corpus == STORE_CORPUS]
        if not stored:
            return None
        mapped = {e.utt.path for e in examples}
        trained = {e.utt.path for e in self.train if e.utt.corpus == STORE_CORPUS}
        held = {u.speaker for u in held_out}
        left: dict[str, int] = {}
        for u in stored:
            if u.path in trained:
                continue
            # what else leaves a mapped, readable clip of a training speaker out is its copy in a corpus
            why = why_left_out(self.label_set.name, u.path in mapped, u.path not in self.skipped_audio,
                               u.source_speaker in held, copy=True)
            left[why] = left.get(why, 0) + 1
        return {"stored": len(stored), "training": len(trained), "left_out": left}

    def uncached_count(self, alpha: float = 1.0) -> int:
        """Clips of this run whose encoder states are not cached yet (each costs an encoder pass)."""
        cache = self.encoded_cache
        return sum(not cache.file(self.digest(e), alpha).is_file() for e in self.train + self.dev + self.test)

    def digest(self, e: Example) -> str:
        """The clip's content hash (the encoder cache's key), computed once per run."""
        from training.encoded import wave_digest

        if e.utt.path not in self._digests:
            self._digests[e.utt.path] = wave_digest(self.cache.get(e.utt.path, keep=False))
        return self._digests[e.utt.path]

    def wave(self, e: Example) -> np.ndarray:
        return self.cache.get(e.utt.path)

    def speech(self, e: Example) -> np.ndarray:
        return self.cache.speech(e.utt.path)

    @property
    def encoded_cache(self):
        if self._encoded is None:
            from training.encoded import EncodedCache

            self._encoded = EncodedCache(encoder=getattr(self.cfg, "encoder", None) or "whisper-base")
        return self._encoded

    def encoded(self, examples: list[Example], alpha: float = 1.0, keep: bool = True
                ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each example's ``(states float16 (layers + 1, time, width), speech (time,))``; encodes what is missing.
        ``keep``: the states stay in memory for the next call (a trainer's epochs); off, each is read from disk."""
        return self.encoded_cache.items([self.digest(e) for e in examples],  # each clip hashed once per run
                                        lambda i: self.cache.get(examples[i].utt.path, keep=keep),
                                        lambda i: self.speech(examples[i]), alpha, keep)

    def statistics(self, examples: list[Example], layers, frame_norm: bool = False, alpha: float = 1.0,
                   chunk: int = 64) -> np.ndarray:
        """Each example's per-layer mean and std over speech (:func:`training.probe.statistics`), ``(n, dim)``
        float32, reading the cached states a chunk at a time and keeping none: what a closed-form fit needs, in
        memory that does not grow with the data."""
        from training.probe import statistics

        rows = [statistics(self.encoded(examples[i:i + chunk], alpha, keep=False), layers, frame_norm)
                for i in range(0, len(examples), chunk)]
        return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)

    def speakers(self) -> dict[str, list[str]]:
        return {name: sorted({e.utt.speaker for e in part})
                for name, part in (("train", self.train), ("dev", self.dev), ("test", self.test))}
