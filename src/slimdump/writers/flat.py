"""makedumpfile's flattened format (-F) and its rearrangement (-R).

A dump written to a pipe cannot seek, so every positioned write becomes a
record on the stream: ``offset`` and ``size`` as big-endian signed 64-bit
integers, then ``size`` bytes that belong at ``offset`` of the real file.
The stream starts with a 4096-byte header ("makedumpfile" + 4 NULs, type 1,
version 1, both big-endian) and ends with the record (-1, -1).  Payloads
keep the dump's own byte order; records need not be in offset order and may
overlap (the later one wins).  A zero-length record would end makedumpfile
-R's rearrangement with an error, so none is ever written (reference
section 3).

:class:`FlatWriter` has the ``write(data, offset)`` method the other
writers write through, so ``KdumpWriter(FlatWriter(sys.stdout.buffer), ...)``
is ``makedumpfile -F``; :func:`reassemble` is ``makedumpfile -R``.
"""

from __future__ import annotations

import contextlib
import os
import struct

from slimdump.elf import PN_XNUM, ElfFormatError, ElfHeader, ProgramHeader
from slimdump.errors import DumpError, OutputError
from slimdump.sources.kdump_headers import (
    DISKDUMP_SIGNATURE,
    KDUMP_SIGNATURE,
    DiskDumpHeader,
    detect_abi,
)
from slimdump.writers.atomic import AtomicOutput, as_output

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import BinaryIO

    from slimdump.writers.atomic import PositionedOutput

FLAT_SIGNATURE = b"makedumpfile\0\0\0\0"
FLAT_HEADER_SIZE = 4096
TYPE_FLAT_HEADER = 1
VERSION_FLAT_HEADER = 1
RECORD_HEADER = struct.Struct(">qq")
END_OFFSET = END_SIZE = -1
MAX_RECORD = 1 << 20        # longer writes are split: bounded buffers for any reader
COPY_CHUNK = 8 << 20
HEAD_BYTES = 1 << 16        # the start of the file kept to check what its headers promise


def flat_header() -> bytes:
    """The 4096-byte start header."""
    head = FLAT_SIGNATURE + struct.pack(">qq", TYPE_FLAT_HEADER, VERSION_FLAT_HEADER)
    return head.ljust(FLAT_HEADER_SIZE, b"\0")


def _write_all(stream: BinaryIO | int, data: bytes | memoryview, name: str) -> None:
    try:
        if isinstance(stream, int):
            view = memoryview(data)
            while view:
                view = view[os.write(stream, view):]
        else:
            stream.write(data)
    except OSError as exc:
        raise OutputError(name, f"write failed: {exc.strerror or exc}", exc.errno) from None


class FlatWriter:
    """A flattened stream on ``stream`` (a binary file object, e.g.
    ``sys.stdout.buffer``, or a file descriptor).  The start header is
    written at once; :meth:`finish` writes the end marker and flushes.

    Ranges no record covers read as zeros (makedumpfile -R writes records
    into a new file, our reader fills them in), so writers may skip zeros."""

    holes_read_zero = True

    def __init__(self, stream: BinaryIO | int, *, name: str = "<stdout>",
                 max_record: int = MAX_RECORD) -> None:
        self.stream = stream
        self.name = name
        self.max_record = max_record
        self.bytes_written = 0
        self.records = 0
        self.finished = False
        self._emit(flat_header())
        self._flush()

    def _emit(self, data: bytes | memoryview) -> None:
        _write_all(self.stream, data, self.name)
        self.bytes_written += len(data)

    def write(self, data: bytes, offset: int) -> None:
        """One positioned write of the real file, as records."""
        if self.finished:
            raise ValueError("flattened stream already finished")
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        view = memoryview(data)
        for at in range(0, len(view), self.max_record):
            part = view[at:at + self.max_record]
            self._emit(RECORD_HEADER.pack(offset + at, len(part)))
            self._emit(part)
            self.records += 1
        self._flush()

    def _flush(self) -> None:
        """Nothing stays in a file object's buffer between writes: a process
        forked meanwhile (the compression pool) must not inherit stream data."""
        if not isinstance(self.stream, int):
            try:
                self.stream.flush()
            except OSError as exc:
                raise OutputError(self.name, f"write failed: {exc.strerror or exc}",
                                  exc.errno) from None

    def finish(self) -> None:
        """The end marker (-1, -1); flushes a file object."""
        if not self.finished:
            self._emit(RECORD_HEADER.pack(END_OFFSET, END_SIZE))
            self.finished = True
        self._flush()


@contextlib.contextmanager
def flat_output(dst: str | None, *, overwrite: bool = False) -> Iterator[FlatWriter]:
    """A flattened stream on standard output (``dst`` None or "-") or into
    ``dst`` (written atomically): finished, and ``dst`` committed, when the
    block ends without an error."""
    if dst in (None, "-"):
        import sys

        flat = FlatWriter(sys.stdout.buffer)
        yield flat
        flat.finish()
        return
    with AtomicOutput(dst, overwrite=overwrite) as out:
        flat = FlatWriter(out.fd, name=dst)
        yield flat
        flat.finish()
        out.commit()


