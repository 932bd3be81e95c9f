"""Our Whisper encoders against CTranslate2's own implementation of the same ``model.bin`` (a reference we
did not write): the last hidden state of a 30-s window of EMO-DB speech, compared value by value.

CTranslate2 is not a dependency of serdemo; install it aside to run this once:

    pip install --target /tmp/ct2lib ctranslate2
    CT2_PATH=/tmp/ct2lib .venv/bin/python benchmarks/encoder_parity.py

Prints, per encoder whose model.bin is one file CTranslate2 can open, the largest absolute difference, the
same relative to the largest value, and the correlation.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.append(os.environ.get("CT2_PATH", "/tmp/ct2lib"))

from serdemo import encoders  # noqa: E402
from serdemo.audio import load_audio  # noqa: E402
from serdemo.encoders.ct2 import find_weights  # noqa: E402
from serdemo.features import LogMel  # noqa: E402

CLIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "emodb" / "wav" / "03a01Fa.wav"


def model_dir(name: str) -> Path:
    """A folder CTranslate2 can open: the model.bin (parts joined) and the config.json shipped beside it."""
    module = __import__(encoders.REGISTRY[name], fromlist=["SOURCES"])
    _, parts = find_weights(module.SOURCES)
    config = parts[0].parent / "config.json"
    if len(parts) == 1 and config.is_file():
        return parts[0].parent
    out = Path(tempfile.mkdtemp())
    with open(out / "model.bin", "wb") as f:
        for p in parts:
            f.write(p.read_bytes())
    (out / "config.json").write_text('{"suppress_ids": [], "suppress_ids_begin": [], "lang_ids": [], '
                                     '"alignment_heads": []}')
    # CTranslate2 wants a vocabulary beside the model; the encoder never reads it (tokens only reach the decoder)
    (out / "vocabulary.txt").write_text("\n".join(f"t{i}" for i in range(51865)) + "\n")
    return out


def main() -> None:
    import ctranslate2

    torch.set_num_threads(2)
    wave = load_audio(CLIP)
    x = torch.zeros(1, 16000 * 30)
    x[0, : len(wave)] = torch.as_tensor(wave)
    for name in encoders.REGISTRY:
        enc = encoders.load(name)
        logmel, _ = LogMel(enc.info.features)(x, torch.tensor([x.shape[1]]))
        logmel = logmel[:, :, :3000]
        with torch.inference_mode():
            ours = enc(logmel, torch.tensor([3000]))[0][-1][0].numpy()
        try:
            ref = ctranslate2.models.Whisper(str(model_dir(name)), device="cpu", compute_type="float32")
        except Exception as exc:  # noqa: BLE001 - a model CTranslate2 cannot open is reported, not fatal
            print(f"{name}: CTranslate2 cannot open it ({type(exc).__name__}: {exc})")
            continue
        theirs = np.array(ref.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(logmel.numpy())),
                                     to_cpu=True))[0]
        diff = np.abs(ours - theirs).max()
        print(f"{name}: states {ours.shape}, max |ours - CTranslate2| {diff:.2e} "
              f"({diff / np.abs(theirs).max():.2e} of the largest value), "
              f"correlation {np.corrcoef(ours.ravel(), theirs.ravel())[0, 1]:.10f}")


if __name__ == "__main__":
    main()
