"""Reading a landed file once, safely: bytes -> physical lines with their numbers and defects.

Line accounting starts here, from the bytes and independently of any CSV parsing: a physical
line ends at "\\n" (a "\\r" before it is part of the terminator); the last line may lack one.
Every line gets its number, and a line that cannot be text (undecodable in the file's encoding,
a NUL byte, longer than the limit) carries a defect with the byte offset, so it can be rejected
with its reason instead of being skipped.

Safety: only regular files inside the landing root are opened (no symlinks, FIFOs, devices;
the file is opened with O_NOFOLLOW|O_NONBLOCK and re-checked by inode after opening), so
nothing outside landing is ever read and nothing blocks. A gzip stream is recognised by its
magic bytes; a truncated or corrupt one makes the file unreadable (quarantined), never half-read.
Encodings: the config's `encoding` (default UTF-8); a byte-order mark overrides it.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

BLOCK = 8 << 20  # bytes read (and decompressed) at a time
RAW_SAMPLE = 64 << 10  # bytes of an over-long line kept in its reject record
GZIP_MAGIC = b"\x1f\x8b"
BOMS = (  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


class UnreadableFile(Exception):
    """A landed file that cannot be read at all; its message becomes the quarantine reason."""


class UnsafeFile(UnreadableFile):
    """Not a regular file inside the landing root (symlink, FIFO, device, outside the root)."""


class FileChanged(Exception):
    """The file vanished or changed while it was read: it is not registered now (a later run will)."""


def check_safe(path: Path, root: Path) -> os.stat_result:
    """lstat of a file that may be read: a regular file, not a link, inside `root`."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeFile(f"symbolic link (to {os.readlink(path)!r}): only regular files in landing are read")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile(f"not a regular file ({_kind(st.st_mode)}): only regular files in landing are read")
    real_root = os.path.realpath(root)
    real_parent = os.path.realpath(path.parent)
    if real_parent != real_root and not real_parent.startswith(real_root + os.sep):
        raise UnsafeFile(f"its folder resolves to {real_parent!r}, outside the landing root {real_root!r}")
    return st


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "directory")):
        if test(mode):
            return name
    return "special file"


def open_landed(path: Path, root: Path) -> tuple[int, os.stat_result]:
    """A read-only descriptor on a safe landed file (see check_safe); raises FileChanged if it is gone."""
    try:
        before = check_safe(path, root)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise FileChanged(f"{path} vanished before it was read") from exc
    except OSError as exc:  # ELOOP: it became a symlink; EACCES, ...
        raise UnsafeFile(f"cannot be opened safely: {exc.strerror}") from exc
    st = os.fstat(fd)
    if (st.st_ino, st.st_dev) != (before.st_ino, before.st_dev) or not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnsafeFile("replaced while being opened")
    return fd, st


# ---------------------------------------------------------------- bytes


def _raw_blocks(fd: int, hasher) -> Iterator[bytes]:
    while True:
        block = os.read(fd, BLOCK)
        if not block:
            return
        hasher.update(block)
        yield block


def _gunzip(blocks: Iterator[bytes]) -> Iterator[bytes]:
    """Decompressed blocks of a (multi-member) gzip stream, at most BLOCK bytes each (a small
    file that inflates to gigabytes is streamed like any large file, never held at once)."""
    d = zlib.decompressobj(wbits=31)
    out_total = 0
    try:
        for block in blocks:
            data = block
            while data:
                out = d.decompress(data, BLOCK)
                data = d.unconsumed_tail
                if out:
                    out_total += len(out)
                    yield out
                if d.eof:
                    rest = d.unused_data + data
                    if not rest:
                        break
                    if not rest.startswith(GZIP_MAGIC):
                        if rest.strip(b"\x00"):
                            raise UnreadableFile(f"bytes after the end of the gzip stream (at {out_total} decompressed bytes)")
                        break  # zero padding after the stream (tape-style blocking) is harmless
                    d = zlib.decompressobj(wbits=31)
                    data = rest
        tail = d.flush()
        if tail:
            out_total += len(tail)
            yield tail
    except zlib.error as exc:
        raise UnreadableFile(f"corrupt gzip data after {out_total} decompressed bytes: {exc}") from exc
    if not d.eof:
        raise UnreadableFile(f"truncated gzip: the stream ends after {out_total} decompressed bytes without its end marker")


