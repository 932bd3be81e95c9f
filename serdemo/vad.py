"""Which frames are speech: silero-vad's shipped 16 kHz weights, with an energy detector as fallback.

The silero-vad wheel ships its model as ``silero_vad_16k.safetensors``; :class:`SileroNet` is a
plain torch module with the same layout (STFT as a convolution, four 1-D convolutions, one LSTM
cell, a sigmoid), so nothing is unpickled and no TorchScript is run. It scores 32 ms chunks
(512 samples plus 64 samples of left context); :func:`frames_from_chunks` maps those scores onto
the 10 ms feature frames and cleans them up (hysteresis, short gaps bridged, short bursts dropped,
a little padding around speech).

Silero hears level, not only speech (its STFT magnitudes enter the network without a logarithm):
corpus clips scaled so that their loudest 32-ms chunk sits at -50 dBFS are found, at -60 dBFS a third
to a half of them are refused, at -70 dBFS all (its highest probability falls from 1.0 to 0.05 on EMO-DB,
RAVDESS, nEMO and EMOVO alike), so quiet recordings were refused as "no speech". It also ties level to
vocal effort: some soft, sad EMOVO speech is found at -30 dBFS and lost at -10, while RAVDESS's shouts
are found only far above full scale. So silero scores each chunk at two levels
(:data:`LEVEL_TARGETS_DB`, a soft and a loud rendering, in one batch) and the higher probability
counts. For each, :func:`level_gains_db` amplifies the chunk so that the loudest chunk within
:data:`LEVEL_SPAN_CHUNKS` (1 s) of it reaches the target: never attenuated (a clip louder than the
target is heard as it is), and by at most target - :data:`LEVEL_FLOOR_DB` (50 and 70 dB), so digital
silence stays silent. A louder target finds more speech in noise (EMO-DB in a noisy room 30 dB down:
2 of 408 clips refused at -20 dBFS, none at -10), but from 0 dBFS up melodies and chirps pass as speech
(``benchmarks/refusals.py``). Within a second of speech, pauses keep their level relative to it. A
chunk's gain depends on nothing further than 1 s away: the timeline scores a long recording in blocks,
each after 1 s of lead (``serdemo.timeline.LEAD_CHUNKS``), so only the gains of a block's last second
can differ from scoring the recording whole (when something louder follows in the next block's first
second). Scoring costs twice the network time of one pass (about 270 times real time on one thread).
The energy fallback is relative to each clip's own peak and floor already.

    vad = SpeechDetector()                     # silero when installed, else energy
    mask = vad.frame_mask(wave, num_frames)    # (frames,) bool on the log-mel frame grid
"""

from __future__ import annotations

import hashlib
import json

import logging
from dataclasses import dataclass
import copy
import importlib.util
import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
CHUNK = 512  # samples per silero decision (32 ms)
CONTEXT = 64  # samples of left context each chunk sees
ONSET = 0.5  # probability that starts speech
OFFSET = 0.35  # probability below which speech ends (hysteresis)
MIN_SPEECH_S = 0.12  # shorter bursts are dropped
MIN_GAP_S = 0.15  # shorter pauses are bridged
PAD_S = 0.08  # kept on each side of a speech run
MIN_TOTAL_SPEECH_S = 0.3  # less than this in a clip: "no speech found"
LEVEL_TARGETS_DB = (-30.0, -10.0)  # dBFS: silero hears each chunk as if the loudest chunk near it were this
LEVEL_FLOOR_DB = -80.0  # loud (soft, loud; the higher probability counts), unless that is quieter than this
LEVEL_SPAN_CHUNKS = 32  # "near": within 32 chunks (1 s) either side


