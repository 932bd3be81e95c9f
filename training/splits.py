"""Speaker-independent splits: no speaker is ever on both sides.

Clips from the app's annotation store (corpus ``store``) are always training data: their speakers are
unknown (one person's recordings would spread over train, dev and test as "one speaker per clip"), and
a person's corrections are there to be learnt. A stored clip whose audio equals a corpus clip (a corpus
file analysed in the app) is dropped, so a held-out clip never trains under another name.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter, defaultdict
from typing import Callable, Sequence

from training.corpora import Utterance

STORE_CORPUS = "store"  # training.corpora.scan_store and the app's retraining manifest
log = logging.getLogger(__name__)


def speakers_of(utts: Sequence[Utterance]) -> list[str]:
    return sorted({u.speaker for u in utts})


def speaker_folds(utts: Sequence[Utterance], n_folds: int, seed: int = 0) -> list[list[str]]:
    """Partition speakers into ``n_folds`` groups, balanced per corpus and by gender where known.

    Speakers are dealt round-robin within each (corpus, gender) group after a seeded shuffle, so
    each fold holds a similar mix; emotion stratification follows because every speaker of an
    acted corpus covers every emotion.
    """
    speakers = speakers_of(utts)
    if n_folds < 2 or n_folds > len(speakers):
        raise ValueError(f"need 2..{len(speakers)} folds for {len(speakers)} speakers, got {n_folds}")
    info = {u.speaker: (u.corpus, u.gender or "?") for u in utts}
    groups: dict[tuple, list[str]] = defaultdict(list)
    for s in speakers:
        groups[info[s]].append(s)
    rng = random.Random(seed)
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    turn = 0
    for key in sorted(groups):
        members = groups[key]
        rng.shuffle(members)
        for s in members:
            folds[turn % n_folds].append(s)
            turn += 1
    return [sorted(f) for f in folds]


def split_by_speakers(utts: Sequence[Utterance], test_speakers) -> tuple[list[Utterance], list[Utterance]]:
    test_speakers = set(test_speakers)
    train = [u for u in utts if u.speaker not in test_speakers]
    test = [u for u in utts if u.speaker in test_speakers]
    return train, test


def leave_one_speaker_out(utts: Sequence[Utterance]) -> list[list[str]]:
    return [[s] for s in speakers_of(utts)]


def leave_one_session_out(utts: Sequence[Utterance]) -> list[list[str]]:
    """IEMOCAP: both speakers of a session form one fold (``iemocap:Ses01F`` + ``iemocap:Ses01M``)."""
    sessions: dict[str, list[str]] = defaultdict(list)
    for s in speakers_of(utts):
        sessions[s[:-1] if s.startswith("iemocap:") else s].append(s)
    return [sorted(v) for _, v in sorted(sessions.items())]


def corpus_folds(utts: Sequence[Utterance]) -> list[list[str]]:
    """Leave one corpus out: fold k holds every speaker of the k-th corpus (sorted by name)."""
    by: dict[str, set[str]] = defaultdict(set)
    for u in utts:
        by[u.corpus].add(u.speaker)
    if len(by) < 2:
        raise ValueError(f"leave-one-corpus-out needs two corpora or more, got {sorted(by)}")
    return [sorted(v) for _, v in sorted(by.items())]


def make_folds(utts: Sequence[Utterance], scheme: str, n_folds: int = 5, seed: int = 0) -> list[list[str]]:
    """``scheme``: ``speakers`` (k groups), ``corpus`` (one corpus each), ``loso`` (one speaker
    each), ``session`` (IEMOCAP)."""
    if scheme == "speakers":
        return speaker_folds(utts, n_folds, seed)
    if scheme == "corpus":
        return corpus_folds(utts)
    if scheme == "loso":
        return leave_one_speaker_out(utts)
    if scheme == "session":
        return leave_one_session_out(utts)
    raise ValueError(f"unknown split scheme {scheme!r}: speakers, loso or session")


def train_dev_test(utts: Sequence[Utterance], scheme: str = "speakers", n_folds: int = 5,
                   fold: int | None = 0, seed: int = 0):
    """Speaker-independent train/dev/test.

    Fold ``fold`` is the test set (``None``: no test set, everything trains); dev is the next fold
    (used for early stopping and model selection only). Folds are dealt over the corpus speakers
    only; clips of the annotation store (corpus ``store``) all go to train, except those whose audio
    equals a corpus clip (:func:`drop_stored_duplicates`). Returns three lists of utterances.
    """
    stored = [u for u in utts if u.corpus == STORE_CORPUS]
    utts = [u for u in utts if u.corpus != STORE_CORPUS]
    if stored and not utts:
        raise ValueError("stored clips only train: add a corpus to hold out dev and test speakers")
    train, dev, test = _corpus_split(utts, scheme, n_folds, fold, seed)
    if stored:
        held = {u.speaker for u in dev + test}
        of_held = [u for u in stored if u.source_speaker in held]
        if of_held:
            log.warning("leaving out %d stored clip(s) cut from recordings of held-out (dev/test) speakers",
                        len(of_held))
        stored = [u for u in stored if u.source_speaker not in held]
        stored = drop_stored_duplicates(stored, train, dev + test)
    return train + stored, dev, test


def _corpus_split(utts, scheme, n_folds, fold, seed):
    folds = make_folds(utts, scheme, n_folds, seed)
    n = len(folds)
    if scheme == "corpus":  # the held-out corpus tests; dev is a quarter of the other corpora's speakers
        test_spk = set(folds[fold]) if fold is not None else set()
        rest, test = split_by_speakers(utts, test_spk)
        dev_spk = speaker_folds(rest, min(4, len(speakers_of(rest))), seed)[0]
        train, dev = split_by_speakers(rest, dev_spk)
        return train, dev, test
    if fold is None:
        test_spk: set[str] = set()
        dev_spk = set(folds[0])
    else:
        if not 0 <= fold < n:
            raise ValueError(f"fold {fold} out of range 0..{n - 1}")
        test_spk = set(folds[fold])
        dev_spk = set(folds[(fold + 1) % n])
    rest, test = split_by_speakers(utts, test_spk)
    train, dev = split_by_speakers(rest, dev_spk)
    return train, dev, test


# ---------------------------------------------------------------- stored clips that are corpus clips
def content_hash(path: str) -> str | None:
    """The store's content hash of a file (SHA-256 of its 16-bit samples at 16 kHz, as the app stores
    an upload: :func:`serdemo.store.clip_hash`); None when the file cannot be read as a clip."""
    from serdemo.audio import SAMPLE_RATE, AudioError, load_audio
    from serdemo.store import clip_hash

    try:
        return clip_hash(load_audio(path, target_rate=SAMPLE_RATE, max_duration_s=math.inf))
    except (AudioError, OSError, ValueError):
        return None


def stored_length(path: str) -> int | None:
    """Samples the file has at 16 kHz once loaded (from its header, no decoding); None if unknown."""
    import soundfile as sf

    from serdemo.audio import SAMPLE_RATE, resample_ratio

    try:
        info = sf.info(path)
    except (RuntimeError, OSError, ValueError):
        return None
    if info.samplerate == SAMPLE_RATE:
        return int(info.frames)
    return math.ceil(info.frames * resample_ratio(info.samplerate, SAMPLE_RATE))


def drop_stored_duplicates(stored: Sequence[Utterance], train: Sequence[Utterance], held_out: Sequence[Utterance],
                           hash_of: Callable[[str], str | None] = content_hash,
                           length_of: Callable[[str], int | None] = stored_length,
                           tolerance: int = 160) -> list[Utterance]:
    """``stored`` without the clips whose audio equals a corpus clip of ``train`` or ``held_out``.

    The corpus copy keeps its place (a held-out one never trains under the store's name). Only
    corpus clips within ``tolerance`` samples of a stored clip's length are decoded and hashed.
    """
    if not stored:
        return []
    own = {u.path: (hash_of(u.path), length_of(u.path)) for u in stored}
    lengths = sorted(n for _, n in own.values() if n is not None)
    hashes = {h for h, _ in own.values() if h}
    found: dict[str, str] = {}  # content hash -> "train" | "held out"
    for part, utts in (("held out", held_out), ("train", train)):
        for u in utts:
            n = length_of(u.path)
            near = n is None or any(abs(n - m) <= tolerance for m in lengths)
            if near and (h := hash_of(u.path)) in hashes:
                found.setdefault(h, part)
    kept = [u for u in stored if own[u.path][0] not in found]
    dropped = Counter(found[own[u.path][0]] for u in stored if own[u.path][0] in found)
    if dropped:
        log.warning("dropping %d stored clip(s) that are corpus clips (%s); the corpus copies keep their place",
                    sum(dropped.values()), ", ".join(f"{v} {k}" for k, v in sorted(dropped.items())))
    return kept

