"""What every corpus adapter returns and shares: :class:`Utterance`, :class:`CorpusScan`, :class:`CorpusError`,
and finding a corpus's audio files."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3")


@dataclass(frozen=True)
class Utterance:
    path: str
    emotion: str  # canonical name (serdemo.labels.CANONICAL)
    speaker: str  # corpus-qualified, e.g. "emodb:03"
    corpus: str
    gender: str | None = None  # "female" / "male"
    naturalness: str = "acted"  # "acted" / "natural" / "unknown" (then the naturalness head ignores it)
    source_speaker: str | None = None  # a stored clip cut from a corpus clip: that clip's speaker, e.g. "ravdess:01"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CorpusScan:
    corpus: str
    root: str
    utterances: list[Utterance] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    excluded: list[tuple[str, str]] = field(default_factory=list)  # deliberately left out, with why

    def report(self) -> str:
        lines = [f"{self.corpus}: {len(self.utterances)} utterances from {self.root}"]
        if self.excluded:
            lines.append(f"  {len(self.excluded)} excluded on purpose, e.g. {self.excluded[0][0]}: {self.excluded[0][1]}")
        for path, why in self.problems:
            lines.append(f"  not understood: {path}: {why}")
        return "\n".join(lines)


class CorpusError(ValueError):
    """A corpus folder that cannot be read at all."""


def audio_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTS)


def require_dir(root, corpus: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CorpusError(f"{corpus}: {root} is not a folder")
    return root
