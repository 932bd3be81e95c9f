"""A header's length checked against the data: a FLAC whose STREAMINFO does not record its length is counted
by decoding it, an MP3 by walking its frame headers, and where data and header disagree the decoder reads the
file through :class:`PatchedFile`, which presents the counted length instead (:func:`repair_header`).

Works on a :class:`serdemo.audio.AudioStream` (its source, format, frames and limits) without importing it.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import struct

import numpy as np
import soundfile as sf

from serdemo.audio_errors import BYTES_PER_SAMPLE, DECODE_BLOCK_BYTES, problem, reason

UNKNOWN_FRAMES = 2**62  # libsndfile reports SF_COUNT_MAX (2**63 - 1) for a length it does not know


class PatchedFile(io.RawIOBase):
    """A file (a path, or bytes) as libsndfile's virtual IO reads it, with some byte ranges replaced:
    ``patches`` maps a byte offset to the bytes that stand there instead (a corrected length in a header).
    The file itself is never written."""

    def __init__(self, source, patches: dict[int, bytes]):
        super().__init__()
        self._file = open(source, "rb") if isinstance(source, (str, os.PathLike)) else io.BytesIO(bytes(source))
        self._file.seek(0, io.SEEK_END)
        self._size = self._file.tell()
        self._file.seek(0)
        self._patches = sorted((int(k), bytes(v)) for k, v in patches.items())

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def readinto(self, buffer) -> int:
        start = self._file.tell()
        data = self._file.read(len(buffer))
        if data and self._patches:
            data = bytearray(data)
            for at, replacement in self._patches:
                lo, hi = max(at, start), min(at + len(replacement), start + len(data))
                if lo < hi:
                    data[lo - start:hi - start] = replacement[lo - at:hi - at]
        n = len(data)
        memoryview(buffer).cast("B")[:n] = data
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


@contextlib.contextmanager
def _raw_bytes(stream):
    """The encoded file's bytes, mapped (a path) or as given (bytes), for reading its headers."""
    if stream.data is not None:
        yield stream.data
        return
    with open(stream.path, "rb") as f:
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            yield m


def _id3v2_size(b) -> int:
    """Bytes of an ID3v2 tag at the start of ``b`` (0 without one)."""
    if len(b) >= 10 and b[:3] == b"ID3":
        size = (b[6] & 0x7F) << 21 | (b[7] & 0x7F) << 14 | (b[8] & 0x7F) << 7 | (b[9] & 0x7F)
        return 10 + size + (10 if b[5] & 0x10 else 0)
    return 0


def repair_header(stream, fmt: str) -> dict[int, bytes]:
    """Check ``stream``'s header length against its data and correct ``stream.frames``: returns the byte
    patches (:class:`PatchedFile`) that make libsndfile read the counted length, or ``{}`` when the header is
    right. FLAC: a STREAMINFO length of 0 (unknown) is counted by decoding, bounded by the limits. MPEG: the
    frame headers are walked (no decoding); a Xing/Info/VBRI count that disagrees with them (0, 2, ...), or an
    estimate that does (a variable-rate file without such a frame), is replaced. Other formats whose length
    libsndfile does not know are refused. Raises :class:`AudioError`."""
    if fmt == "FLAC":
        return _repair_flac(stream)
    if fmt in ("MP3", "MPEG"):  # soundfile names libsndfile's MPEG format "MP3" (layers I-III)
        return _repair_mpeg(stream)
    if stream.frames >= UNKNOWN_FRAMES:
        raise problem("{what} does not say how long it is, and this format cannot be counted.", stream.label,
                      "Convert it to wav or flac.", "Record again.")
    return {}


def _repair_flac(stream) -> dict[int, bytes]:
    with _raw_bytes(stream) as b:
        at = _id3v2_size(b)
        if b[at:at + 4] != b"fLaC" or len(b) < at + 26:
            return {}
        field = at + 4 + 4 + 10  # 'fLaC', STREAMINFO's block header, block and frame sizes
        packed = int.from_bytes(b[field:field + 8], "big")
    if packed & (2**36 - 1) and stream.frames < UNKNOWN_FRAMES:
        return {}  # the recorded length (libsndfile checks the frames against it while decoding)
    total = _count_by_decoding(stream)
    if total == 0:
        raise problem("{what} holds no audio samples: it is empty or truncated.", stream.label,
                      "Upload the complete file.", "Record again.")
    stream.frames = total
    return {field: ((packed & ~(2**36 - 1)) | total).to_bytes(8, "big")}