def _transcode(blocks: Iterator[bytes], encoding: str) -> Iterator[bytes]:
    """UTF-8 blocks from a stream in an encoding that is not ASCII-compatible (UTF-16/32)."""
    dec = codecs.getincrementaldecoder(encoding)(errors="strict")
    offset = 0
    try:
        for block in blocks:
            text = dec.decode(block)
            offset += len(block)
            if text:
                yield text.encode("utf-8", "surrogatepass")
        text = dec.decode(b"", final=True)
        if text:
            yield text.encode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise UnreadableFile(f"not valid {encoding}: {exc.reason} at byte offset {offset + exc.start}") from exc


def ascii_compatible(encoding: str) -> bool:
    """True when newline, digits, letters and CSV punctuation are single ASCII bytes (UTF-8, Latin-1, cp1252...)."""
    name = codecs.lookup(encoding).name
    if name in ("utf-7",):
        return False
    probe = "\n\r,;:|\t\"'\\ 0123456789abcxyzABCXYZ+-./()@"
    try:
        return probe.encode(name) == probe.encode("ascii")
    except UnicodeError:
        return False


# ---------------------------------------------------------------- lines


@dataclass
class LineBlock:
    """Consecutive physical lines as UTF-8: line i is data[starts[i] : starts[i] + lengths[i]]
    (terminator excluded), numbered first_line + i. Defect lines have length 0 here and their
    reason and raw text (escaped, possibly cut) in `defects`."""

    data: bytes
    starts: np.ndarray
    lengths: np.ndarray
    first_line: int
    defects: dict[int, tuple[str, str]] = field(default_factory=dict)  # index -> (reason, raw text)

    def __len__(self) -> int:
        return len(self.starts)

    def text(self, i: int) -> str:
        s = int(self.starts[i])
        return self.data[s : s + int(self.lengths[i])].decode("utf-8")


