"""Speaker-independent splits: no speaker is ever on both sides."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Sequence

from training.corpora import Utterance


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
    (used for early stopping and model selection only). Returns three lists of utterances.
    """
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


def label_counts(utts: Sequence[Utterance]) -> dict[str, int]:
    return dict(Counter(u.emotion for u in utts))
