"""``Predictor``: one checkpoint on the best device; audio in, :class:`Prediction` out.

The one forward path from audio is :func:`run_model`: waves -> :class:`serdemo.encoding.FrontEnd`
(log-mel, then the shared pretrained encoder for models on it) -> the model's head; the Predictor and so
the app and the timeline go through it (:meth:`Predictor.predict_spans`, the timeline's opt-in shared
context, runs the same front end and model on a whole stretch and pools each span). Training, evaluation
and the retrain comparison call the same model on encoder states read from the cache
(:mod:`training.encoded`), which the same :class:`FrontEnd` filled in float32; the app's encoder may run
in bfloat16 (``benchmarks/precision.py``: the labels agree on 300 of 300 dev clips).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from serdemo.audio import MAX_DURATION_S, AudioError, load_audio
from serdemo.checkpoint import CheckpointError, load_checkpoint
from serdemo.encoding import FRAMES_PER_MODEL_FRAME, Encoded, FrontEnd, speech_on_grid
from serdemo.features import DB_PER_UNIT, FeatureConfig, pad_batch
from serdemo.models import encoder_layers, uses_encoder
from serdemo.models.base import ModelOutput
from serdemo.vad import MIN_TOTAL_SPEECH_S, default_detector
from serdemo.voice import VoiceProfile
from serdemo.vtlp import F_HI_HZ, warp_power
from serdemo import encoders
from serdemo.encoders import EncoderError, cpu_bf16_default


class NoSpeechError(AudioError):
    """The clip holds too little speech to say anything about emotion."""


def attention_figures(attention: np.ndarray, positions: np.ndarray, speech: np.ndarray) -> tuple[float, float]:
    """The two attention figures of one clip (the app's result and evaluation both use this):
    the mass on speech frames and the mass on the last quarter of the speech (first to last speech frame).

    ``attention (n,)``: weights summing to 1; ``positions (n,)``: each attention frame's position in units
    of ``speech``'s frames; ``speech (m,)`` bool. NaN, NaN when there is no speech or no attention.
    """
    speech = np.asarray(speech, dtype=bool)
    if not len(attention) or not speech.any():
        return float("nan"), float("nan")
    attention, positions = np.asarray(attention), np.asarray(positions, dtype=np.float64)
    idx = np.clip(np.floor(positions).astype(int), 0, len(speech) - 1)
    where = np.flatnonzero(speech)
    cut = where[0] + 0.75 * (where[-1] + 1 - where[0])
    return float(attention[speech[idx]].sum()), float(attention[positions >= cut].sum())


@dataclass
class Forward:
    """One batched forward pass: ``out`` (attention on the model's grid), the front end's ``enc``
    (log-mel ``(batch, 80, frames)``, warped when an alpha was given) and ``speech (batch, frames)``."""

    out: ModelOutput
    enc: Encoded
    speech: torch.Tensor


def model_input(model, enc: Encoded, speech: torch.Tensor | None):
    """What ``model`` reads from the front end's output: ``(x, lengths, speech on the model's grid)``."""
    if uses_encoder(model):
        width = enc.states.shape[2]
        return enc.states, enc.lengths, None if speech is None else speech_on_grid(speech, width)
    return enc.logmel, enc.frames, speech


def run_model(model, frontend: FrontEnd, waves: torch.Tensor, lengths: torch.Tensor,
              speech: torch.Tensor | None = None, alpha=None, power: torch.Tensor | None = None,
              voice=None) -> Forward:
    """The one forward path. ``speech (batch, frames)``: bool masks on the log-mel grid (None: all);
    ``power``: the waves' power spectrum when already computed (the STFT then runs once per clip);
    ``voice``: ``(offset, scale)`` of the clips' voice for a model that adapts (:mod:`serdemo.voice`)."""
    enc = frontend(waves, lengths, alpha=alpha, power=power)
    if speech is None:
        speech = torch.ones(enc.logmel.shape[0], enc.logmel.shape[2], dtype=torch.bool, device=waves.device)
    x, x_lengths, x_speech = model_input(model, enc, speech)
    out = model(x, x_lengths, speech=x_speech) if voice is None else model(x, x_lengths, speech=x_speech, voice=voice)
    return Forward(out, enc, speech)


def best_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Prediction:
    """What the model heard in one clip.

    ``probabilities``: head -> {label: probability} (the emotion head's calibrated by the card's
    temperature, fitted on dev speakers); ``attention``: ``(frames',)`` summing to 1, with
    ``attention_times_s`` the centre of each attention frame; ``logmel``: ``(n_mels, frames)`` on
    Whisper's scale, ``(log10(power) + 4) / 4`` (one unit = :data:`db_per_unit` dB), with
    ``frame_times_s``; ``logmel_warped``: the same after VTLP with ``alpha`` (None unless asked);
    ``power``: the clip's power spectrum ``(1, n_bins, frames)`` when asked (``keep_power``), so a
    redraw at another alpha runs only the warp and the mel (:meth:`Predictor.logmel_from_power`).
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
    power: torch.Tensor | None = None
    start_s: float = 0.0  # where this clip starts within the recording it was cut from (predict_spans)
    db_per_unit: float = DB_PER_UNIT
    voice_clips: int = 0  # how many clips of its voice the result was adapted to (0: read on its own)
    ood: float | None = None  # how unlike the training recordings the clip is (> 1: unusual); None: not measured
    statistics: np.ndarray | None = None  # (dim,) the clip's raw statistics, for a model that adapts to voices

    @property
    def speech_segments_s(self) -> list[tuple[float, float]]:
        from serdemo.vad import segments

        rate = 1.0 / (self.frame_times_s[1] - self.frame_times_s[0]) if len(self.frame_times_s) > 1 else 100.0
        return [] if self.speech is None else segments(self.speech, rate)

    def attention_on_speech(self) -> float:
        """Share of attention mass on attention frames whose centre frame is speech."""
        return self._attention_figures()[0]

    def attention_in_last_quarter(self) -> float:
        """Share of attention mass on the last quarter of the speech (first to last speech frame)."""
        return self._attention_figures()[1]

    def _attention_figures(self) -> tuple[float, float]:
        if self.speech is None:
            return float("nan"), float("nan")
        return attention_figures(self.attention, self._attention_frame_index(), self.speech)

    def _attention_frame_index(self) -> np.ndarray:
        rate = 1.0 / (self.frame_times_s[1] - self.frame_times_s[0]) if len(self.frame_times_s) > 1 else 100.0
        return np.clip(np.round((self.attention_times_s - self.start_s) * rate).astype(int), 0,
                       len(self.speech) - 1)

    @property
    def unusual(self) -> bool:
        """The clip looks unlike the recordings the model was trained on (language, acoustics or set-up):
        its probabilities deserve less trust than the card's figures suggest."""
        return self.ood is not None and self.ood > 1.0

    def label(self, head: str = "emotion") -> str:
        probs = self.probabilities[head]
        return max(probs, key=probs.get)

    def confidence(self, head: str = "emotion") -> float:
        return max(self.probabilities[head].values())


class Predictor:
    """Runs one model. ``predict`` and ``predict_batch`` accept anything :func:`load_audio` does."""

    def __init__(self, model, card: dict, device=None, name: str = "", encoder=None):
        self.device = torch.device(device) if device is not None else best_device()
        self.model = model.to(self.device).eval()
        self.card = card
        self.name = name or card.get("name", "")
        self.features = FeatureConfig.from_dict(card["features"])
        self.heads = card["heads"]
        # temperature scaling fitted on dev speakers (the card's calibration): calibrated probabilities
        calibration = card.get("calibration") if isinstance(card.get("calibration"), dict) else {}
        temperature = calibration.get("temperature", 1.0)
        self.temperature = float(temperature) if isinstance(temperature, (int, float)) and 0.05 <= temperature <= 20 else 1.0
        # per-class biases added to the scaled logits (fitted with the temperature on held-out corpora of dev)
        n_emotion = len(card["heads"]["emotion"])
        self.class_bias = _bias(calibration.get("bias"), n_emotion)
        # adapted results (a voice's clips) may have their own temperature and biases (calibration.voice)
        voice = calibration.get("voice") if isinstance(calibration.get("voice"), dict) else {}
        t_voice = voice.get("temperature", self.temperature)
        self.voice_temperature = float(t_voice) if isinstance(t_voice, (int, float)) and 0.05 <= t_voice <= 20 \
            else self.temperature
        self.voice_bias = _bias(voice.get("bias"), n_emotion) if voice else self.class_bias
        if uses_encoder(model):
            if encoder is None:
                try:
                    encoder = encoders.load(encoders.name_of(card))
                except EncoderError as exc:
                    raise CheckpointError(f"checkpoint '{self.name}': {exc}") from None
            want = card.get("encoder", {}).get("digest")
            if want != encoder.digest:
                raise CheckpointError(f"checkpoint '{self.name}' was trained on another pretrained encoder "
                                      f"(digest {str(want)[:12]}…, installed {encoder.digest[:12]}…); retrain it")
            if self.device.type != "cpu":  # the shared CPU copy stays where other predictors use it
                encoder = _device_copy(encoder, self.device)
        self.frontend = FrontEnd(self.features, encoder, encoder_layers(model),
                                 bf16=cpu_bf16_default()).to(self.device)
        self.detector = default_detector()

    @property
    def _has_ood(self) -> bool:
        return bool(getattr(self.model, "has_ood", False))

    @property
    def adapts(self) -> bool:
        """Whether this checkpoint adapts to a voice (a probe trained with voice normalisation)."""
        return bool(getattr(self.model, "adapts", False))

    @property
    def voice_layout(self) -> str:
        """Names the statistics a :class:`VoiceProfile` of this model holds (profiles never cross models)."""
        digest = getattr(self.frontend.encoder, "digest", "") if self.frontend.encoder is not None else ""
        return f"{digest[:16]}|{getattr(self.model, 'layers', '')}|{getattr(self.model, 'frame_norm', '')}"

    def voice_of(self, profile: VoiceProfile | None):
        """``(offset, scale)`` for a profile's clips, or None (no profile, no clips, or a model that does not
        adapt)."""
        if profile is None or not profile.n_clips or not self.adapts:
            return None
        if profile.layout != self.voice_layout:
            raise ValueError("this voice profile was built with another model; start a new one for this model")
        return self.model.voice_offsets(profile.statistics())

    @torch.inference_mode()
    def predict_from_statistics(self, stats: np.ndarray, voice_stats: np.ndarray | None = None) -> list[dict]:
        """Calibrated emotion probabilities ``[{label: p}]`` from clips' raw statistics ``(n, dim)`` (from
        :attr:`Prediction.statistics`), adapted to the voice whose clips' statistics are ``voice_stats``
        ``(k, dim)`` (None: each clip read on its own). Engines that compute statistics on workers and
        adapt per voice elsewhere use this; it is the same arithmetic as :meth:`predict_voice`."""
        if not self.adapts:
            raise ValueError("this checkpoint does not adapt to a voice")
        voice = None if voice_stats is None or not len(voice_stats) else self.model.voice_offsets(voice_stats)
        x = torch.as_tensor(np.asarray(stats, np.float32), device=self.device)
        logits = self.model.logits_from_statistics(x, voice)["emotion"]
        return [self._calibrated("emotion", row, adapted=voice is not None) for row in logits]

    def _calibrated(self, head: str, logits: torch.Tensor, adapted: bool = False) -> dict[str, float]:
        """``softmax(logits / T + bias)`` in float64 for the emotion head (the adapted results' own T and bias
        when the card has them), plain softmax for the others."""
        z = logits.double().cpu()
        if head == "emotion":
            z = z / self.voice_temperature + self.voice_bias if adapted else z / self.temperature + self.class_bias
        p = torch.softmax(z, dim=-1).numpy()
        return {label: float(v) for label, v in zip(self.heads[head], p)}

    def predict_voice(self, audios: list, profile: VoiceProfile | None = None, speech: list | None = None,
                      alpha: float | None = None, require_speech: bool = False, keep_power: bool = False,
                      max_duration_s: float = MAX_DURATION_S, batch_size: int = 16) -> list[Prediction]:
        """Clips of one voice, each adapted to all of them (and to ``profile``'s earlier clips, when given;
        the profile then holds these clips too). Each result's :attr:`Prediction.voice_clips` says how many
        clips its adaptation rests on; a model that does not adapt reads each clip on its own (0).

        The encoder runs once per clip: the clips are analysed, their statistics join the profile, and each
        clip's probabilities are recomputed from its statistics relative to the voice."""
        preds: list[Prediction] = []
        for start in range(0, len(audios), batch_size):
            part = slice(start, start + batch_size)
            preds += self.predict_batch(audios[part], alpha=alpha, require_speech=require_speech,
                                        speech=None if speech is None else speech[part], keep_power=keep_power,
                                        max_duration_s=max_duration_s)
        if not self.adapts or not preds:
            return preds
        profile = profile if profile is not None else VoiceProfile()
        for p in preds:
            profile.add(p.statistics[None], self.voice_layout, key=p.extra.get("digest"))
        self.readapt(preds, profile)
        return preds

    @torch.inference_mode()
    def readapt(self, preds: list[Prediction], profile: VoiceProfile) -> None:
        """Recompute each prediction's emotion probabilities relative to ``profile``'s voice, in place."""
        voice = self.voice_of(profile)
        if voice is None:
            return
        x = torch.as_tensor(np.stack([p.statistics for p in preds]), device=self.device)
        logits = self.model.logits_from_statistics(x, voice)["emotion"]
        for p, row in zip(preds, logits):
            p.probabilities["emotion"] = self._calibrated("emotion", row, adapted=True)
            p.voice_clips = profile.n_clips

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
    def logmel_from_power(self, power: torch.Tensor, alpha: float = 1.0, f_hi_hz: float = F_HI_HZ) -> np.ndarray:
        """Log-mel ``(n_mels, frames)`` from a kept power spectrum ``(1, n_bins, frames)`` after VTLP with ``alpha``."""
        power = power.to(self.device)
        if alpha != 1.0:
            power = warp_power(power, alpha, self.features.sample_rate, f_hi_hz)
        return self.frontend.logmel.mel(power)[0].float().cpu().numpy()

    def speech_masks(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """Each wave's speech mask on the log-mel grid (``len // hop`` frames)."""
        n_frames = [max(1, int(self.features.num_frames(len(w)))) for w in waves]
        return self.detector.frame_masks(waves, n_frames)

    @torch.inference_mode()
    def predict_batch(self, audios: list, alpha: float | None = None, require_speech: bool = False,
                      speech: list[np.ndarray] | None = None, keep_power: bool = False,
                      max_duration_s: float = MAX_DURATION_S, voice: VoiceProfile | None = None) -> list[Prediction]:
        """Analyse several clips in one padded batch; each result is as if analysed alone.

        ``speech``: each clip's speech mask on the log-mel grid, when the caller already has it (the
        detector then does not run again). With ``alpha`` each result also carries the VTLP-warped
        log-mel; with ``keep_power`` its power spectrum. With ``require_speech`` a clip with less than
        :data:`MIN_TOTAL_SPEECH_S` of detected speech raises :class:`NoSpeechError`. With ``voice`` (a
        :class:`VoiceProfile`) each clip is read relative to that voice (the clips are not added to it).
        """
        waves = [self.load(a, max_duration_s) for a in audios]
        adapt = self.voice_of(voice)
        masks = self.speech_masks(waves) if speech is None else [np.asarray(m, dtype=bool) for m in speech]
        if require_speech:
            for m in masks:
                if self.detector.speech_seconds(m) < MIN_TOTAL_SPEECH_S:
                    raise NoSpeechError(
                        "No speech found: this recording holds less than "
                        f"{MIN_TOTAL_SPEECH_S:.1f} s of speech (noise, music or tones?), so the model "
                        "cannot judge an emotion. Try a recording of someone speaking.")
        batch, lengths = pad_batch(waves)
        batch, lengths = batch.to(self.device), lengths.to(self.device)
        n_frames_all = [max(1, int(self.features.num_frames(len(w)))) for w in waves]
        sp = torch.zeros(len(waves), max(n_frames_all), dtype=torch.bool)
        for i, m in enumerate(masks):
            m = torch.as_tensor(m[: n_frames_all[i]])
            sp[i, : len(m)] = m
        power = self.frontend.logmel.power(batch.float(), lengths) if (keep_power or alpha is not None) else None
        fwd = run_model(self.model, self.frontend, batch, lengths, sp.to(self.device), power=power, voice=adapt)
        warped = None
        if alpha is not None:
            frames = self.frontend.logmel.frame_lengths(lengths)
            warped_power = power if alpha == 1.0 else warp_power(power, alpha, self.features.sample_rate, F_HI_HZ)
            warped = self.frontend.logmel.mel(warped_power, frames)
        results = [self._result(fwd, i, waves[i], masks[i], alpha, warped, power if keep_power else None,
                                adapted=adapt is not None) for i in range(len(waves))]
        for r, w in zip(results, waves):
            if r.statistics is not None:
                r.extra["digest"] = hashlib.sha256(np.ascontiguousarray(w, dtype=np.float32).tobytes()).hexdigest()
            if adapt is not None:
                r.voice_clips = voice.n_clips
        return results

    def _result(self, fwd: Forward, i: int, wave, mask, alpha, warped, power, adapted: bool = False) -> Prediction:
        out = fwd.out
        probs = {head: self._calibrated(head, logits[i], adapted) for head, logits in out.logits.items()}
        n_frames = int(fwd.enc.frames[i])
        n_att = int(out.attention_lengths[i])
        att = out.attention[i, :n_att].float().cpu().numpy()
        stride = max(1, round(self.features.frame_rate_hz / out.frame_rate_hz))
        # attention frame j covers log-mel frames [j*stride, (j+1)*stride) clipped to the real frames,
        # drawn at the centre time of the frames it covers
        first = np.arange(n_att) * stride
        last = np.minimum(first + stride, max(n_frames, 1)) - 1
        att_times = (first + last) / 2 / self.features.frame_rate_hz
        logmel = fwd.enc.logmel[i, :, :n_frames].float().cpu().numpy()
        return Prediction(
            probabilities=probs, attention=att, attention_times_s=att_times,
            logmel=logmel, frame_times_s=self.features.frame_times_s(n_frames),
            duration_s=len(wave) / self.features.sample_rate,
            alpha=1.0 if alpha is None else float(alpha),
            logmel_warped=None if warped is None else warped[i, :, :n_frames].float().cpu().numpy(),
            checkpoint=self.name, speech=np.asarray(mask[:n_frames], dtype=bool),
            power=None if power is None else power[i:i + 1, :, :n_frames].cpu(),
            statistics=None if out.statistics is None else out.statistics[i].float().cpu().numpy(),
            ood=float(self.model.ood_score(out.statistics[i:i + 1])[0]) if self._has_ood and out.statistics is not None
            else None)

    def predict(self, audio, alpha: float | None = 1.0, require_speech: bool = True, keep_power: bool = False,
                max_duration_s: float = MAX_DURATION_S) -> Prediction:
        """Analyse one clip; with ``alpha`` also return the VTLP-warped log-mel.

        Raises :class:`NoSpeechError` when the clip holds (almost) no speech.
        """
        return self.predict_batch([audio], alpha=alpha, require_speech=require_speech, keep_power=keep_power,
                                  max_duration_s=max_duration_s)[0]

    @torch.inference_mode()
    def predict_spans(self, wave: np.ndarray, spans_s: list[tuple[float, float]],
                      speech: np.ndarray | None = None) -> list[Prediction]:
        """Segments ``(start_s, end_s)`` of one 16 kHz recording ``wave``, each pooled from one encoding.

        The recording is encoded once per 30-s window (the encoder's context) and every segment's
        head reads its frames of that encoding, so a timeline costs one encoder pass per window
        however many segments it has. ``speech``: the recording's speech mask on the log-mel grid
        (computed when None). Models without the encoder run each segment on its own.
        """
        wave = np.asarray(wave, dtype=np.float32)
        if speech is None:
            speech = self.speech_masks([wave])[0]
        speech = np.asarray(speech, dtype=bool)
        rate = self.features.frame_rate_hz
        sr = self.features.sample_rate
        if not uses_encoder(self.model):
            clips = [wave[int(a * sr):int(b * sr)] for a, b in spans_s]
            masks = [speech[int(round(a * rate)):int(round(a * rate)) + max(1, int(self.features.num_frames(len(c))))]
                     for (a, _), c in zip(spans_s, clips)]
            preds = self.predict_batch(clips, speech=masks)
            for p, (a, _) in zip(preds, spans_s):
                _shift(p, a)
            return preds
        x = torch.as_tensor(wave, device=self.device)[None]
        lengths = torch.tensor([len(wave)], device=self.device)
        enc = self.frontend(x, lengths)  # windows of 30 s inside the encoder
        sp_full = torch.zeros(1, enc.logmel.shape[2], dtype=torch.bool)
        m = torch.as_tensor(speech[: enc.logmel.shape[2]])
        sp_full[0, : len(m)] = m
        grid = speech_on_grid(sp_full, enc.states.shape[2])[0]
        results = []
        step = FRAMES_PER_MODEL_FRAME
        starts, stops = [], []
        for a, b in spans_s:
            f0 = max(0, int(round(a * rate)) // step)
            f1 = min(int(enc.lengths[0]), max(f0 + 1, -(-int(round(b * rate)) // step)))
            starts.append(f0)
            stops.append(f1)
        width = max(s1 - s0 for s0, s1 in zip(starts, stops)) if spans_s else 0
        for chunk in range(0, len(spans_s), 64):
            idx = list(range(chunk, min(chunk + 64, len(spans_s))))
            states = torch.zeros(len(idx), enc.states.shape[1], width, enc.states.shape[3], device=self.device)
            seg_speech = torch.zeros(len(idx), width, dtype=torch.bool, device=self.device)
            seg_len = torch.zeros(len(idx), dtype=torch.long, device=self.device)
            for j, k in enumerate(idx):
                n = stops[k] - starts[k]
                states[j, :, :n] = enc.states[0, :, starts[k]:stops[k]]
                seg_speech[j, :n] = grid[starts[k]:stops[k]].to(self.device)
                seg_len[j] = n
            out = self.model(states, seg_len, speech=seg_speech)
            for j, k in enumerate(idx):
                a, b = spans_s[k]
                f_start = starts[k] * step
                f_stop = min(int(enc.frames[0]), stops[k] * step)
                seg_enc = Encoded(enc.logmel[:, :, f_start:f_stop], torch.tensor([f_stop - f_start]))
                fwd = Forward(_row(out, j), seg_enc, sp_full)
                pred = self._result(fwd, 0, wave[int(a * sr):int(b * sr)], speech[f_start:f_stop], None, None, None)
                _shift(pred, f_start / rate)
                results.append(pred)
        return results


def _bias(value, n: int) -> torch.Tensor:
    """A card's per-class calibration biases (zeros when absent or malformed)."""
    ok = (isinstance(value, list) and len(value) == n
          and all(isinstance(b, (int, float)) and not isinstance(b, bool) and abs(b) <= 50 for b in value))
    return torch.tensor(value if ok else [0.0] * n, dtype=torch.float64)


def _row(out: ModelOutput, j: int) -> ModelOutput:
    return ModelOutput({h: v[j:j + 1] for h, v in out.logits.items()}, out.attention[j:j + 1],
                       out.attention_lengths[j:j + 1], out.frame_rate_hz)


def _shift(pred: Prediction, start_s: float) -> None:
    """Put a segment's times on its recording's clock."""
    pred.attention_times_s = pred.attention_times_s + start_s
    pred.frame_times_s = pred.frame_times_s + start_s
    pred.start_s = start_s


_COPIES: dict[str, object] = {}
_COPY_LOCK = threading.Lock()


def _device_copy(encoder, device: torch.device):
    """One copy of each shared encoder per accelerator device."""
    import copy

    with _COPY_LOCK:
        key = f"{encoder.digest}|{device}"
        if key not in _COPIES:
            enc = copy.deepcopy(encoder).to(device)
            enc.digest = encoder.digest
            _COPIES[key] = enc
        return _COPIES[key]


__all__ = ["Forward", "NoSpeechError", "Prediction", "Predictor", "best_device", "model_input",
           "run_model"]
