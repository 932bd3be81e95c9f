"""``Predictor``: one checkpoint on the best device; audio in, :class:`Prediction` out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from serdemo.audio import MAX_DURATION_S, AudioError, load_audio
from serdemo.checkpoint import load_checkpoint
from serdemo.features import FeatureConfig, LogMel, crop_to_speech, pad_batch, prosody_rows
from serdemo.models.base import ModelOutput
from serdemo.models.ge2e import cpu_has_native_bf16
from serdemo.prosody import Prosody
from serdemo.vad import MIN_TOTAL_SPEECH_S, default_detector
from serdemo.vtlp import F_HI_HZ


GE2E_SCALE = 16.0  # sqrt(256)


class NoSpeechError(AudioError):
    """The clip holds too little speech to say anything about emotion."""


@dataclass
class Forward:
    """One batched forward pass. ``logmel (batch, n_mels, frames)`` is the whole clip (warped when
    an alpha was given), ``speech (batch, frames)`` its speech mask; the model saw frames
    ``offsets[i]`` onwards (``out.attention`` is on that cropped grid)."""

    out: ModelOutput
    logmel: torch.Tensor
    frames: torch.Tensor
    speech: torch.Tensor
    offsets: torch.Tensor


@dataclass
class ModelInput:
    """What the model receives: ``feats (batch, rows, frames')`` with ``frames (batch,)`` and
    ``speech (batch, frames')`` (None: no mask); ``offsets`` map frame ``j`` to frame
    ``offsets[i] + j`` of the whole clip, whose log-mel is ``logmel`` with ``clip_frames``."""

    feats: torch.Tensor
    frames: torch.Tensor
    speech: torch.Tensor | None
    offsets: torch.Tensor
    logmel: torch.Tensor
    clip_frames: torch.Tensor
    clip_speech: torch.Tensor


def model_inputs(model, frontend: LogMel, waves: torch.Tensor, lengths: torch.Tensor,
                 speech: torch.Tensor | None = None, alpha=None, prosody: Prosody | None = None) -> ModelInput:
    """Waves ``(batch, samples)`` zero-padded with ``lengths`` -> :class:`ModelInput`.

    The front end (log-mel, prosody rows, GE2E rows) runs in float32 whatever the autocast; with
    ``config.speech_only`` the model sees each clip's speech span and its speech mask.
    """
    cfg = frontend.config
    logmel, frames = frontend(waves, lengths, alpha=alpha)
    feats = logmel
    if cfg.prosody:
        if prosody is None:
            raise ValueError("this model needs prosody rows: pass a serdemo.prosody.Prosody")
        with torch.autocast(waves.device.type, enabled=False):
            rows = prosody_rows(prosody(waves.float()))[..., : logmel.shape[2]]
        feats = torch.cat([logmel, rows], dim=1)
    clip_speech = torch.ones_like(feats[:, 0], dtype=torch.bool) if speech is None else speech[:, : feats.shape[2]]
    if speech is None or not cfg.speech_only:
        if cfg.ge2e:
            feats = torch.cat([feats, _ge2e_rows(model, waves, lengths, alpha, feats.shape[2])], dim=1)
        return ModelInput(feats, frames, None, torch.zeros_like(frames), logmel, frames, clip_speech)
    cropped, crop_frames, crop_speech, offsets = crop_to_speech(feats, frames, clip_speech)
    if cfg.ge2e:  # the encoder hears the speech span only: what the model sees, at a fraction of the cost
        span, span_lengths = crop_waves(waves, lengths, offsets * cfg.hop_length, crop_frames * cfg.hop_length)
        rows = _ge2e_rows(model, span, span_lengths, alpha, cropped.shape[2])
        rows = rows * (torch.arange(cropped.shape[2], device=rows.device)[None] < crop_frames[:, None])[:, None]
        cropped = torch.cat([cropped, rows], dim=1)
    return ModelInput(cropped, crop_frames, crop_speech, offsets, logmel, frames, clip_speech)


def ge2e_encoder(model):
    """The frozen GE2E front end a model carries (directly, or inside a wrapper's ``model``), or None."""
    return getattr(model, "ge2e", None) or getattr(getattr(model, "model", None), "ge2e", None)


def _ge2e_rows(model, waves, lengths, alpha, width: int) -> torch.Tensor:
    """``(batch, 256, width)`` GE2E frame embeddings, scaled so a typical element is of order 1."""
    encoder = ge2e_encoder(model)
    if encoder is None:
        raise ValueError("this feature configuration needs a model with a GE2E encoder (hparam ge2e)")
    emb = encoder(waves, lengths, alpha=alpha).transpose(1, 2)[..., :width] * GE2E_SCALE
    if emb.shape[2] < width:
        emb = torch.nn.functional.pad(emb, (0, width - emb.shape[2]))
    return emb


def crop_waves(waves: torch.Tensor, lengths: torch.Tensor, starts: torch.Tensor, spans: torch.Tensor):
    """Samples ``[starts[i], starts[i] + spans[i])`` of each clip (within its length) -> padded batch, lengths."""
    new_len = torch.minimum(spans, lengths - starts).clamp_min(1)
    width = int(new_len.max())
    idx = (starts[:, None] + torch.arange(width, device=waves.device)[None]).clamp_max(waves.shape[1] - 1)
    keep = torch.arange(width, device=waves.device)[None] < new_len[:, None]
    return waves.gather(1, idx) * keep.to(waves.dtype), new_len


def run_model(model, frontend: LogMel, waves: torch.Tensor, lengths: torch.Tensor,
              speech: torch.Tensor | None = None, alpha=None, prosody: Prosody | None = None) -> Forward:
    """The one forward path: Predictor, training, evaluation and the benchmark all call it.

    ``speech (batch, frames)``: bool speech masks on the log-mel frame grid (None: all frames).
    """
    inp = model_inputs(model, frontend, waves, lengths, speech, alpha, prosody)
    out = model(inp.feats, inp.frames, speech=inp.speech)
    return Forward(out, inp.logmel, inp.clip_frames, inp.clip_speech, inp.offsets)


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
    speech: np.ndarray | None = None  # (frames,) bool: the frames the speech detector marked

    @property
    def speech_segments_s(self) -> list[tuple[float, float]]:
        from serdemo.vad import segments

        rate = 1.0 / (self.frame_times_s[1] - self.frame_times_s[0]) if len(self.frame_times_s) > 1 else 100.0
        return [] if self.speech is None else segments(self.speech, rate)

    def attention_on_speech(self) -> float:
        """Share of attention mass on attention frames whose centre frame is speech."""
        if self.speech is None or not len(self.attention):
            return float("nan")
        rate = 1.0 / (self.frame_times_s[1] - self.frame_times_s[0]) if len(self.frame_times_s) > 1 else 100.0
        idx = np.clip(np.round(self.attention_times_s * rate).astype(int), 0, len(self.speech) - 1)
        return float(self.attention[self.speech[idx]].sum())

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
        encoder = ge2e_encoder(self.model)
        if encoder is not None and self.device.type == "cpu" and cpu_has_native_bf16():
            encoder.use_bfloat16()
        self.card = card
        self.name = name or card.get("name", "")
        self.features = FeatureConfig.from_dict(card["features"])
        self.frontend = LogMel(self.features).to(self.device)
        self.heads = card["heads"]
        self.detector = default_detector()
        self.prosody = Prosody(self.features.sample_rate, self.features.hop_length).to(self.device) \
            if self.features.prosody else None

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
        return self.frontend(x, alpha=alpha, f_hi_hz=f_hi_hz)[0][0].float().cpu().numpy()

    @torch.inference_mode()
    def predict_batch(self, audios: list, alpha: float | None = None, require_speech: bool = False) -> list[Prediction]:
        """Analyse several clips in one padded batch; each result is as if analysed alone.

        With ``alpha`` each result also carries the VTLP-warped log-mel. With ``require_speech`` a
        clip with less than :data:`MIN_TOTAL_SPEECH_S` of detected speech raises :class:`NoSpeechError`.
        """
        waves = [self.load(a) for a in audios]
        batch, lengths = pad_batch(waves)
        batch, lengths = batch.to(self.device), lengths.to(self.device)
        n_frames_all = self.frontend.frame_lengths(lengths).tolist()
        masks = self.detector.frame_masks(waves, n_frames_all)
        if require_speech:
            for m in masks:
                if self.detector.speech_seconds(m) < MIN_TOTAL_SPEECH_S:
                    raise NoSpeechError(
                        "No speech found: this recording holds less than "
                        f"{MIN_TOTAL_SPEECH_S:.1f} s of speech (noise, music or tones?), so the model "
                        "cannot judge an emotion. Try a recording of someone speaking.")
        speech = torch.zeros(len(waves), max(n_frames_all), dtype=torch.bool)
        for i, m in enumerate(masks):
            speech[i, : len(m)] = torch.as_tensor(m)
        fwd = run_model(self.model, self.frontend, batch, lengths, speech.to(self.device), prosody=self.prosody)
        out, logmel, frames = fwd.out, fwd.logmel, fwd.frames
        warped = None
        if alpha is not None:
            warped, _ = self.frontend(batch, lengths, alpha=alpha)
        results = []
        for i, wave in enumerate(waves):
            probs = {}
            for head, logits in out.logits.items():
                p = torch.softmax(logits[i].float(), dim=-1).cpu().numpy()
                probs[head] = {label: float(v) for label, v in zip(self.heads[head], p)}
            n_att = int(out.attention_lengths[i])
            n_frames = int(frames[i])
            offset = int(fwd.offsets[i])
            # attention frame j covers input frames [offset + j*stride, offset + (j+1)*stride)
            # clipped to the real frames: it is drawn at the centre time of the frames it covers
            stride = max(1, round(self.features.frame_rate_hz / out.frame_rate_hz))
            first = offset + np.arange(n_att) * stride
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
                speech=masks[i][:n_frames],
            ))
        return results

    def predict(self, audio, alpha: float | None = 1.0, require_speech: bool = True) -> Prediction:
        """Analyse one clip; with ``alpha`` also return the VTLP-warped log-mel.

        Raises :class:`NoSpeechError` when the clip holds (almost) no speech.
        """
        return self.predict_batch([audio], alpha=alpha, require_speech=require_speech)[0]