def _newlines(arr: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """Positions of "\\n", 1 MiB at a time into a reused mask (fresh big arrays cost page faults)."""
    out, step = [], len(scratch)
    for s in range(0, len(arr), step):
        part = arr[s : s + step]
        mask = scratch[: len(part)]
        np.equal(part, 10, out=mask)
        found = np.flatnonzero(mask)
        if len(found):
            out.append(found + s)
    return np.concatenate(out) if out else np.empty(0, np.int64)


def _escaped(raw: bytes) -> str:
    """Raw bytes as text for a reject record: undecodable bytes as \\xNN, NUL as \\x00."""
    return raw.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")


class _Splitter:
    """Physical lines of a byte stream in an ASCII-compatible encoding, as UTF-8 LineBlocks."""

    def __init__(self, max_line: int, encoding: str | None, offsets_in: str = ""):
        self.max_line = max_line
        self.encoding = encoding  # None: the stream is UTF-8 (maybe transcoded from UTF-16/32)
        self.offsets_in = offsets_in  # how to read a byte offset when the stream was transcoded
        self.line = 1
        self.offset = 0  # stream offset of the carry's first byte
        self.carry = b""
        self.long: tuple[int, bytes] | None = None  # an over-long line being skipped: (bytes so far, head)
        self.scratch = np.empty(1 << 20, dtype=bool)

    def feed(self, block: bytes) -> Iterator[LineBlock]:
        if self.long is not None:
            nl = block.find(b"\n")
            if nl < 0:
                self.long = (self.long[0] + len(block), self.long[1])
                self.offset += len(block)
                return
            yield self._long_line(self.long[0] + nl, self.long[1])
            self.offset += nl + 1
            block = block[nl + 1 :]
            self.long = None
        data = self.carry + block if self.carry else block
        arr = np.frombuffer(data, np.uint8)
        nls = _newlines(arr, self.scratch)
        if len(nls) == 0:
            self._keep_tail(data, 0)
            return
        starts = np.empty(len(nls), np.int64)
        starts[0] = 0
        starts[1:] = nls[:-1] + 1
        base = self.offset
        self._keep_tail(data, int(nls[-1]) + 1)
        yield self._block(data, arr, starts, nls - starts, base)

    def close(self) -> Iterator[LineBlock]:
        if self.long is not None:
            yield self._long_line(self.long[0], self.long[1])
        elif self.carry:
            data = self.carry
            yield self._block(data, np.frombuffer(data, np.uint8), np.zeros(1, np.int64), np.array([len(data)], np.int64), self.offset)
        self.carry, self.long = b"", None

    def _keep_tail(self, data: bytes, start: int) -> None:
        tail = data[start:]
        self.offset += start
        if len(tail) > self.max_line:
            self.long = (len(tail), tail[:RAW_SAMPLE])
            self.offset += len(tail)
            self.carry = b""
        else:
            self.carry = tail

    def _too_long(self, n: int) -> str:
        return f"line of {n} bytes is longer than the {self.max_line}-byte limit"

    def _long_line(self, length: int, head: bytes) -> LineBlock:
        zero = np.zeros(1, np.int64)
        block = LineBlock(b"", zero, zero.copy(), self.line, {0: (self._too_long(length), _escaped(head) + "...")})
        self.line += 1
        return block

    def _block(self, data: bytes, arr: np.ndarray, starts: np.ndarray, lengths: np.ndarray, base: int) -> LineBlock:
        end = int(starts[-1] + lengths[-1])  # past the last complete line (the carry after it is not ours)
        last = arr[np.maximum(starts + lengths - 1, 0)]  # a line's last byte (any byte when it is empty)
        lengths = lengths - ((last == 13) & (lengths > 0))
        defects: dict[int, tuple[str, str]] = {}
        for i in np.flatnonzero(lengths > self.max_line).tolist():
            s = int(starts[i])
            defects[i] = (self._too_long(int(lengths[i])), _escaped(data[s : s + min(int(lengths[i]), RAW_SAMPLE)]) + "...")
        if data.find(b"\x00", 0, end) >= 0:
            nul = np.flatnonzero(arr[:end] == 0)
            idx = np.searchsorted(starts, nul, side="right") - 1
            for pos, i in zip(nul.tolist(), idx.tolist()):
                if i not in defects and pos < starts[i] + lengths[i]:
                    s, n = int(starts[i]), int(lengths[i])
                    defects[i] = (f"NUL byte at byte offset {base + pos}{self.offsets_in}", _escaped(data[s : s + min(n, RAW_SAMPLE)]))
        if self.encoding is not None:
            data, starts, lengths = self._to_utf8(data, end, starts, lengths, base, defects)
        elif not data.isascii() and not data[:end].isascii():
            self._check_utf8(data, end, starts, lengths, base, defects)
        for i in defects:
            lengths[i] = 0
        block = LineBlock(data, starts, lengths, self.line, defects)
        self.line += len(starts)
        return block

    @staticmethod
    def _check_utf8(data: bytes, end: int, starts, lengths, base: int, defects: dict) -> None:
        try:
            data[:end].decode("utf-8")
            return
        except UnicodeDecodeError:
            pass
        for i in range(len(starts)):  # slow path, only for blocks with bad bytes
            s, n = int(starts[i]), int(lengths[i])
            raw = data[s : s + n]
            if i in defects or raw.isascii():
                continue
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                defects[i] = (f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at byte offset {base + s + exc.start}",
                              _escaped(raw[:RAW_SAMPLE]))

    def _to_utf8(self, data: bytes, end: int, starts, lengths, base: int, defects: dict):
        """Lines of an ASCII-compatible non-UTF-8 encoding, re-encoded as UTF-8 (same line count)."""
        if not defects:
            try:
                out = data[:end].decode(self.encoding).encode("utf-8")
            except UnicodeDecodeError:
                out = None
            if out is not None:
                arr = np.frombuffer(out, np.uint8)
                nls = _newlines(arr, self.scratch)
                new_starts = np.zeros(len(starts), np.int64)
                new_starts[1:] = nls[: len(starts) - 1] + 1
                ends = np.append(nls, len(out))[: len(starts)]
                new_lengths = ends - new_starts
                last = arr[np.maximum(new_starts + new_lengths - 1, 0)]
                return out, new_starts, new_lengths - ((last == 13) & (new_lengths > 0))
        pieces = []
        for i in range(len(starts)):  # slow path: a block with bad bytes or defects
            s, n = int(starts[i]), int(lengths[i])
            raw = data[s : s + n]
            if i in defects:
                pieces.append(b"")
                continue
            try:
                pieces.append(raw.decode(self.encoding).encode("utf-8"))
            except UnicodeDecodeError as exc:
                defects[i] = (f"not valid {self.encoding}: byte 0x{raw[exc.start]:02x} at byte offset {base + s + exc.start}",
                              _escaped(raw[:RAW_SAMPLE]))
                pieces.append(b"")
        new_lengths = np.fromiter((len(p) for p in pieces), np.int64, count=len(pieces))
        new_starts = np.zeros(len(pieces), np.int64)
        if len(pieces) > 1:
            new_starts[1:] = np.cumsum(new_lengths[:-1] + 1)
        return b"\n".join(pieces), new_starts, new_lengths


class LineReader:
    """Reads one landed file once, streaming: `blocks()` yields LineBlocks; afterwards `lines`,
    `sha256`, `defect_lines`, `encoding` tell what was read. Raises UnreadableFile / UnsafeFile
    (quarantine) or FileChanged (try again later) — also at the end, when the file turns out to
    have changed while it was read."""

    def __init__(self, path: Path, root: Path, encoding: str = "utf-8", max_line: int = 1 << 20):
        self.path, self.root, self.encoding, self.max_line = path, root, encoding, max_line
        self.lines = 0
        self.defect_lines = 0
        self.sha256 = ""
        self.gzip = False
        self.size = 0
        self.mtime_ns = 0

    def blocks(self) -> Iterator[LineBlock]:
        fd, st = open_landed(self.path, self.root)
        self.size, self.mtime_ns = st.st_size, st.st_mtime_ns
        hasher = hashlib.sha256()
        try:
            raw = _raw_blocks(fd, hasher)
            first = next(raw, b"")
            self.gzip = first.startswith(GZIP_MAGIC)
            if self.path.name.endswith(".gz") and not self.gzip and first:
                raise UnreadableFile("named .gz but not gzip data (no gzip magic bytes)")
            stream = _chain(first, raw)
            if self.gzip:
                stream = _gunzip(stream)
            head = next(stream, b"")
            used, bom_seen = self.encoding, b""
            for bom, name in BOMS:
                if head.startswith(bom):
                    used, head, bom_seen = name, head[len(bom) :], bom
                    break
            self.encoding = used
            stream = _chain(head, stream)
            if ascii_compatible(used):
                splitter = _Splitter(self.max_line, None if codecs.lookup(used).name == "utf-8" else used,
                                     " of the decompressed data" if self.gzip else "")
                splitter.offset = len(bom_seen)
            else:
                stream = _transcode(stream, used)
                splitter = _Splitter(self.max_line, None, f" of the UTF-8 text decoded from {used}")
            for block in stream:
                for lines in splitter.feed(block):
                    self.defect_lines += len(lines.defects)
                    yield lines
            for lines in splitter.close():
                self.defect_lines += len(lines.defects)
                yield lines
            self.lines = splitter.line - 1
            after = os.fstat(fd)
        except OSError as exc:
            raise UnreadableFile(f"read error: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)
        self.sha256 = hasher.hexdigest()
        try:
            now = os.lstat(self.path)
        except FileNotFoundError as exc:
            raise FileChanged(f"{self.path} vanished while it was read") from exc
        if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns) or (now.st_ino, now.st_size, now.st_mtime_ns) != (
            st.st_ino, st.st_size, st.st_mtime_ns
        ):
            raise FileChanged(f"{self.path} changed while it was read (still being written?)")


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- to Arrow


_VIEW = np.dtype([("length", "<i4"), ("prefix", "<u4"), ("buffer", "<i4"), ("offset", "<i4")])


def string_views(block: LineBlock) -> pa.Array:
    """The block's lines as an Arrow string_view array pointing into its bytes (no copy): per line
    its length, first 4 bytes and offset; lines of at most 12 bytes are stored inline."""
    n = len(block)
    data = block.data
    views = np.zeros(n, _VIEW)
    views["length"] = block.lengths
    long = block.lengths > 12
    if len(data) >= 4 and long.any():
        # every line position as an unaligned little-endian uint32: one gather gives the prefixes
        words = np.ndarray((len(data) - 3,), "<u4", buffer=data, strides=(1,))
        starts = block.starts[long]
        views["prefix"][long] = words[starts]
        views["offset"][long] = starts
    short = np.flatnonzero((block.lengths > 0) & ~long)
    if len(short):
        raw = views.view(np.uint8).reshape(n, 16)
        for i in short.tolist():  # blank-ish lines only: a CDR line is longer than 12 bytes
            s, k = int(block.starts[i]), int(block.lengths[i])
            raw[i, 4 : 4 + k] = np.frombuffer(data, np.uint8, k, s)
    return pa.Array.from_buffers(pa.string_view(), n, [None, pa.py_buffer(views), pa.py_buffer(data if data else b" ")])
