"""Adapters for corpora the project does not ship figures for (CREMA-D, TESS, SAVEE, IEMOCAP): each reads
the corpus's own layout and file names, as :mod:`training.corpora`'s do."""

from __future__ import annotations

import csv
import re

from serdemo import labels as L
from training.corpus_types import (
    CorpusError,
    CorpusScan,
    Utterance,
    audio_files,
    require_dir,
)

# ---------------------------------------------------------------- CREMA-D
CREMAD_NAME = re.compile(r"^(?P<spk>\d{4})_(?P<text>[A-Z]{3})_(?P<emo>[A-Z]{3})_(?P<lvl>[A-Z]{2})$")


def scan_cremad(root) -> CorpusScan:
    """CREMA-D: ``AudioWAV/1001_DFA_ANG_XX.wav``; gender from ``VideoDemographics.csv`` when present."""
    root = require_dir(root, "cremad")
    scan = CorpusScan("cremad", str(root))
    genders: dict[str, str] = {}
    demo = next(iter(root.rglob("VideoDemographics.csv")), None)
    if demo is not None:
        with open(demo, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                sex = (row.get("Sex") or "").strip().lower()
                if sex in ("male", "female"):
                    genders[str(row.get("ActorID", "")).strip()] = sex
    for path in audio_files(root):
        m = CREMAD_NAME.match(path.stem)
        if not m:
            scan.problems.append((str(path), "name does not follow 1001_DFA_ANG_XX"))
            continue
        emo = L.CREMAD.get(m["emo"])
        if emo is None:
            scan.problems.append((str(path), f"unknown emotion code {m['emo']!r}"))
            continue
        scan.utterances.append(Utterance(str(path), emo, f"cremad:{m['spk']}", "cremad", genders.get(m["spk"])))
    return scan


# ---------------------------------------------------------------- TESS
TESS_NAME = re.compile(r"^(?P<spk>OAF|YAF)_(?P<word>[A-Za-z]+)_(?P<emo>[A-Za-z_]+)$", re.IGNORECASE)


def scan_tess(root) -> CorpusScan:
    """TESS: ``OAF_back_angry.wav`` / ``YAF_..._ps.wav``; two female speakers."""
    root = require_dir(root, "tess")
    scan = CorpusScan("tess", str(root))
    for path in audio_files(root):
        m = TESS_NAME.match(path.stem)
        emo = L.TESS.get(m["emo"].lower()) if m else None
        if not m or emo is None:
            scan.problems.append((str(path), "name does not follow OAF|YAF_word_emotion"))
            continue
        scan.utterances.append(Utterance(str(path), emo, f"tess:{m['spk'].upper()}", "tess", "female"))
    return scan


# ---------------------------------------------------------------- SAVEE
SAVEE_NAME = re.compile(r"^(?:(?P<spk>DC|JE|JK|KL)_)?(?P<emo>sa|su|a|d|f|h|n)(?P<num>\d\d)$")
SAVEE_SPEAKERS = {"DC", "JE", "JK", "KL"}


def scan_savee(root) -> CorpusScan:
    """SAVEE: ``AudioData/DC/a01.wav`` (speaker folders) or ``DC_a01.wav`` (flat); four male speakers."""
    root = require_dir(root, "savee")
    scan = CorpusScan("savee", str(root))
    for path in audio_files(root):
        m = SAVEE_NAME.match(path.stem)
        spk = (m["spk"] if m else None) or (path.parent.name if path.parent.name in SAVEE_SPEAKERS else None)
        if not m or spk is None:
            scan.problems.append((str(path), "name does not follow [DC|JE|JK|KL]/e01 or SPK_e01"))
            continue
        scan.utterances.append(Utterance(str(path), L.SAVEE[m["emo"]], f"savee:{spk}", "savee", "male"))
    return scan


# ---------------------------------------------------------------- IEMOCAP
IEMOCAP_LINE = re.compile(r"^\[(?P<start>[\d.]+) - (?P<end>[\d.]+)\]\t(?P<utt>Ses\d\d[FM]_\S+)\t(?P<emo>\w+)\t")
IEMOCAP_UTT = re.compile(r"^(?P<ses>Ses\d\d)[FM]_(?P<dialog>.+)_(?P<spk>[FM])\d{3}$")


def scan_iemocap(root) -> CorpusScan:
    """IEMOCAP: ``SessionN/dialog/EmoEvaluation/*.txt`` labels, ``SessionN/sentences/wav/<dialog>/<utt>.wav``.

    The speaker is the session plus the speaking actor's gender (``Ses01F``); ``xxx`` (no agreement)
    is excluded on purpose.
    """
    root = require_dir(root, "iemocap")
    scan = CorpusScan("iemocap", str(root))
    evals = sorted(root.glob("Session*/dialog/EmoEvaluation/*.txt"))
    if not evals:
        raise CorpusError(f"iemocap: no Session*/dialog/EmoEvaluation/*.txt under {root}")
    for ev in evals:
        session_dir = ev.parents[2]
        for line in ev.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.startswith("["):
                continue
            m = IEMOCAP_LINE.match(line)
            u = IEMOCAP_UTT.match(m["utt"]) if m else None
            if not m or not u:
                scan.problems.append((f"{ev}: {line[:60]}", "label line not understood"))
                continue
            wav = session_dir / "sentences" / "wav" / m["utt"].rsplit("_", 1)[0] / f"{m['utt']}.wav"
            if m["emo"] not in L.IEMOCAP:
                scan.problems.append((str(wav), f"unknown emotion code {m['emo']!r}"))
                continue
            emo = L.IEMOCAP[m["emo"]]
            if emo is None:
                scan.excluded.append((str(wav), "annotators did not agree (xxx)"))
                continue
            if not wav.is_file():
                scan.problems.append((str(wav), "labelled in EmoEvaluation but the wav is missing"))
                continue
            gender = "female" if u["spk"] == "F" else "male"
            scan.utterances.append(Utterance(str(wav), emo, f"iemocap:{u['ses']}{u['spk']}", "iemocap", gender))
    return scan
