"""CTranslate2 ``model.bin`` files shipped inside pip wheels: find them, check their hash, read their tensors.

The parser (:func:`read_ct2_tensors`) only reads numbers and names: it never executes anything from the
file, refuses a truncated or garbled file with :class:`~serdemo.encoders.base.EncoderError`, and skips
the bytes of variables it is not asked for (a Whisper model's decoder) without reading them. A model may
ship split over several wheels (``model.bin.part1`` + ``.part2``): the parts are read as one stream.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from serdemo.encoders.base import EncoderError


@dataclass(frozen=True)
class WeightSource:
    """One known upload of a model: the pip packages whose data folders hold its parts, in order, and the
    SHA-256 of the parts joined."""

    name: str
    packages: tuple[tuple[str, str, str], ...]  # (distribution==version, import name, file inside it)
    sha256: str


_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_MAX_RANK = 8
_MAX_NAME = 1024
_MAX_VARIABLES = 100_000


class _Parts(io.RawIOBase):
    """Several files read as one stream (``model.bin.part1`` then ``.part2``), with exact short-read checks."""

    def __init__(self, paths: list[Path]):
        self.paths = list(paths)
        self.sizes = [p.stat().st_size for p in self.paths]
        self.total = sum(self.sizes)
        self.pos = 0
        self._files = [open(p, "rb") for p in self.paths]

    def close(self):
        for f in self._files:
            f.close()
        super().close()

    def exactly(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.total:
            raise EncoderError(f"model.bin is truncated: a field of {n} bytes at offset {self.pos} runs past "
                               f"the end ({self.total} bytes)")
        out = bytearray()
        while len(out) < n:
            i, start = self._locate(self.pos + len(out))
            f = self._files[i]
            f.seek(start)
            out += f.read(min(n - len(out), self.sizes[i] - start))
        self.pos += n
        return bytes(out)

    def skip(self, n: int) -> None:
        if self.pos + n > self.total:
            raise EncoderError(f"model.bin is truncated: {n} bytes of data at offset {self.pos} run past the end")
        self.pos += n

    def _locate(self, offset: int) -> tuple[int, int]:
        for i, size in enumerate(self.sizes):
            if offset < size:
                return i, offset
            offset -= size
        raise EncoderError("model.bin is truncated")

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.exactly(struct.calcsize("<" + fmt)))


def _name(stream: _Parts) -> str:
    (length,) = stream.unpack("H")
    if not 1 <= length <= _MAX_NAME:
        raise EncoderError(f"model.bin is garbled: a name of {length} bytes at offset {stream.pos}")
    raw = stream.exactly(length)
    if raw[-1:] != b"\0":
        raise EncoderError(f"model.bin is garbled: a name at offset {stream.pos - length} is not NUL-terminated")
    try:
        return raw[:-1].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EncoderError(f"model.bin is garbled: a name is not UTF-8 ({exc})") from None


def read_ct2_tensors(paths, wanted=lambda name: name.startswith("encoder/"), spec: str = "WhisperSpec"
                     ) -> dict[str, torch.Tensor]:
    """Parse a CTranslate2 ``model.bin`` (given as its ordered parts) and return the wanted tensors.

    Only the variables ``wanted(name)`` accepts are read into memory; every other variable's bytes
    are skipped. Raises :class:`EncoderError` for a truncated or garbled file.
    """
    stream = _Parts([Path(p) for p in paths])
    try:
        (version,) = stream.unpack("I")
        if not 1 <= version <= 100:
            raise EncoderError(f"model.bin is not a CTranslate2 model (version field {version})")
        found = _name(stream) if version >= 2 else ""
        if found and found != spec:
            raise EncoderError(f"model.bin holds a {found}, not a {spec}")
        if version >= 4:
            stream.unpack("I")  # spec revision
        (count,) = stream.unpack("I")
        if not 0 < count <= _MAX_VARIABLES:
            raise EncoderError(f"model.bin is garbled: {count} variables")
        out: dict[str, torch.Tensor] = {}
        for _ in range(count):
            name = _name(stream)
            (rank,) = stream.unpack("B")
            if rank > _MAX_RANK:
                raise EncoderError(f"model.bin is garbled: variable {name!r} has rank {rank}")
            dims = stream.unpack("I" * rank) if rank else ()
            (dtype_id,) = stream.unpack("B")
            (nbytes,) = stream.unpack("I")
            if dtype_id not in _CT2_DTYPES:
                raise EncoderError(f"model.bin is garbled: variable {name!r} has unknown type {dtype_id}")
            dtype = np.dtype(_CT2_DTYPES[dtype_id])
            if nbytes != int(np.prod(dims, dtype=np.int64)) * dtype.itemsize:
                raise EncoderError(f"model.bin is garbled: variable {name!r} declares {nbytes} bytes for "
                                   f"shape {tuple(dims)} of {dtype.name}")
            if wanted(name):
                array = np.frombuffer(stream.exactly(nbytes), dtype=dtype).reshape(dims)
                out[name] = torch.from_numpy(array.copy())
            else:
                stream.skip(nbytes)
        if stream.pos + 4 <= stream.total:  # aliases: (alias, target) name pairs
            (n_alias,) = stream.unpack("I")
            for _ in range(min(n_alias, _MAX_VARIABLES)):
                alias, target = _name(stream), _name(stream)
                if wanted(alias) and target in out:
                    out[alias] = out[target]
        return out
    finally:
        stream.close()


def sha256_parts(paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def find_weights(sources) -> tuple[WeightSource, list[Path]]:
    """The first of ``sources`` (known uploads of one model) whose packages are installed: ``(source,
    [part paths])``."""
    for source in sources:
        paths = []
        for _, module, inner in source.packages:
            spec = importlib.util.find_spec(module)
            if spec is None or not spec.submodule_search_locations:
                break
            path = Path(list(spec.submodule_search_locations)[0]) / inner
            if not path.is_file():
                break
            paths.append(path)
        else:
            return source, paths
    wanted = " ".join(p[0] for p in sources[0].packages)
    raise EncoderError(f"the pretrained speech encoder ({sources[0].name}) is not installed: pip install {wanted} "
                       "(pinned in requirements.txt)")


def load_tensors(sources, paths=None, expected_sha256: str | None = None, spec: str = "WhisperSpec"
                 ) -> dict[str, torch.Tensor]:
    """The encoder tensors (float16) of the first installed upload among ``sources`` (or of ``paths``), after
    the SHA-256 of the whole file is checked against the known uploads (or ``expected_sha256``)."""
    if paths is None:
        source, paths = find_weights(sources)
        expected_sha256 = source.sha256
    digest = sha256_parts(paths)
    known = {s.sha256 for s in sources} if expected_sha256 is None else {expected_sha256}
    if digest not in known:
        raise EncoderError(f"model.bin has SHA-256 {digest[:12]}…, not the {sources[0].name} upload this project "
                           "was built on; reinstall the pinned packages")
    return read_ct2_tensors(paths, spec=spec)


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the encoder's tensor names and bytes: the same for both uploads (they hold equal weights)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().numpy().tobytes())
    return h.hexdigest()
