"""The sequence record: how far a durable log's `seq` went, in a small file beside the database.

Why a second file: SQLite recovers a damaged or missing write-ahead log by silently dropping what
it cannot read, so a log whose WAL was truncated or lost after a crash opens with fewer events
and would hand out their `seq` again under the same epoch. This record outlives such damage:

- `committed` is written after every commit, without a sync: cheap, and it survives a crashed
  process (the page cache outlives it), so a database that opens behind it has lost events.
- `reserved` is synced before any `seq` past it is committed, so after a power loss (when
  `committed` may be stale too) `seq` can continue past it and never repeat one.

The record is 44 bytes at offset 0 (magic, epoch, committed, reserved, CRC-32), rewritten in
place with one `pwrite` (a single sector: written whole or not at all on the disks we run on).
Only the log's writer thread touches it.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Final

import attrs

from ipt_bus.core.errors import StorageOpenError

SEQ_FILE: Final = "events.seq"
RESERVE_SEQS: Final = 100_000  # how far ahead each synced reservation reaches
_MAGIC: Final = b"IPTBSEQ1"
_LAYOUT: Final = struct.Struct("<8s16sQQ")
_CRC: Final = struct.Struct("<I")


@attrs.define
class SeqRecord:
    path: Path
    epoch: str
    committed: int
    reserved: int
    _fd: int | None = None

    @classmethod
    def read(cls, path: Path) -> SeqRecord | None:
        """The record at `path`; None when there is none.

        Raises:
            StorageOpenError: it exists but cannot be read or is not a sequence record.
        """
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageOpenError(f"cannot read the sequence record {path}: {exc}") from None
        size = _LAYOUT.size + _CRC.size
        if len(data) != size or zlib.crc32(data[: _LAYOUT.size]) != _CRC.unpack(data[-4:])[0]:
            raise StorageOpenError(
                f"the sequence record {path} is damaged; it was left as it was. If the event "
                "log beside it is whole, remove the record (it is made again from the log); "
                "else start with --discard-damaged-log"
            )
        magic, epoch, committed, reserved = _LAYOUT.unpack(data[: _LAYOUT.size])
        if magic != _MAGIC:
            raise StorageOpenError(f"{path} is not an ipt-bus sequence record")
        return cls(path, epoch.rstrip(b"\0").decode("ascii"), committed, reserved)

    def open(self) -> None:
        """Open (creating it) for writing, and write the record durably."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self._fd = fd
        self._write(sync=True)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the new file's name is durable too
        finally:
            os.close(dir_fd)

    def commit(self, last: int) -> None:
        """After a commit: `last` is in the log (`reserve` covered it before the commit)."""
        self.committed = last
        self._write(sync=False)

    def reserve(self, upto: int) -> None:
        """Before a commit that takes `seq` up to `upto`: make sure the reservation covers it."""
        if upto > self.reserved:
            self.reserved = upto + RESERVE_SEQS
            self._write(sync=True)

    def close(self) -> None:
        if self._fd is not None:
            self._write(sync=True)
            os.close(self._fd)
            self._fd = None

    def _write(self, *, sync: bool) -> None:
        assert self._fd is not None
        body = _LAYOUT.pack(_MAGIC, self.epoch.encode("ascii"), self.committed, self.reserved)
        os.pwrite(self._fd, body + _CRC.pack(zlib.crc32(body)), 0)
        if sync:
            os.fsync(self._fd)
