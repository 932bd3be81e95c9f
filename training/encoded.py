"""The encoder-feature cache: each clip's encoder states, computed once, reused by every head.

Key: the SHA-256 of the decoded 16 kHz waveform (content, not path: a copy in the annotation store
hits the same entry), the encoder's tensor digest, the VTLP alpha, and how the speech mask was made (the
detector's :attr:`serdemo.vad.SpeechDetector.identity`: backend and every setting). When only the mask's
maker changed, the states of the old entry are reused and the mask is recomputed (no encoder pass). Value: one ``.npz`` (read with
``allow_pickle=False``) holding ``states`` float16 ``(layers + 1, time, width)`` on the 25-frames/s model
grid (every layer and the embedding, so any layer choice reuses it) and ``speech`` bool ``(time,)``.

``python -m training.encode --corpus emodb=../shared/data/emodb ...`` fills the cache (resumable:
each finished clip is a file; a killed run redoes only what is missing).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch

from serdemo.encoding import FrontEnd, speech_on_grid
from serdemo.features import pad_batch
from serdemo.fsutil import atomic_write
from serdemo import encoders

log = logging.getLogger(__name__)


def default_dir() -> Path:
    return Path(os.environ.get("SERDEMO_CACHE", Path.home() / ".cache" / "serdemo")) / "encoded"


def wave_digest(wave: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(wave, dtype=np.float32).tobytes()).hexdigest()


class EncodedCache:
    """Encoder states per (clip content, encoder, alpha), in memory and on disk."""

    def __init__(self, directory: Path | None = None, frontend: FrontEnd | None = None,
                 encoder: str = encoders.DEFAULT, mask_id: str | None = None):
        if frontend is None:
            enc = encoders.load(encoder)
            frontend = FrontEnd(enc.info.features, enc)
        self.frontend = frontend
        enc = self.frontend.encoder
        self.directory = Path(directory or default_dir()) / enc.digest[:16]
        self.directory.mkdir(parents=True, exist_ok=True)
        if mask_id is None:
            from serdemo.vad import default_detector

            mask_id = default_detector().identity
        self.mask_id = mask_id
        self.memory: dict[tuple[str, float], tuple[np.ndarray, np.ndarray]] = {}
        self.hits = self.misses = self.remasked = 0

    def file(self, digest: str, alpha: float) -> Path:
        return self.directory / f"{digest[:40]}-a{alpha:.3f}-m{self.mask_id}.npz"

    def _other_mask(self, digest: str, alpha: float) -> np.ndarray | None:
        """The states of an entry whose mask another detector (or an older key) made, if any."""
        for old in sorted(self.directory.glob(f"{digest[:40]}-a{alpha:.3f}*.npz")):
            try:
                with np.load(old, allow_pickle=False) as z:
                    return z["states"]
            except (OSError, ValueError, KeyError):
                continue
        return None

    def lookup(self, digest: str, alpha: float = 1.0, keep: bool = True):
        """``(states float16 (layers + 1, time, width), speech bool (time,))`` or None when not cached."""
        key = (digest, round(alpha, 3))
        if key in self.memory:
            self.hits += 1
            return self.memory[key]
        try:
            with np.load(self.file(digest, alpha), allow_pickle=False) as z:
                item = (z["states"], z["speech"])
        except (OSError, ValueError, KeyError):
            return None
        self.hits += 1
        if keep:  # kept in memory for the next epoch (a trainer's heads); statistics read each clip once
            self.memory[key] = item
        return item

    def items(self, digests: list[str], wave, speech, alpha: float = 1.0, keep: bool = True) -> list:
        """Each clip's ``(states, speech)`` by its :func:`wave_digest`, each read once; clips not cached yet are
        encoded first (``wave(i)`` and ``speech(i)``: the i-th clip's wave and its mask on the log-mel grid,
        asked for only when it must be encoded). ``keep``: as :meth:`lookup`."""
        out = [self.lookup(d, alpha, keep=keep) for d in digests]
        missing = [i for i, item in enumerate(out) if item is None]
        if missing:
            self.fill([wave(i) for i in missing], [speech(i) for i in missing], alpha,
                      digests=[digests[i] for i in missing], keep=keep)
            for i in missing:
                out[i] = self.lookup(digests[i], alpha, keep=keep)
        return out

    def _remask(self, digest: str, alpha: float, speech) -> bool:
        """Reuse the states of an entry whose mask another detector made: recompute the mask on its grid from
        ``speech`` (log-mel grid) and store it under this cache's key. -> whether it could."""
        states = self._other_mask(digest, alpha)
        if states is None:
            return False
        m = torch.as_tensor(np.asarray(speech, dtype=bool))[None]
        mask = speech_on_grid(m, states.shape[1])[0].numpy()
        atomic_write(self.file(digest, alpha), lambda f: np.savez(f, states=states, speech=mask))
        self.memory[(digest, round(alpha, 3))] = (states, mask)
        self.remasked += 1
        return True

    @torch.inference_mode()
    def fill(self, waves: list[np.ndarray], speech: list[np.ndarray], alpha: float = 1.0, batch_size: int = 8,
             progress=None, digests: list[str] | None = None, keep: bool = True) -> list[str]:
        """Encode every wave not yet cached; ``speech``: masks on the log-mel grid; ``digests``: the waves'
        :func:`wave_digest` when the caller already has them. Returns the digests."""
        digests = digests if digests is not None else [wave_digest(w) for w in waves]
        todo = [i for i, d in enumerate(digests) if self.lookup(d, alpha, keep=keep) is None]
        todo = [i for i in todo if not self._remask(digests[i], alpha, speech[i])]
        todo.sort(key=lambda i: len(waves[i]))
        done = 0
        for start in range(0, len(todo), batch_size):
            idx = todo[start:start + batch_size]
            x, lengths = pad_batch([waves[i] for i in idx])
            enc = self.frontend(x, lengths, alpha=None if alpha == 1.0 else alpha)
            width = enc.states.shape[2]
            sp = torch.zeros(len(idx), int(enc.frames.max()), dtype=torch.bool)
            for j, i in enumerate(idx):
                m = torch.as_tensor(np.asarray(speech[i], dtype=bool))[: sp.shape[1]]
                sp[j, : len(m)] = m
            grid = speech_on_grid(sp, width)
            for j, i in enumerate(idx):
                n = int(enc.lengths[j])
                states = enc.states[j, :, :n].to(torch.float16).numpy()
                mask = grid[j, :n].numpy()
                atomic_write(self.file(digests[i], alpha),
                             lambda f, s=states, m=mask: np.savez(f, states=s, speech=m))
                if keep:
                    self.memory[(digests[i], round(alpha, 3))] = (states, mask)
                self.misses += 1
            done += len(idx)
            if progress:
                progress(done, len(todo))
        return digests