def _read_exact(stream: BinaryIO | int, size: int) -> bytes:
    """Up to ``size`` bytes, fewer only at the end of the stream."""
    chunks, done = [], 0
    while done < size:
        chunk = (os.read(stream, size - done) if isinstance(stream, int)
                 else stream.read(size - done))
        if not chunk:
            break
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


def check_flat_header(head: bytes, name: str) -> None:
    """DumpError unless ``head`` starts a flattened stream makedumpfile -R accepts."""
    if len(head) < len(FLAT_SIGNATURE) + 16:
        raise DumpError(name, f"truncated flattened header ({len(head)} bytes)")
    if not head.startswith(FLAT_SIGNATURE):
        raise DumpError(name, "not a makedumpfile flattened stream (no makedumpfile signature)")
    kind, version = struct.unpack_from(">qq", head, len(FLAT_SIGNATURE))
    if kind != TYPE_FLAT_HEADER:
        raise DumpError(name, f"flattened header has type {kind}, not {TYPE_FLAT_HEADER}")
    if version < 1:
        raise DumpError(name, f"flattened header has version {version}")


def reassemble(stream: BinaryIO | int, out: PositionedOutput | int, *,
               name: str = "<stdin>") -> int:
    """Rearrange a flattened stream into the file it describes (``makedumpfile
    -R``): every record's payload is written at its offset, holes stay
    holes.  Stops at the end marker; a stream that ends before it, or a
    record with a negative offset or non-positive size that is not the
    marker, is an error.  Returns the size of the file written."""
    target = as_output(out)
    head = _read_exact(stream, FLAT_HEADER_SIZE)
    check_flat_header(head, name)
    if len(head) < FLAT_HEADER_SIZE:
        raise DumpError(name, f"truncated flattened header ({len(head)} bytes)")
    position, end = FLAT_HEADER_SIZE, 0
    start = bytearray(HEAD_BYTES)               # the file's first bytes, as rearranged
    while True:
        record = _read_exact(stream, RECORD_HEADER.size)
        if len(record) < RECORD_HEADER.size:
            raise DumpError(name, f"truncated: the flattened stream ends at "
                                  f"{position + len(record)} without its end marker")
        offset, size = RECORD_HEADER.unpack(record)
        position += RECORD_HEADER.size
        if offset == END_OFFSET and size == END_SIZE:
            if end == 0:
                raise DumpError(name, "the flattened stream holds no data: no file to write")
            promised = promised_size(bytes(start[:min(end, HEAD_BYTES)]), name)
            if promised is not None and end < promised:
                raise DumpError(name, f"truncated: the stream describes a file of {end} "
                                      f"bytes, but the dump's headers promise {promised}")
            return end
        if offset < 0 or size <= 0 or offset + size >= 1 << 63:
            raise DumpError(name, f"flattened record at stream offset {position - 16} claims "
                                  f"{size} bytes at offset {offset}")
        done = 0
        while done < size:
            chunk = _read_exact(stream, min(COPY_CHUNK, size - done))
            if not chunk:
                raise DumpError(name, f"truncated: record of {size} bytes at stream offset "
                                      f"{position - 16} ends after {done}")
            target.write(chunk, offset + done)
            at = offset + done
            if at < HEAD_BYTES:
                part = chunk[:HEAD_BYTES - at]
                start[at:at + len(part)] = part
            done += len(chunk)
        position += size
        end = max(end, offset + size)


def promised_size(head: bytes, name: str) -> int | None:
    """The least size the file starting with ``head`` must have by its own
    headers: the end of a kdump-compressed file's bitmaps, the end of an ELF
    file's program headers and segment data; None when ``head`` cannot say
    (another format, headers beyond ``head``)."""
    if head[:8] in (KDUMP_SIGNATURE, DISKDUMP_SIGNATURE) and len(head) >= 464:
        try:
            abi, _machine = detect_abi(name, head[:1024])
            hdr = DiskDumpHeader.unpack(head[:1024], abi)
        except (DumpError, struct.error):
            return None                 # -R rearranges whatever it is given
        bs = hdr.block_size
        if not (1024 <= bs <= 1 << 20 and bs & (bs - 1) == 0):
            return None
        return (1 + max(hdr.sub_hdr_size, 0) + max(hdr.bitmap_blocks, 0)) * bs
    if head[:4] != b"\x7fELF":
        return None
    try:
        elf = ElfHeader.parse(head[:64])
    except ElfFormatError:
        return None
    table_end = elf.e_phoff + elf.e_phnum * elf.phdr_size
    if elf.e_phnum == PN_XNUM or elf.e_phentsize != elf.phdr_size or table_end > len(head):
        return None
    end = table_end
    for i in range(elf.e_phnum):
        ph = ProgramHeader.parse(head, elf.e_phoff + i * elf.phdr_size, elf)
        if ph.p_filesz:
            end = max(end, ph.p_offset + ph.p_filesz)
    return end
