"""Opening trace files: transparent gzip, xz and zstd (detected from magic bytes, not names)."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
from collections.abc import Iterator
from pathlib import Path

MAGICS = {
    b"\x1f\x8b": "gz",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zst",
    b"BZh": "bz2",
}

CHUNK = 64 << 20  # bytes per read when streaming


class TraceError(Exception):
    """A user-facing error about one input: the message names the file and the place."""


def compression(path: str | os.PathLike) -> str | None:
    """'gz', 'xz', 'zst', 'bz2' or None (plain), from the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(6)
    for magic, name in MAGICS.items():
        if head.startswith(magic):
            return name
    return None


def open_binary(path: str | os.PathLike) -> io.BufferedIOBase:
    """A binary stream of the file's decompressed content."""
    kind = compression(path)
    if kind is None:
        return open(path, "rb")
    if kind == "gz":
        return gzip.open(path, "rb")
    if kind == "xz":
        return lzma.open(path, "rb")
    if kind == "bz2":
        return bz2.open(path, "rb")
    import zstandard

    return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)


def read_bytes(path: str | os.PathLike) -> tuple[bytes, bool]:
    """The whole decompressed content and whether a compressed stream ended early (then it is what decoded)."""
    st = Stream(path)
    out = bytearray()
    for chunk in st:
        out += chunk
    return bytes(out), st.truncated


class Stream:
    """Decompressed content in chunks of about ``size`` bytes.

    A compressed file cut short (a half-copied .xz) yields what could be decoded and then stops, with
    ``truncated`` set: the parser reports the cut where the records stop.
    """

    def __init__(self, path: str | os.PathLike, size: int = CHUNK):
        self.path = path
        self.size = size
        self.truncated = False

    def __iter__(self) -> Iterator[bytes]:
        plain = compression(self.path) is None
        with open_binary(self.path) as f:
            while True:
                try:
                    b = f.read(self.size)
                except (EOFError, lzma.LZMAError, gzip.BadGzipFile, OSError):
                    if plain:
                        raise
                    self.truncated = True
                    return
                if not b:
                    return
                yield b


def head(path: str | os.PathLike, n: int = 4096) -> bytes:
    """The first ``n`` decompressed bytes (for format detection)."""
    try:
        with open_binary(path) as f:
            return f.read(n)
    except (EOFError, lzma.LZMAError, OSError, gzip.BadGzipFile):
        return b""


def display_name(path: str | os.PathLike, base: str | os.PathLike | None = None) -> str:
    p = Path(path)
    if base is not None:
        try:
            return str(p.relative_to(base))
        except ValueError:
            pass
    return str(p)
