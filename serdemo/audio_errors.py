"""What the decoder says when audio cannot be analysed: :class:`AudioError`, worded for a file or for a
microphone recording, and the decoding sizes both the decoder and the header checks use."""

from __future__ import annotations

BYTES_PER_SAMPLE = 4  # float32, as every sample is decoded
DECODE_BLOCK_BYTES = 4 * 2**20  # interleaved float32 decoded at once (16,384 frames of 64 channels)
MICROPHONE = "microphone"  # the source name for audio recorded in the browser (anything else: a file)


class AudioError(ValueError):
    """Audio that cannot be analysed; the message says why and what to do.

    ``str()`` words it for a file (or whatever was given); :meth:`for_source` words the same problem
    for a microphone recording, where the advice differs (check the microphone, record again).
    """

    def __init__(self, message: str, microphone: str | None = None):
        super().__init__(message)
        self.microphone = microphone or message

    def for_source(self, source: str | None) -> str:
        """The message for audio that came from ``source`` (:data:`MICROPHONE` or an upload)."""
        return self.microphone if source == MICROPHONE else str(self)


def problem(text: str, label: str, upload: str = "", record: str = "") -> AudioError:
    """An :class:`AudioError` for ``text``, where ``{what}`` names the audio: about ``label`` with the
    ``upload`` advice, and about "the recording" with the ``record`` advice (default: the same)."""

    def sentence(what: str, advice: str) -> str:
        t = text.replace("{what}", what)
        return f"{t[:1].upper()}{t[1:]} {advice}".strip()

    return AudioError(sentence(label, upload), sentence("the recording", record or upload))


def reason(exc: Exception) -> str:
    """What the decoder said, as ' (reason)', without the file's path (soundfile puts it in str(exc))."""
    text = str(getattr(exc, "error_string", "") or "").strip().rstrip(".")
    return f" ({text})" if text else ""
