"""``Predictor``: one checkpoint on the best device; audio in, :class:`Prediction` out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from serdemo.audio import MAX_DURATION_S, load_audio
from serdemo.checkpoint import load_checkpoint
from serdemo.features import FeatureConfig, LogMel, pad_batch
from serdemo.vtlp import F_HI_HZ, warp_power


def best_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Prediction:
    """What the model heard in one clip.

    ``probabilities``: head -> {label: probability}; ``attention``: ``(frames',)`` summing to 1, with
    ``attention_times_s`` the centre of each attention frame; ``logmel``: ``(n_mels, frames)`` with
    ``frame_times_s``; ``logmel_warped``: the same after VTLP with ``alpha`` (None unless asked).
    """

    probabilities: dict[str, dict[str, float]]
    attention: np.ndarray
    attention_times_s: np.ndarray
    logmel: np.ndarray
    frame_times_s: np.ndarray
    duration_s: float
    alpha: float = 1.0
    logmel_warped: np.ndarray | None = None
    checkpoint: str = ""
    extra: dict = field(default_factory=dict)

    def label(self, head: str = "emotion") -> str:
        probs = self.probabilities[head]
        return max(probs, key=probs.get)

    def confidence(self, head: str = "emotion") -> float:
        return max(self.probabilities[head].values())


class Predictor:
    """Runs one model. ``predict`` and ``predict_batch`` accept anything :func:`load_audio` does."""

    def __init__(self, model, card: dict, device=None, name: str = ""):
        self.device = torch.device(device) if device is not None else best_device()
        self.model = model.to(self.device).eval()
        self.card = card
        self.name = name or card.get("name", "")
        self.features = FeatureConfig.from_dict(card["features"])
        self.frontend = LogMel(self.features).to(self.device)
        self.heads = card["heads"]

    @classmethod
    def from_checkpoint(cls, path, device=None) -> "Predictor":
        device = torch.device(device) if device is not None else best_device()
        model, card = load_checkpoint(path, device)
        return cls(model, card, device, name=card.get("name") or Path(path).name)

    def load(self, audio, max_duration_s: float = MAX_DURATION_S) -> np.ndarray:
        """Anything :func:`load_audio` reads; a bare array is taken to be at the model's sample rate."""
        return load_audio(audio, sample_rate=self.features.sample_rate, target_rate=self.features.sample_rate,
                          max_duration_s=max_duration_s)

    @torch.inference_mode()
    def warped_logmel(self, wave: np.ndarray, alpha: float, f_hi_hz: float = F_HI_HZ) -> np.ndarray:
        """Log-mel ``(n_mels, frames)`` of ``wave`` after VTLP with ``alpha`` (no model run)."""
        x = torch.as_tensor(wave, device=self.device)[None]
        power = self.frontend.power(x)
        if alpha != 1.0:
            power = warp_power(power, alpha, self.features.sample_rate, f_hi_hz)
        return self.frontend.mel(power)[0].float().cpu().numpy()

    @torch.inference_mode()
    def predict_batch(self, audios: list, alpha: float | None = None) -> list[Prediction]:
        """Analyse several clips in one padded batch; each result is as if analysed alone.

        With ``alpha`` each result also carries the VTLP-warped log-mel.
        """
        waves = [self.load(a) for a in audios]
        batch, lengths = pad_batch(waves)
        batch, lengths = batch.to(self.device), lengths.to(self.device)
        power = self.frontend.power(batch)
        logmel = self.frontend.mel(power)
        frames = self.frontend.frame_lengths(lengths)
        out = self.model(logmel, frames)
        warped = None
        if alpha is not None:
            warped = self.frontend.mel(warp_power(power, alpha, self.features.sample_rate))
        results = []
        for i, wave in enumerate(waves):
            probs = {}
            for head, logits in out.logits.items():
                p = torch.softmax(logits[i].float(), dim=-1).cpu().numpy()
                probs[head] = {label: float(v) for label, v in zip(self.heads[head], p)}
            n_att = int(out.attention_lengths[i])
            n_frames = int(frames[i])
            # attention frame j covers input frames [j*stride, (j+1)*stride) clipped to the real
            # frames: it is drawn at the centre time of the frames it covers
            stride = max(1, round(self.features.frame_rate_hz / out.frame_rate_hz))
            first = np.arange(n_att) * stride
            last = np.minimum(first + stride, n_frames) - 1
            att_times = (first + last) / 2 / self.features.frame_rate_hz
            results.append(Prediction(
                probabilities=probs,
                attention=out.attention[i, :n_att].float().cpu().numpy(),
                attention_times_s=att_times,
                logmel=logmel[i, :, :n_frames].float().cpu().numpy(),
                frame_times_s=self.features.frame_times_s(n_frames),
                duration_s=len(wave) / self.features.sample_rate,
                alpha=1.0 if alpha is None else float(alpha),
                logmel_warped=None if warped is None else warped[i, :, :n_frames].float().cpu().numpy(),
                checkpoint=self.name,
            ))
        return results

    def predict(self, audio, alpha: float | None = 1.0) -> Prediction:
        """Analyse one clip; with ``alpha`` also return the VTLP-warped log-mel."""
        return self.predict_batch([audio], alpha=alpha)[0]
