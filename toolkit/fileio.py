"""Opening trace files: transparent gzip, xz and zstd (detected from magic bytes, not names)."""

from __future__ import annotations

import bz2
import lzma
import os
import zlib
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
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise TraceError(f"{path}: cannot read: {e.strerror or e}") from None
    for magic, name in MAGICS.items():
        if head.startswith(magic):
            return name
    return None


def read_bytes(path: str | os.PathLike) -> tuple[bytes, bool]:
    """The whole decompressed content and whether a compressed stream ended early (then it is what decoded)."""
    st = Stream(path)
    out = bytearray()
    for chunk in st:
        out += chunk
    return bytes(out), st.truncated


#: compressed bytes fed to a decompressor at a time, and the most output one call may produce (bounds memory
#: on a decompression bomb: the output is produced piece by piece, never all at once)
_IN = 1 << 20
_OUT = 4 << 20
_ZST_IN = 16 << 10  # zstd has no output bound per call: small inputs (an RLE block expands at most ~32000x)


def _decompressor(kind: str):
    if kind == "gz":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if kind == "xz":
        return lzma.LZMADecompressor()
    if kind == "bz2":
        return bz2.BZ2Decompressor()
    import zstandard

    return zstandard.ZstdDecompressor().decompressobj()


def _decode_errors() -> tuple[type[BaseException], ...]:
    errs: tuple[type[BaseException], ...] = (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError)
    try:
        import zstandard

        errs += (zstandard.ZstdError,)
    except ImportError:  # pragma: no cover
        pass
    return errs


def _decode(kind: str, raw: Iterator[bytes]) -> Iterator[bytes]:
    """Decompressed pieces of the compressed pieces ``raw`` (concatenated streams/members, zero padding after
    one). Raises ``_Cut`` when the data ends inside a stream or cannot be decoded, after yielding what decoded."""
    d = _decompressor(kind)
    started = False  # the current stream has consumed input
    pending = b""
    for block in raw:
        pending += block
        while pending:
            if d.eof:  # the previous stream ended: padding, or the next stream
                if not pending.strip(b"\0"):
                    pending = b""
                    break
                d = _decompressor(kind)
                started = False
            data, pending = pending, b""
            started = True
            try:
                if kind == "gz":
                    out = d.decompress(data, _OUT)
                    while True:
                        if out:
                            yield out
                        if not d.unconsumed_tail:
                            break
                        out = d.decompress(d.unconsumed_tail, _OUT)
                    rest = d.unused_data
                elif kind == "zst":
                    out = d.decompress(data)
                    if out:
                        yield out
                    rest = d.unused_data if d.eof else b""
                else:
                    out = d.decompress(data, _OUT)
                    while True:
                        if out:
                            yield out
                        if d.eof or d.needs_input:
                            break
                        out = d.decompress(b"", _OUT)
                    rest = d.unused_data if d.eof else b""
            except _decode_errors() as e:
                raise _Cut(str(e)) from None
            if rest:
                pending = rest + pending
    if started and not d.eof:
        raise _Cut("compressed data ends inside a stream")


class _Cut(Exception):
    pass


class Stream:
    """Decompressed content in chunks of about ``size`` bytes.

    A compressed file cut short (a half-copied .xz) or damaged yields everything that could be decoded and then
    stops, with ``truncated`` set (and ``reason``): the parser reports the cut where the records stop. A file
    that cannot be read at all (missing, a folder, no permission) raises :class:`TraceError`.
    """

    def __init__(self, path: str | os.PathLike, size: int = CHUNK):
        self.path = path
        self.size = size
        self.truncated = False
        self.reason: str | None = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            kind = compression(self.path)
            with open(self.path, "rb") as f:
                if kind is None:
                    while b := f.read(self.size):
                        yield b
                    return
                raw = iter(lambda: f.read(_ZST_IN if kind == "zst" else _IN), b"")
                buf: list[bytes] = []
                n = 0
                try:
                    for piece in _decode(kind, raw):
                        buf.append(piece)
                        n += len(piece)
                        while n >= self.size:
                            joined = b"".join(buf)
                            yield joined[:self.size]
                            rest = joined[self.size:]
                            buf, n = ([rest] if rest else []), len(rest)
                except _Cut as e:
                    self.truncated = True
                    self.reason = str(e)
                if buf:
                    yield b"".join(buf)
        except OSError as e:
            raise TraceError(f"{self.path}: cannot read: {e.strerror or e}") from None


def head(path: str | os.PathLike, n: int = 4096) -> bytes:
    """The first ``n`` decompressed bytes (for format detection; what decoded if the data is damaged)."""
    out = bytearray()
    try:
        for b in Stream(path, size=max(n, 1)):
            out += b
            if len(out) >= n:
                break
    except TraceError:
        return b""
    return bytes(out[:n])


def display_name(path: str | os.PathLike, base: str | os.PathLike | None = None) -> str:
    p = Path(path)
    if base is not None:
        try:
            return str(p.relative_to(base))
        except ValueError:
            pass
    return str(p)


#: a text line longer than this is not kept whole: it is rejected ("line too long") and skipped as it streams
MAX_LINE = 1 << 20


def line_blocks(chunks, max_line: int = MAX_LINE):
    """Whole lines from byte ``chunks``, in bounded memory (no line is ever held longer than ``max_line``).

    Yields ``("lines", block, n)`` -- ``block`` ends with a newline, ``n`` lines come before it;
    ``("long", n, length, head)`` -- line ``n + 1`` (1-based) is ``length`` bytes long, ``head`` its start; and
    last ``("tail", text, n, length)`` when the data ends without a newline (``text`` at most ``max_line`` bytes).
    """
    carry = b""
    n = 0
    skip: list | None = None  # [line number (1-based), length so far, head] of an over-long line
    for chunk in chunks:
        if skip is not None:
            nl = chunk.find(b"\n")
            if nl < 0:
                skip[1] += len(chunk)
                continue
            skip[1] += nl
            yield ("long", skip[0] - 1, skip[1], skip[2])
            n += 1
            skip = None
            chunk = chunk[nl + 1:]
        data = carry + chunk if carry else chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            if len(data) > max_line:
                skip = [n + 1, len(data), data[:256]]
                carry = b""
            else:
                carry = data
            continue
        carry = data[cut + 1:]
        block = data[:cut + 1]
        yield ("lines", block, n)
        n += block.count(b"\n")
        if len(carry) > max_line:
            skip = [n + 1, len(carry), carry[:256]]
            carry = b""
    if skip is not None:
        yield ("tail", skip[2], n, skip[1])
    elif carry:
        yield ("tail", carry, n, len(carry))
