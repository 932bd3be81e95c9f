"""What ``--resume`` needs besides the weights, written without pickle.

``OUT/last/`` holds, next to ``model.safetensors`` and ``card.json``:

* ``optimizer.safetensors``: the optimiser's per-parameter tensors (``"<index>.<name>"``);
* ``trainer.json``: the epoch counters, the history and the optimiser's param groups;
* ``rng-rank<R>.safetensors`` + ``rng-rank<R>.json``: every random generator of rank R (torch CPU
  and CUDA, numpy's global state, python's ``random``, and the trainer's own generators), so a
  resumed run draws the same alphas, masks, dropout and augmentations as one never interrupted.

Each file is written to a temporary name and renamed, so a crash leaves the previous one intact.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

from serdemo.fsutil import atomic_write

OPTIMIZER = "optimizer.safetensors"
TRAINER = "trainer.json"


def _write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=1).encode()
    atomic_write(path, lambda f: f.write(text))


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    atomic_write(path, lambda f: f.write(data))


# ---------------------------------------------------------------------- optimiser and counters
def save_trainer_state(directory, opt: torch.optim.Optimizer, meta: dict) -> None:
    """Optimiser tensors to ``optimizer.safetensors``; ``meta`` (JSON-able counters) and the param
    groups to ``trainer.json``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{idx}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    _write_tensors(directory / OPTIMIZER, tensors)
    _write_json(directory / TRAINER, dict(meta, param_groups=sd["param_groups"]))


def load_trainer_state(directory, opt: torch.optim.Optimizer) -> dict:
    """Restore the optimiser; returns the counters saved with it."""
    directory = Path(directory)
    meta = json.loads((directory / TRAINER).read_text())
    flat = load_file(str(directory / OPTIMIZER))
    state: dict[int, dict] = {}
    for key, v in flat.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    return meta


# ---------------------------------------------------------------------- random generators
def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global state and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_paths(directory, rank: int) -> tuple[Path, Path]:
    directory = Path(directory)
    return directory / f"rng-rank{rank}.safetensors", directory / f"rng-rank{rank}.json"


def capture_global_rng(device: torch.device | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """-> (tensors, JSON-able) states of torch (CPU and ``device``'s CUDA), numpy and python."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        tensors["torch_cuda"] = torch.cuda.get_rng_state(device)
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    js = {"numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                    "gauss": float(gauss)},
          "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}
    return tensors, js


def restore_global_rng(tensors: dict[str, torch.Tensor], js: dict, device: torch.device | None = None) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if device is not None and device.type == "cuda" and "torch_cuda" in tensors:
        torch.cuda.set_rng_state(tensors["torch_cuda"], device)
    n = js["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = js["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


def save_rng(directory, rank: int, tensors: dict[str, torch.Tensor], js: dict) -> None:
    """Write rank ``rank``'s generator states (global ones plus any in ``tensors``/``js``)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    tpath, jpath = rng_paths(directory, rank)
    # torch generator states are uint8 tensors; safetensors keeps them bit for bit
    _write_tensors(tpath, tensors)
    _write_json(jpath, js)


def load_rng(directory, rank: int) -> tuple[dict[str, torch.Tensor], dict] | None:
    """Rank ``rank``'s saved states, or None when that rank saved none (e.g. a different world size)."""
    tpath, jpath = rng_paths(directory, rank)
    if not (tpath.is_file() and jpath.is_file()):
        return None
    return load_file(str(tpath)), json.loads(jpath.read_text())
