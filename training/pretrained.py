"""Pretrained weights for frozen front ends: where they come from and how they get into a model.

The GE2E speaker encoder (:mod:`serdemo.models.ge2e`) is resemblyzer's ``pretrained.pt``
(Apache-2.0, Resemblyzer 0.1.4). It is read once with ``torch.load(weights_only=True)`` (tensors
only, no code) and from then on travels as safetensors inside every checkpoint that uses it, so a
fresh machine needs no resemblyzer: the weights are taken from a shipped checkpoint.

    python -m training.pretrained --from-resemblyzer PATH/TO/pretrained.pt --out ge2e.safetensors
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

GE2E_LICENCE = "GE2E encoder weights: Apache-2.0 (resemblyzer 0.1.4, Resemble AI)"
SHIPPED = Path(__file__).resolve().parent.parent / "checkpoints"


def _from_resemblyzer(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)["model_state"]
    return {k: v.float().contiguous() for k, v in state.items() if k.startswith(("lstm.", "linear."))}


def _from_checkpoint(path: Path) -> dict[str, torch.Tensor] | None:
    tensors = load_file(str(path))
    got = {k[len("ge2e."):]: v for k, v in tensors.items() if k.startswith("ge2e.")}
    return got or None


def ge2e_state_dict(source: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """-> (state dict for :class:`GE2EEncoder`, where it came from).

    Looks at ``source`` or ``$SERDEMO_GE2E`` (a resemblyzer ``pretrained.pt``, a safetensors file
    of the encoder, or a checkpoint folder), then the installed resemblyzer package, then every
    shipped checkpoint that carries the encoder.
    """
    candidates = [source or os.environ.get("SERDEMO_GE2E")]
    try:
        import importlib.util

        spec = importlib.util.find_spec("resemblyzer")
        if spec and spec.origin:
            candidates.append(str(Path(spec.origin).parent / "pretrained.pt"))
    except (ImportError, ValueError):
        pass
    candidates += [str(p) for p in sorted(SHIPPED.glob("*/model.safetensors"))]
    for c in candidates:
        if not c:
            continue
        p = Path(c)
        if p.is_dir():
            p = p / "model.safetensors"
        if not p.is_file():
            continue
        if p.suffix == ".pt":
            return _from_resemblyzer(p), f"resemblyzer {p.name}"
        state = _from_checkpoint(p) if p.parent.joinpath("card.json").is_file() else load_file(str(p))
        if state:
            return state, f"{p.parent.name}/{p.name}"
    raise SystemExit("no GE2E encoder weights found: install Resemblyzer==0.1.4 (pip install --no-deps) "
                     "or set SERDEMO_GE2E to its pretrained.pt or to a checkpoint that carries them")


def init_pretrained(model) -> str | None:
    """Load pretrained weights into every frozen front end the model has; returns the source."""
    encoder = getattr(model, "ge2e", None)
    if encoder is None:
        return None
    state, where = ge2e_state_dict()
    encoder.load_state_dict(state)
    return where


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m training.pretrained", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from-resemblyzer", required=True, help="resemblyzer's pretrained.pt")
    ap.add_argument("--out", required=True, help="safetensors file to write")
    args = ap.parse_args(argv)
    save_file(_from_resemblyzer(Path(args.from_resemblyzer)), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
