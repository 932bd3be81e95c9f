"""Each corpus's file-name convention in one place: the pattern, the speaker it names (corpus-qualified, as
``training.splits`` keys speakers) and the speaker's gender where the name tells it. The corpus adapters
(``training/corpora.py``) read corpus files by these rules, and :func:`serdemo.export.origin_of` reads a
stored clip's source name by the same rules, so a clip uploaded from a corpus file is known as that
corpus's speaker and a retraining keeps it out when the speaker is held out. No torch, no Gradio.

Adding a corpus whose file names name their speaker: one :class:`NameRule` here, listed in :data:`NAME_RULES`,
and its adapter matching with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class NameRule:
    """One corpus's file-name convention. ``speaker`` and ``gender`` read a match of ``pattern`` (on the stem,
    lower-cased first when ``lower``); ``gender`` gives None when the name does not tell; ``audio`` says
    whether a matching name is an audio recording at all (RAVDESS names its video-only files alike)."""

    corpus: str
    pattern: re.Pattern
    speaker: Callable[[re.Match], str]
    gender: Callable[[re.Match], str | None]
    audio: Callable[[re.Match], bool] = lambda m: True
    lower: bool = False

    def match(self, stem: str) -> re.Match | None:
        return self.pattern.match(stem.lower() if self.lower else stem)


@dataclass(frozen=True)
class NamedClip:
    """What a corpus file's name tells: its corpus, its speaker (``"ravdess:12"``) and gender (None: unknown)."""

    corpus: str
    speaker: str
    gender: str | None


# ---------------------------------------------------------------- EMO-DB: SSaTTEv (speaker, text, emotion, take)
EMODB_NAME = re.compile(r"^(?P<spk>\d\d)(?P<text>[ab]\d\d)(?P<emo>[A-Z])(?P<take>[a-z])$")
EMODB_MALE = frozenset({"03", "10", "11", "12", "15"})
EMODB_FEMALE = frozenset({"08", "09", "13", "14", "16"})


def emodb_gender(spk: str) -> str | None:
    return "male" if spk in EMODB_MALE else "female" if spk in EMODB_FEMALE else None


EMODB = NameRule("emodb", EMODB_NAME, lambda m: f"emodb:{m['spk']}", lambda m: emodb_gender(m["spk"]))

# ---------------------------------------------------------------- RAVDESS: MM-VV-EE-II-SS-RR-AA; odd actors male
RAVDESS_NAME = re.compile(r"^(?P<mod>\d\d)-(?P<ch>\d\d)-(?P<emo>\d\d)-(?P<int>\d\d)-(?P<stmt>\d\d)-(?P<rep>\d\d)"
                          r"-(?P<actor>\d\d)$")


def ravdess_gender(actor: int) -> str:
    return "male" if actor % 2 else "female"


RAVDESS = NameRule("ravdess", RAVDESS_NAME, lambda m: f"ravdess:{int(m['actor']):02d}",
                   lambda m: ravdess_gender(int(m["actor"])), audio=lambda m: m["mod"] != "02")  # 02: video only

# ---------------------------------------------------------------- nEMO: SSS_emotion_N (genders in data.tsv only)
NEMO_NAME = re.compile(r"^(?P<spk>[A-Z]{2}\d)_(?P<emo>[a-z]+)_(?P<num>\d+)$")
NEMO = NameRule("nemo", NEMO_NAME, lambda m: f"nemo:{m['spk']}", lambda m: None)

# ---------------------------------------------------------------- EMOVO: EEE-SS-TT, speakers f1-f3 and m1-m3
EMOVO_NAME = re.compile(r"^(?P<emo>[a-z]{3})-(?P<spk>[fm]\d)-(?P<text>[a-z]\d)$")


def emovo_gender(spk: str) -> str:
    return "female" if spk[0] == "f" else "male"


EMOVO = NameRule("emovo", EMOVO_NAME, lambda m: f"emovo:{m['spk']}", lambda m: emovo_gender(m["spk"]), lower=True)

NAME_RULES = (EMODB, RAVDESS, NEMO, EMOVO)


def named_clip(stem: str) -> NamedClip | None:
    """The corpus, speaker and gender a file stem names by one of :data:`NAME_RULES` (the first that matches an
    audio recording), else None."""
    for rule in NAME_RULES:
        m = rule.match(stem)
        if m and rule.audio(m):
            return NamedClip(rule.corpus, rule.speaker(m), rule.gender(m))
    return None