def _count_by_decoding(stream) -> int:
    """Frames of a file whose header does not record them, counted by decoding it block by block (nothing is
    kept); refused as soon as the count passes :meth:`AudioStream.frame_limit`. libsndfile's own read is used
    without the seek after each block that ``SoundFile.read`` makes, which fails past an unknown end."""
    read = getattr(getattr(sf, "_snd", None), "sf_readf_float", None)
    ffi = getattr(sf, "_ffi", None)
    if read is None or ffi is None:  # pragma: no cover - another soundfile
        raise problem("{what} does not record its length in its header.", stream.label,
                      "Convert it again (its encoder left the length out).", "Record again.")
    limit = stream.frame_limit()
    frames = max(1, DECODE_BLOCK_BYTES // (BYTES_PER_SAMPLE * stream.channels))
    buffer = np.empty((frames, stream.channels), np.float32)
    pointer = ffi.cast("float *", buffer.ctypes.data)
    counted = 0
    try:
        with stream.soundfile() as f:
            while True:
                got = int(read(f._file, pointer, frames))
                if got <= 0:
                    break
                counted += got
                if counted > limit:
                    raise stream.too_long()
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise problem("{what} is damaged and could not be decoded" + reason(exc) + ".", stream.label,
                      "Upload an intact copy.", "Record again.") from None
    return counted


# MPEG audio frame headers: bit rates (kbit/s) by (MPEG-1?, layer), sample rates by version bits
_MPEG_KBPS = {
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MPEG_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def mpeg_frame(b, i: int) -> tuple[int, int, int, int] | None:
    """The MPEG audio frame header at ``b[i:]``: ``(bytes, samples per frame, sample rate, offset of a
    Xing/Info tag)``, or None where no valid header (free-format frames included) starts."""
    if i + 4 > len(b) or b[i] != 0xFF or b[i + 1] & 0xE0 != 0xE0:
        return None
    version, layer = (b[i + 1] >> 3) & 3, 4 - ((b[i + 1] >> 1) & 3)
    index, rate_index, padding = b[i + 2] >> 4, (b[i + 2] >> 2) & 3, (b[i + 2] >> 1) & 1
    if version == 1 or layer == 4 or index in (0, 15) or rate_index == 3:
        return None
    mpeg1, rate = version == 3, _MPEG_RATES[version][rate_index]
    bits = _MPEG_KBPS[(mpeg1, layer)][index] * 1000
    if layer == 1:
        size, spf = (12 * bits // rate + padding) * 4, 384
    elif layer == 2:
        size, spf = 144 * bits // rate + padding, 1152
    else:
        size, spf = (144 if mpeg1 else 72) * bits // rate + padding, 1152 if mpeg1 else 576
    mono = b[i + 3] >> 6 == 3
    side = (17 if mono else 32) if mpeg1 else (9 if mono else 17)
    return size, spf, rate, 4 + side


def _repair_mpeg(stream) -> dict[int, bytes]:
    """Walk an MP3's frame headers (bounded by the limits) and replace a frame count that disagrees with them."""
    limit = stream.frame_limit()
    with _raw_bytes(stream) as b:
        i, end = _id3v2_size(b), len(b)
        frames = samples = 0
        first = info = None  # (offset, header) of the first frame; (offset of the tag, its kind) of an info frame
        while i < end:
            head = mpeg_frame(b, i)
            if head is None or i + head[0] > end:
                if b[i:i + 3] == b"TAG" or b[i:i + 8] == b"APETAGEX":
                    break
                nxt = b.find(b"\xff", i + 1)  # resynchronise on the next possible header
                if nxt < 0:
                    break
                i = nxt
                continue
            if first is None:
                first = (i, head)
                tag = bytes(b[i + head[3]:i + head[3] + 4])
                vbri = bytes(b[i + 36:i + 40]) if head[0] >= 40 + 18 else b""
                if tag in (b"Xing", b"Info") and head[0] >= head[3] + 8:
                    info = (i + head[3], "xing", struct.unpack(">I", b[i + head[3] + 4:i + head[3] + 8])[0])
                elif vbri == b"VBRI":
                    info = (i + 36, "vbri", 0)
            frames += 1
            samples += head[1]
            if samples - (first[1][1] if info else 0) > limit + 4 * head[1]:
                raise stream.too_long()
            i += head[0]
    if first is None:
        return {}
    spf = first[1][1]
    audio_frames = frames - (1 if info else 0)  # the info frame itself holds no audio
    counted = audio_frames * spf
    if stream.frames < UNKNOWN_FRAMES and abs(stream.frames - counted) <= 4 * spf:
        return {}  # the header agrees with the data (up to the encoder's delay and padding)
    offset = first[0]
    if info is not None and info[1] == "xing":
        at, _, flags = info
        if flags & 1:  # the count field is there: only the count changes (the gapless tag stays readable)
            patches = {at + 8: struct.pack(">I", audio_frames)}
        else:  # no count field: frames only (the fields after it are no longer read)
            patches = {at + 4: struct.pack(">II", 1, audio_frames)}
    elif info is not None:  # VBRI: version, delay, quality, bytes, then frames
        patches = {info[0] + 14: struct.pack(">I", audio_frames)}
    else:  # no info frame: the first frame becomes one (its side information zeroed, as decoders expect)
        side = first[1][3]
        if first[1][0] < side + 12:
            return {}
        audio_frames -= 1
        patches = {offset + 4: bytes(side - 4) + b"Xing" + struct.pack(">II", 1, audio_frames)}
    stream.patches = patches
    try:
        with stream.soundfile() as f:
            stream.frames = int(f.frames)
    except (sf.LibsndfileError, RuntimeError):
        stream.frames = audio_frames * spf
    finally:
        stream.patches = {}
    if stream.frames <= 0 or stream.frames >= UNKNOWN_FRAMES:
        stream.frames = max(1, audio_frames * spf)
    return patches