class SileroNet(nn.Module):
    """Silero VAD v5/v6 (16 kHz branch) as a batched torch module.

    ``forward(wave (batch, samples)) -> (batch, chunks)`` speech probabilities, one per 512
    samples; chunk ``j`` covers samples ``[512 j, 512 (j + 1))``. The LSTM runs over chunks in
    order, so padding at the end of a clip never changes the scores of its real chunks.
    """

    def __init__(self):
        super().__init__()
        self.stft_conv = nn.Conv1d(1, 258, kernel_size=256, stride=128, bias=False)
        self.conv1 = nn.Conv1d(129, 128, 3, padding=1)
        self.conv2 = nn.Conv1d(128, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, 3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, 128, 3, padding=1)
        self.lstm = nn.LSTM(128, 128, batch_first=True)
        self.final_conv = nn.Conv1d(128, 1, 1)

    def load_packaged(self) -> "SileroNet":
        """Weights from the installed ``silero-vad`` wheel (safetensors; raises ImportError if absent)."""
        from safetensors.torch import load_file

        # locate the file without importing the package: its __init__ calls torch.set_num_threads(1)
        # for the whole process, which would halve the app's and the trainer's speed on two cores
        spec = importlib.util.find_spec("silero_vad")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("the silero-vad package is not installed")
        path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad_16k.safetensors"
        if not path.is_file():
            raise ImportError(f"the silero-vad package has no {path.name}")
        sd = load_file(str(path))
        renamed = {}
        for k, v in sd.items():
            if k.startswith("lstm_cell."):  # an LSTM cell's weights are a one-layer LSTM's
                k = "lstm." + k[len("lstm_cell."):] + "_l0"
            renamed[k] = v
        self.load_state_dict(renamed)
        return self.eval()

    def forward(self, wave: torch.Tensor, gain_db: torch.Tensor | None = None) -> torch.Tensor:
        """``gain_db (batch, chunks)``: each chunk's input (with its left context) is scaled by it first."""
        b, n = wave.shape
        n_chunks = max(1, -(-n // CHUNK))
        x = F.pad(wave, (CONTEXT, n_chunks * CHUNK - n))
        windows = x.unfold(1, CHUNK + CONTEXT, CHUNK)  # (batch, chunks, 576)
        if gain_db is not None:
            windows = windows * torch.pow(10.0, gain_db / 20.0).unsqueeze(-1).to(windows.dtype)
        w = windows.reshape(b * n_chunks, 1, CHUNK + CONTEXT)
        w = F.pad(w, (0, CONTEXT), mode="reflect")
        spec = self.stft_conv(w)
        half = spec.shape[1] // 2
        mag = (spec[:, :half].square() + spec[:, half:].square()).sqrt()
        h = torch.relu(self.conv1(mag))
        h = torch.relu(self.conv2(h))
        h = torch.relu(self.conv3(h))
        h = torch.relu(self.conv4(h))  # (batch*chunks, 128, 1)
        h = h.reshape(b, n_chunks, 128)
        h, _ = self.lstm(h)
        out = torch.sigmoid(self.final_conv(torch.relu(h).transpose(1, 2)))  # (batch, 1, chunks)
        return out[:, 0]


def chunk_levels_db(wave: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """``(batch, chunks)`` power of each 512-sample chunk in dBFS; chunks past a clip's ``lengths`` -inf."""
    b, n = wave.shape
    n_chunks = max(1, -(-n // CHUNK))
    x = F.pad(wave, (0, n_chunks * CHUNK - n)).reshape(b, n_chunks, CHUNK)
    db = 10 * torch.log10(x.square().mean(-1) + 1e-12)
    if lengths is not None:
        own = (torch.as_tensor(lengths, device=db.device).clamp_min(1) + CHUNK - 1) // CHUNK
        db = db.masked_fill(torch.arange(n_chunks, device=db.device)[None] >= own[:, None], float("-inf"))
    return db


def level_gains_db(wave: torch.Tensor, lengths: torch.Tensor | None = None, target_db: float = LEVEL_TARGETS_DB[-1],
                   floor_db: float = LEVEL_FLOOR_DB, span: int = LEVEL_SPAN_CHUNKS) -> torch.Tensor:
    """The gain (dB, ``(batch, chunks)``) at which silero scores each chunk: enough to bring the loudest
    chunk within ``span`` chunks of it to ``target_db``, at least 0 and at most ``target_db - floor_db``.
    A clip's gains depend only on its own samples (not on its batch companions or padding)."""
    db = chunk_levels_db(wave.float(), lengths)
    near = F.max_pool1d(db[:, None], kernel_size=2 * span + 1, stride=1, padding=span)[:, 0]
    return (target_db - near.clamp_min(floor_db)).clamp_min(0.0)


def energy_chunk_scores(wave: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Fallback detector: a pseudo-probability per 512-sample chunk from its level.

    Level in dB relative to the clip's loudest chunk and above its quietest decile; a chunk 12 dB
    above the floor and within 40 dB of the peak scores above 0.5. ``lengths (batch,)``: each clip's
    samples in a zero-padded batch (None: all real); the peak and the floor come from a clip's own
    chunks only, so its scores do not depend on its batch companions or its padding.
    """
    b, n = wave.shape
    n_chunks = max(1, -(-n // CHUNK))
    x = F.pad(wave, (0, n_chunks * CHUNK - n)).reshape(b, n_chunks, CHUNK)
    db = 10 * torch.log10(x.square().mean(-1) + 1e-10)
    if lengths is None:
        real = torch.ones_like(db, dtype=torch.bool)
    else:
        own = (torch.as_tensor(lengths, device=db.device).clamp_min(1) + CHUNK - 1) // CHUNK  # chunks per clip
        real = torch.arange(n_chunks, device=db.device)[None] < own[:, None]
    peak = db.masked_fill(~real, float("-inf")).amax(1, keepdim=True)
    floor = torch.nanquantile(db.masked_fill(~real, float("nan")), 0.1, dim=1, keepdim=True)
    score = torch.minimum(db - floor - 12.0, db - peak + 40.0)
    return torch.sigmoid(score / 3.0)


def frames_from_chunks(scores: np.ndarray, num_frames: int, hop_length: int = 160,
                       sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Chunk probabilities -> cleaned speech mask ``(num_frames,)`` on the feature frame grid.

    Frame ``i`` (centred at ``i * hop_length`` samples) takes the decision of the chunk holding its
    centre; runs are then cleaned with hysteresis, gap bridging, burst removal and padding.
    """
    scores = np.asarray(scores, dtype=np.float32)
    centres = np.arange(num_frames) * hop_length
    idx = np.minimum(centres // CHUNK, len(scores) - 1)
    p = scores[idx]
    # hysteresis: speech starts above ONSET and continues while above OFFSET
    speech = np.zeros(num_frames, dtype=bool)
    on = False
    for i, v in enumerate(p):
        on = v >= ONSET or (on and v >= OFFSET)
        speech[i] = on
    fps = sample_rate / hop_length
    speech = _fill_short(speech, False, int(round(MIN_GAP_S * fps)))
    speech = _fill_short(speech, True, int(round(MIN_SPEECH_S * fps)))
    pad = int(round(PAD_S * fps))
    if pad and speech.any():
        kernel = np.ones(2 * pad + 1)
        speech = np.convolve(speech.astype(float), kernel, mode="same") > 0
    return speech


def _fill_short(mask: np.ndarray, value: bool, min_len: int) -> np.ndarray:
    """Flip interior runs equal to ``value`` shorter than ``min_len`` (gaps: only between speech)."""
    out = mask.copy()
    n = len(mask)
    i = 0
    while i < n:
        j = i
        while j < n and mask[j] == mask[i]:
            j += 1
        if mask[i] == value and j - i < min_len:
            interior = i > 0 and j < n
            if value or interior:  # bursts anywhere; gaps only between two speech runs
                out[i:j] = not value
        i = j
    return out


def segments(mask: np.ndarray, frame_rate_hz: float = 100.0) -> list[tuple[float, float]]:
    """Speech runs of a frame mask as ``(start_s, end_s)`` pairs."""
    m = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    d = np.diff(m.astype(int))
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    return [(s / frame_rate_hz, e / frame_rate_hz) for s, e in zip(starts, ends)]


@dataclass
class SpeechDetector:
    """Speech/non-speech per feature frame; silero-vad when installed, else the energy detector."""

    hop_length: int = 160
    sample_rate: int = SAMPLE_RATE
    backend: str = "auto"  # "auto" | "silero" | "energy"
    normalise_level: bool = True  # silero hears each chunk at LEVEL_TARGETS_DB (False: as it is, as before)

    def __post_init__(self):
        if self.sample_rate != SAMPLE_RATE:
            raise ValueError("the speech detector works on 16 kHz audio")
        self.net = None
        self._on_device: dict[str, SileroNet] = {}  # one copy per device, never moved once in use
        self._lock = threading.Lock()
        if self.backend in ("auto", "silero"):
            try:
                self.net = SileroNet().load_packaged()
                self.backend = "silero"
            except (ImportError, ModuleNotFoundError, FileNotFoundError) as exc:
                if self.backend == "silero":
                    raise
                log.warning("silero-vad not available (%s); using the energy detector", exc)
                self.backend = "energy"

    @property
    def identity(self) -> str:
        """How this detector makes a mask (backend, level normalisation, every threshold and span), as 12 hex
        digits: caches of masks are keyed by it, so changing any of them recomputes the masks."""
        settings = {"backend": self.backend, "normalise_level": self.normalise_level, "hop": self.hop_length,
                    "chunk": CHUNK, "context": CONTEXT, "onset": ONSET, "offset": OFFSET,
                    "min_speech_s": MIN_SPEECH_S, "min_gap_s": MIN_GAP_S, "pad_s": PAD_S,
                    "level_targets_db": list(LEVEL_TARGETS_DB), "level_floor_db": LEVEL_FLOOR_DB,
                    "level_span_chunks": LEVEL_SPAN_CHUNKS}
        return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]

    @torch.inference_mode()
    def chunk_scores(self, waves: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``(batch, samples)`` on any device, zero-padded to ``lengths (batch,)`` (None: all real) ->
        ``(batch, chunks)`` speech probabilities; a clip's real chunks never depend on its companions."""
        waves = waves.float()
        if self.net is None:
            return energy_chunk_scores(waves, lengths)
        net = self._net_on(waves.device)  # the LSTM runs forward in time: padding comes after
        if not self.normalise_level:
            return net(waves)
        # every level in one batch: the network's clips are independent of their batch companions
        gains = torch.cat([level_gains_db(waves, lengths, t) for t in LEVEL_TARGETS_DB])
        p = net(waves.repeat(len(LEVEL_TARGETS_DB), 1), gains)
        return p.view(len(LEVEL_TARGETS_DB), waves.shape[0], -1).amax(0)

    def _net_on(self, device: torch.device) -> "SileroNet":
        """The network on ``device``. The app's worker threads share one detector: moving a module
        re-initialises its LSTM's flat weights, which races with a forward pass in another thread, so
        each device gets its own copy, made once under a lock."""
        key = str(device)
        net = self._on_device.get(key)
        if net is None:
            with self._lock:
                net = self._on_device.get(key)
                if net is None:
                    net = self.net if device.type == "cpu" else copy.deepcopy(self.net).to(device)
                    self._on_device[key] = net
        return net

    def frame_masks(self, waves: list[np.ndarray], num_frames: list[int]) -> list[np.ndarray]:
        """Speech masks for several clips (batched through the network)."""
        if not waves:
            return []
        lengths = [len(w) for w in waves]
        x = torch.zeros(len(waves), max(lengths))
        for i, w in enumerate(waves):
            x[i, : len(w)] = torch.as_tensor(w)
        scores = self.chunk_scores(x, torch.tensor(lengths)).cpu().numpy()
        out = []
        for i, (n, t) in enumerate(zip(lengths, num_frames)):
            real = max(1, -(-n // CHUNK))
            out.append(frames_from_chunks(scores[i, :real], t, self.hop_length, self.sample_rate))
        return out

    def frame_mask(self, wave: np.ndarray, num_frames: int) -> np.ndarray:
        return self.frame_masks([wave], [num_frames])[0]

    def speech_seconds(self, mask: np.ndarray) -> float:
        return float(np.count_nonzero(mask)) * self.hop_length / self.sample_rate


_DEFAULT: SpeechDetector | None = None


_DEFAULT_LOCK = threading.Lock()


def default_detector() -> SpeechDetector:
    """A process-wide detector (the weights are loaded once)."""
    global _DEFAULT
    if _DEFAULT is None:
        with _DEFAULT_LOCK:
            if _DEFAULT is None:
                _DEFAULT = SpeechDetector()
    return _DEFAULT
