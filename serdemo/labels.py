"""Canonical emotion labels, label sets, and each corpus's mapping onto them.

Every corpus adapter maps its native codes to a *canonical* name (:data:`CANONICAL`). A label set
is an ordered list of classes plus explicit rules for the canonical names it merges or drops, so
corpora with different inventories can be aggregated without silent relabelling.
"""

from __future__ import annotations

CANONICAL = ("neutral", "calm", "happy", "sad", "angry", "fear", "disgust", "surprise",
             "boredom", "excited", "frustrated", "other")

# native codes -> canonical names
EMODB = {"W": "angry", "L": "boredom", "E": "disgust", "A": "fear", "F": "happy", "T": "sad", "N": "neutral"}
RAVDESS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fear",
           "07": "disgust", "08": "surprise"}
NEMO = {"anger": "angry", "fear": "fear", "happiness": "happy", "neutral": "neutral", "sadness": "sad",
        "surprised": "surprise"}
EMOVO = {"dis": "disgust", "gio": "happy", "neu": "neutral", "pau": "fear", "rab": "angry", "sor": "surprise",
         "tri": "sad"}
CREMAD = {"ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
TESS = {"angry": "angry", "disgust": "disgust", "fear": "fear", "happy": "happy", "neutral": "neutral",
        "ps": "surprise", "pleasant_surprise": "surprise", "pleasant_surprised": "surprise",
        "sad": "sad"}
SAVEE = {"a": "angry", "d": "disgust", "f": "fear", "h": "happy", "n": "neutral", "sa": "sad", "su": "surprise"}
IEMOCAP = {"neu": "neutral", "hap": "happy", "exc": "excited", "sad": "sad", "ang": "angry", "fea": "fear",
           "dis": "disgust", "sur": "surprise", "fru": "frustrated", "oth": "other", "xxx": None}


class LabelSet:
    """Ordered classes and the rules mapping canonical names onto them.

    ``merge`` maps a canonical name to one of ``classes``; names in ``drop`` are excluded on
    purpose; any other canonical name not in ``classes`` is an error, so nothing is silently lost.
    """

    def __init__(self, name: str, classes: tuple[str, ...], merge: dict[str, str] | None = None,
                 drop: tuple[str, ...] = (), description: str = ""):
        self.name, self.classes = name, tuple(classes)
        self.merge, self.drop = dict(merge or {}), tuple(drop)
        self.description = description
        for src, dst in self.merge.items():
            assert dst in self.classes, f"{name}: merge target {dst} of {src} is not a class"

    def map(self, canonical: str) -> str | None:
        """Canonical name -> class name, or None when this set drops it."""
        if canonical in self.classes:
            return canonical
        if canonical in self.merge:
            return self.merge[canonical]
        if canonical in self.drop:
            return None
        raise KeyError(f"label set {self.name!r} has no rule for {canonical!r}")

    def index(self, canonical: str) -> int | None:
        target = self.map(canonical)
        return None if target is None else self.classes.index(target)

    def __len__(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        return {"name": self.name, "classes": list(self.classes), "merge": self.merge,
                "drop": list(self.drop), "description": self.description}


LABEL_SETS: dict[str, LabelSet] = {
    s.name: s for s in [
        LabelSet("emo4", ("neutral", "happy", "sad", "angry"),
                 merge={"calm": "neutral", "excited": "happy"},
                 drop=("fear", "disgust", "surprise", "boredom", "frustrated", "other"),
                 description="IEMOCAP-style 4 classes; calm->neutral, excited->happy"),
        LabelSet("ekman7", ("neutral", "happy", "sad", "angry", "fear", "disgust", "surprise"),
                 merge={"calm": "neutral", "excited": "happy"},
                 drop=("boredom", "frustrated", "other"),
                 description="Ekman's six plus neutral; calm->neutral, excited->happy; boredom dropped"),
        LabelSet("emodb7", ("neutral", "happy", "sad", "angry", "fear", "disgust", "boredom"),
                 drop=("calm", "surprise", "excited", "frustrated", "other"),
                 description="EMO-DB's native seven"),
        LabelSet("ravdess8", ("neutral", "calm", "happy", "sad", "angry", "fear", "disgust", "surprise"),
                 drop=("boredom", "excited", "frustrated", "other"),
                 description="RAVDESS's native eight"),
    ]
}

GENDERS = ("female", "male")
NATURALNESS = ("acted", "natural")
AUX_HEADS = {"gender": GENDERS, "naturalness": NATURALNESS}


def get_label_set(name: str) -> LabelSet:
    if name not in LABEL_SETS:
        raise KeyError(f"unknown label set {name!r}; known: {sorted(LABEL_SETS)}")
    return LABEL_SETS[name]

# The one label set annotators choose from, on every tab of the app and through its API: the classes
# the shipped models predict and retraining trains on (nothing offered here is dropped by training).
ANNOTATION_LABEL_SET = "ekman7"
ANNOTATION_LABELS = LABEL_SETS[ANNOTATION_LABEL_SET].classes
