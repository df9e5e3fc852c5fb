"""SQLite event log: the durable embedded default (DESIGN §6, docs/storage.md).

Theory of operation:
- One database file in WAL mode. Every write (appends, retention, idempotency keys, dead
  letters) runs on one writer thread with its own connection, in the order it was asked for.
  Reads run on a second thread with its own connection, so a history read never holds up a
  commit, and each read is one snapshot (it sees the oldest retained `seq` of that snapshot, so
  a `gap` is never missed when retention runs meanwhile).
- Group commit without a timer: the router hands `append` everything that waited in its inbox
  while the previous append ran, and one `append` is one transaction.
- `seq` is assigned here (the router is the only appender) and committed together with the
  events and `meta.last_seq`, so a `seq` is never reused, even after retention empties the table.
- Opening never replaces a file: an unreadable, read-only, foreign or corrupt file stops start-up
  with `StorageOpenError` naming it.
- Only one secondary index (`correlation_id`, so tracing a request never scans the log):
  measured here, each index multiplies the cost of a row (DESIGN §8).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs
import trio

from ipt_bus.core.codec import encode_stored
from ipt_bus.core.errors import StorageError, StorageFull, StorageOpenError
from ipt_bus.core.topics import matches_any
from ipt_bus.storage.base import (
    DeadLetter,
    Key,
    KeyWindow,
    LogStats,
    Page,
    Query,
    Record,
    event_id,
    published_range,
)
from ipt_bus.storage.seqfile import RESERVE_SEQS, SEQ_FILE, SeqRecord
from ipt_bus.storage.worker import Worker

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ipt_bus.core.model import Event, Published

Durability = Literal["safe", "fast"]
FILE_NAME: Final = "events.sqlite3"
SCHEMA_VERSION: Final = "1"
TRIM_CHUNK: Final = 2_000  # events deleted per retention transaction: keeps each stall short
READ_CHUNK: Final = 1_000  # rows fetched per query while filtering topics in Python
# More than the un-synced tail of a `fast` log can hold (the WAL is synced at each checkpoint,
# every ~4 MB): after an unclean stop in `fast` mode `seq` jumps this far.
FAST_CRASH_SEQ_SKIP: Final = 1_000_000

log = logging.getLogger("ipt_bus.storage")

_SCHEMA: Final = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    type TEXT NOT NULL,
    ts REAL NOT NULL,
    stored_at REAL NOT NULL,
    correlation_id TEXT,
    size INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX events_correlation ON events (correlation_id) WHERE correlation_id IS NOT NULL;
CREATE TABLE idempotency (
    key TEXT PRIMARY KEY, first_seq INTEGER NOT NULL, count INTEGER NOT NULL, at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX idempotency_at ON idempotency (at);
CREATE TABLE dead_letters (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, source TEXT NOT NULL, code TEXT NOT NULL,
    message TEXT NOT NULL, field TEXT, raw TEXT NOT NULL, attempts INTEGER NOT NULL
);
"""


@attrs.frozen
class Retention:
    """What the log keeps; None: no limit of that kind."""

    events: int | None = None
    age_seconds: float | None = None
    bytes: int | None = None


@attrs.frozen
class _Opened:
    epoch: str
    first_seq: int
    last_seq: int
    count: int
    bytes: int
    keys: list[tuple[str, int, int, float]]
    dead: list[DeadLetter]
    record: SeqRecord


class LogDamaged(StorageOpenError):
    """The log existed and cannot be read whole; nothing was changed."""


def _connect(path: Path, *, create: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(
        _uri(path, "rwc" if create else "rw"),
        uri=True,
        isolation_level=None,
        check_same_thread=False,
    )
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def _uri(path: Path, mode: str) -> str:
    """An SQLite URI for `path`: percent-encoded, so `#`, `%` and `?` in a name mean themselves."""
    return f"{path.absolute().as_uri()}?mode={mode}"


def glob_of(pattern: str) -> str | None:
    """A GLOB that every topic matching `pattern` matches (a superset; None: everything)."""
    segments = pattern.split(".")
    if segments == ["**"]:
        return None
    if segments[-1] == "**":
        return ".".join(segments[:-1]) + "*"
    return pattern  # `*` segments become GLOB `*`, which also crosses dots: checked after


@attrs.define
class SqliteLog:
    path: Path
    durability: Durability
    retention: Retention
    dedupe_window_seconds: float
    _writer: Worker
    _reader: Worker
    _write_conn: sqlite3.Connection
    _read_conn: sqlite3.Connection
    _epoch: str
    _first: int
    _last: int
    _count: int
    _bytes: int
    _keys: KeyWindow
    dead_on_open: list[DeadLetter]
    _record: SeqRecord
    clock: Callable[[], float] = time.time  # stored_at, retention by age, idempotency window
    _problem: str | None = None
    _last_key_prune: float = 0.0

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        data_dir: Path,
        *,
        durability: Durability = "safe",
        retention: Retention = Retention(),
        dedupe_window_seconds: float = 120.0,
        dedupe_max_keys: int = 100_000,
        dedupe_max_bytes: int = 32 * 1024 * 1024,
        discard_damaged: bool = False,
    ) -> SqliteLog:
        """Open (or create) the log in `data_dir`; blocking, meant for start-up.

        A log that existed and cannot be read whole (its sequence record says events were
        committed that the database no longer holds, or the database is gone) is refused; with
        `discard_damaged` its files are moved into ``damaged-<time>/`` and a new log (a new
        epoch) starts instead.

        Raises:
            StorageOpenError: naming the directory or file and why; nothing was changed.
        """
        path = data_dir / FILE_NAME
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageOpenError(f"cannot create the data directory {data_dir}: {exc}") from None
        writer = Worker("ipt-bus-sqlite-writer")
        try:
            try:
                conn, opened = writer.run_blocking(partial(_open_writer, path, durability))
            except LogDamaged as exc:
                if not discard_damaged:
                    raise
                aside = _move_aside(data_dir)
                log.warning("%s; its files were moved to %s and a new log starts", exc, aside)
                conn, opened = writer.run_blocking(partial(_open_writer, path, durability))
        except BaseException:
            writer.stop()
            raise
        reader = Worker("ipt-bus-sqlite-reader")
        read_conn = reader.run_blocking(partial(_connect, path, create=False))
        keys = KeyWindow(dedupe_window_seconds, dedupe_max_keys, dedupe_max_bytes)
        for key, first, count, at in opened.keys:
            keys.put(key, first, count, at)
        return cls(
            path=path,
            durability=durability,
            retention=retention,
            dedupe_window_seconds=dedupe_window_seconds,
            writer=writer,
            reader=reader,
            write_conn=conn,
            read_conn=read_conn,
            epoch=opened.epoch,
            first=opened.first_seq,
            last=opened.last_seq,
            count=opened.count,
            bytes=opened.bytes,
            keys=keys,
            dead_on_open=opened.dead,
            record=opened.record,
        )

    # --- the EventLog interface ------------------------------------------------------------

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def first_seq(self) -> int:
        return self._first

    @property
    def last_seq(self) -> int:
        return self._last

    @property
    def append_waits(self) -> bool:
        return True  # the commit runs on the writer thread

    async def append(self, events: Sequence[Event], keys: Sequence[Key] = ()) -> list[Record]:
        now_dt = datetime.now(UTC)
        now = self.clock()
        epoch = self._epoch
        seq = self._last
        records: list[Record] = []
        rows: list[tuple[Any, ...]] = []
        added_bytes = 0
        for event in events:
            seq += 1
            ident = event_id(epoch, seq)
            moment = event.timestamp or now_dt
            raw = encode_stored(event, moment, ident, seq)
            records.append(Record(seq, ident, event.topic, raw))
            ts = moment.timestamp()
            cid = event.correlation_id
            rows.append((seq, event.topic, event.type, ts, now, cid, len(raw), raw))
            added_bytes += len(raw)
        key_rows = [(k.key, records[k.start].seq, k.count, now) for k in keys]
        try:
            await self._writer.call(partial(self._write, rows, seq, key_rows))
        except sqlite3.Error as exc:
            raise self._failed(exc) from None
        self._problem = None
        if self._count == 0:
            self._first = self._last + 1
        self._last = seq
        self._count += len(rows)
        self._bytes += added_bytes
        for k in keys:
            self._keys.put(k.key, records[k.start].seq, k.count, now)
        return records

    def _write(
        self, rows: list[tuple[Any, ...]], last: int, key_rows: list[tuple[Any, ...]]
    ) -> None:
        self._record.reserve(last)  # synced before any seq past the old reservation commits
        with _transaction(self._write_conn) as c:
            c.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            if key_rows:
                c.executemany("INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?, ?)", key_rows)
            c.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (str(last),))
        self._record.commit(last)

    def _failed(self, exc: sqlite3.Error) -> StorageError:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            self._problem = f"storage full: {self.path}: {exc}"
            return StorageFull(f"{self.path}: {exc}; nothing was stored")
        self._problem = f"storage failing: {self.path}: {exc}"
        return StorageError(f"{self.path}: {exc}; nothing was stored")

    async def recall(self, key: str) -> list[Published] | None:
        found = self._keys.get(key, self.clock())
        return None if found is None else published_range(self._epoch, *found)

    async def read_after(
        self, since: int, query: Query, limit: int, *, until: int | None = None
    ) -> Page:
        last = self._last if until is None else min(until, self._last)
        read = partial(self._read, since, query, limit, False, until)
        records, first = await self._reader.call(read)
        if len(records) == limit:  # more may follow (limit 0: nothing was examined)
            return Page(records, records[-1].seq if records else since, first)
        return Page(records, max(since, last, records[-1].seq if records else 0), first)

    async def read_latest(self, query: Query, limit: int) -> list[Record]:
        read = partial(self._read, self._last + 1, query, limit, True, None)
        records, _ = await self._reader.call(read)
        records.reverse()
        return records

    def _read(
        self, start: int, query: Query, limit: int, newest: bool, until: int | None
    ) -> tuple[list[Record], int]:
        """Matching records after `start` up to `until` (or before `start`, newest first) and the
        oldest retained `seq`, from one snapshot."""
        where, params, exact = _where(query)
        if until is not None:
            where += " AND seq <= ?"
            params.append(until)
        op, order = ("<", "DESC") if newest else (">", "ASC")
        sql = (
            f"SELECT seq, topic, data FROM events WHERE seq {op} ?{where} "
            f"ORDER BY seq {order} LIMIT ?"
        )
        epoch = self._epoch
        patterns = query.patterns
        out: list[Record] = []
        c = self._read_conn
        c.execute("BEGIN")
        try:
            oldest = c.execute("SELECT min(seq) FROM events").fetchone()[0]
            last = int(c.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()[0])
            cursor = start
            while len(out) < limit:
                chunk = limit - len(out) if exact else max(READ_CHUNK, limit)
                rows = c.execute(sql, (cursor, *params, chunk)).fetchall()
                for seq, topic, data in rows:
                    if exact or matches_any(patterns, topic):
                        # stored as bytes (logs written before kept text)
                        raw = data if isinstance(data, bytes) else data.encode()
                        out.append(Record(seq, event_id(epoch, seq), topic, raw))
                        if len(out) == limit:
                            break
                if len(rows) < chunk:
                    break
                cursor = rows[-1][0]
        finally:
            c.execute("COMMIT")
        return out, last + 1 if oldest is None else oldest

    async def enforce_retention(self) -> int:
        removed = 0
        r = self.retention
        while self._count:
            now = self.clock()
            over = self._count - r.events if r.events is not None else 0
            excess = self._bytes - r.bytes if r.bytes is not None else 0
            cutoff = now - r.age_seconds if r.age_seconds is not None else None
            if over <= 0 and excess <= 0 and cutoff is None:
                break
            try:
                n, freed, upto = await self._writer.call(
                    partial(self._trim, self._first, over, excess, cutoff)
                )
            except sqlite3.Error as exc:
                raise self._failed(exc) from None
            if not n:
                break
            self._first = upto + 1
            self._count -= n
            self._bytes -= freed
            removed += n
            await trio.lowlevel.checkpoint()  # let waiting appends in between chunks
        now = self.clock()
        if now - self._last_key_prune > 10:
            self._last_key_prune = now
            self._keys.prune(now)
            with contextlib.suppress(sqlite3.Error):
                await self._writer.call(partial(self._prune_keys, now - self.dedupe_window_seconds))
        return removed

    def _trim(
        self, first: int, over: int, excess: int, cutoff: float | None
    ) -> tuple[int, int, int]:
        """Delete the oldest events the limits no longer keep, at most `TRIM_CHUNK` of them:
        `over` events too many, `excess` bytes too many, and those stored before `cutoff`."""
        c = self._write_conn
        rows = c.execute(
            "SELECT seq, size, stored_at FROM events WHERE seq >= ? ORDER BY seq LIMIT ?",
            (first, TRIM_CHUNK),
        ).fetchall()
        upto, freed, n = 0, 0, 0
        for seq, size, stored_at in rows:
            if n < over or freed < excess or (cutoff is not None and stored_at < cutoff):
                upto, freed, n = seq, freed + size, n + 1
            else:
                break
        if n:
            with _transaction(c):
                c.execute("DELETE FROM events WHERE seq <= ?", (upto,))
        return n, freed, upto

    def _prune_keys(self, cutoff: float) -> None:
        with _transaction(self._write_conn) as c:
            c.execute("DELETE FROM idempotency WHERE at < ?", (cutoff,))

    def stats(self) -> LogStats:
        return LogStats(
            size=self._count,
            capacity=self.retention.events,
            first_seq=self._first,
            last_seq=self._last,
            bytes=self._bytes,
            keys=len(self._keys),
            keys_evicted=self._keys.evicted,
        )

    def problem(self) -> str | None:
        return self._problem

    async def set_max_bytes(self, max_bytes: int | None) -> None:
        """Cap the database file's size (`PRAGMA max_page_count`): past it, appends fail with
        `StorageFull` as on a full disk. None lifts the cap."""
        await self._writer.call(partial(_set_max_bytes, self._write_conn, max_bytes))

    # --- dead letters ----------------------------------------------------------------------

    async def sync_dead(self, put: Sequence[DeadLetter], drop: Sequence[int]) -> None:
        rows = [attrs.astuple(letter) for letter in put]
        ids = [(i,) for i in drop]

        def write() -> None:
            with _transaction(self._write_conn) as c:
                c.executemany("DELETE FROM dead_letters WHERE id = ?", ids)
                c.executemany(
                    "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows
                )

        try:
            await self._writer.call(write)
        except sqlite3.Error as exc:
            raise self._failed(exc) from None

    # --- closing ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Checkpoint and close both connections; waits for queued writes first."""

        def close_writer() -> None:
            with contextlib.suppress(sqlite3.Error):
                self._write_conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                with _transaction(self._write_conn) as c:
                    c.execute("UPDATE meta SET value = '1' WHERE key = 'clean_shutdown'")
            self._write_conn.close()
            with contextlib.suppress(OSError):
                self._record.close()

        await self._reader.call(self._read_conn.close)
        await self._writer.call(close_writer)
        self._reader.stop()
        self._writer.stop()


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Any:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _where(query: Query) -> tuple[str, list[Any], bool]:
    """SQL conditions for `query`, their parameters, and whether they are exact (no topic needs
    checking in Python afterwards)."""
    clauses: list[str] = []
    params: list[Any] = []
    exact = True
    if query.patterns:
        globs = [glob_of(p) for p in query.patterns]
        if None not in globs:
            clauses.append("(" + " OR ".join("topic GLOB ?" for _ in globs) + ")")
            params.extend(globs)
            exact = all("*" not in p for p in query.patterns)
    if query.types:
        clauses.append(f"type IN ({', '.join('?' for _ in query.types)})")
        params.extend(query.types)
    if query.correlation_id is not None:
        clauses.append("correlation_id = ?")
        params.append(query.correlation_id)
    if query.time_from is not None:
        clauses.append("ts >= ?")
        params.append(query.time_from)
    if query.time_to is not None:
        clauses.append("ts < ?")
        params.append(query.time_to)
    return "".join(f" AND {c}" for c in clauses), params, exact


_DAMAGED_HINT: Final = (
    "the files were left as they were. Restore them, or start with --discard-damaged-log to "
    "move them into a damaged-<time> folder and begin a new log (a new epoch: clients are told "
    "their history is gone)"
)


def _check_whole(path: Path, record: SeqRecord, conn: sqlite3.Connection, tables: set[str]) -> None:
    """Refuse a log that opens shorter than its sequence record says it was."""
    if "meta" not in tables:
        raise LogDamaged(
            f"the event log {path} has no tables, but {record.path} says it held events up to "
            f"seq {record.committed} (epoch {record.epoch}); {_DAMAGED_HINT}"
        )
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    epoch, last = meta.get("epoch"), int(meta.get("last_seq", 0))
    if epoch != record.epoch:
        raise LogDamaged(
            f"the event log {path} has epoch {epoch}, but {record.path} belongs to epoch "
            f"{record.epoch}: they are not the same log; {_DAMAGED_HINT}"
        )
    if last < record.committed:
        raise LogDamaged(
            f"the event log {path} holds events up to seq {last}, but seq up to "
            f"{record.committed} were committed: its write-ahead log {path}-wal was damaged or "
            f"lost; {_DAMAGED_HINT}"
        )


def _move_aside(data_dir: Path) -> Path:
    """Move a damaged log's files into a new ``damaged-<UTC time>`` folder of `data_dir`."""
    aside = data_dir / f"damaged-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S.%fZ')}"
    aside.mkdir()
    for name in (FILE_NAME, f"{FILE_NAME}-wal", f"{FILE_NAME}-shm", SEQ_FILE):
        with contextlib.suppress(FileNotFoundError):
            (data_dir / name).rename(aside / name)
    return aside


def _set_max_bytes(conn: sqlite3.Connection, max_bytes: int | None) -> None:
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = 2**31 - 2 if max_bytes is None else max(1, max_bytes // page_size)
    conn.execute(f"PRAGMA max_page_count = {int(pages)}")


def _open_writer(path: Path, durability: Durability) -> tuple[sqlite3.Connection, _Opened]:
    """Open or create the database on the writer thread; refuse anything but our own schema,
    and a log its sequence record says was longer (or was there at all) than what opens."""
    record = SeqRecord.read(path.parent / SEQ_FILE)
    existed = path.exists() and path.stat().st_size > 0  # an empty file is a new database
    if record is not None and not existed:
        raise LogDamaged(
            f"the event log {path} is {'empty' if path.exists() else 'missing'}, but "
            f"{record.path} says it held events up to seq {record.committed} "
            f"(epoch {record.epoch}); {_DAMAGED_HINT}"
        )
    if existed:
        _inspect(path, record)
    try:
        conn = _connect(path, create=not existed)
    except sqlite3.Error as exc:
        raise StorageOpenError(f"cannot open the event log {path}: {exc}") from None
    try:
        opened = _prepare(conn, path, existed, durability, record)
    except sqlite3.Error as exc:
        conn.close()
        what = "read or write" if existed else "create"
        raise StorageOpenError(
            f"cannot {what} the event log {path}: {exc}. The file was left as it was; "
            "move it away (or point --data-dir elsewhere) to start a new log"
        ) from None
    except StorageOpenError:
        conn.close()
        raise
    return conn, opened


def _inspect(path: Path, record: SeqRecord | None) -> None:
    """Refuse, before anything is written, a file that is not our log, a corrupt one, and one
    shorter than its sequence record. Read-only: closing a read-write connection would
    checkpoint the WAL (and delete it), changing the very files the refusal leaves alone."""
    try:
        conn = sqlite3.connect(_uri(path, "ro"), uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise StorageOpenError(f"cannot open the event log {path}: {exc}") from None
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "meta" not in tables:
            raise StorageOpenError(
                f"{path} is an SQLite database but not an ipt-bus event log; it was left as it was"
            )
        if tables:
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise StorageOpenError(
                    f"the event log {path} is corrupt ({check}); it was left as it was"
                )
        if record is not None:
            _check_whole(path, record, conn, tables)
    except sqlite3.Error as exc:
        raise StorageOpenError(
            f"cannot read the event log {path}: {exc}. The file was left as it was; "
            "move it away (or point --data-dir elsewhere) to start a new log"
        ) from None
    finally:
        conn.close()


def _prepare(
    conn: sqlite3.Connection,
    path: Path,
    existed: bool,
    durability: Durability,
    record: SeqRecord | None,
) -> _Opened:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
        raise StorageOpenError(f"cannot switch {path} to WAL mode (read-only?)")
    conn.execute(f"PRAGMA synchronous = {'FULL' if durability == 'safe' else 'NORMAL'}")
    conn.execute("PRAGMA journal_size_limit = 67108864")  # the WAL shrinks back after checkpoints
    if not tables:
        with _transaction(conn) as c:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    c.execute(statement)
            c.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [
                    ("schema", SCHEMA_VERSION),
                    ("epoch", secrets.token_hex(8)),
                    ("last_seq", "0"),
                    ("created_at", datetime.now(UTC).isoformat()),
                ],
            )
    else:
        with _transaction(conn):  # proves we can write here (a read-only file fails now)
            pass
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("schema") != SCHEMA_VERSION:
        raise StorageOpenError(
            f"{path} has event log schema {meta.get('schema')!r}; this ipt-bus reads "
            f"{SCHEMA_VERSION!r}"
        )
    last = int(meta["last_seq"])
    clean = meta.get("clean_shutdown", "1") == "1"
    with _transaction(conn) as c:  # set again by a clean close
        c.execute("INSERT OR REPLACE INTO meta VALUES ('clean_shutdown', '0')")
        if not clean and durability == "fast":
            # Commits since the last fsync may be gone, and subscribers may have seen their
            # `seq`: never hand those numbers to other events. The synced reservation bounds
            # every seq that can have been handed out.
            last = max(last, record.reserved) if record else last + FAST_CRASH_SEQ_SKIP
            c.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (str(last),))
            log.warning(
                "%s: the last run did not stop cleanly with durability fast; seq continues "
                "at %d so no seq that may have been lost is used again",
                path,
                last + 1,
            )
    first, count, size = conn.execute(
        "SELECT min(seq), count(*), COALESCE(sum(size), 0) FROM events"
    ).fetchone()
    keys = conn.execute("SELECT key, first_seq, count, at FROM idempotency ORDER BY at").fetchall()
    dead = [
        DeadLetter(*row)
        for row in conn.execute("SELECT * FROM dead_letters ORDER BY id").fetchall()
    ]
    record = SeqRecord(path.parent / SEQ_FILE, meta["epoch"], last, last + RESERVE_SEQS)
    record.open()
    return _Opened(
        record=record,
        epoch=meta["epoch"],
        first_seq=last + 1 if first is None else first,
        last_seq=last,
        count=count,
        bytes=size,
        keys=keys,
        dead=dead,
    )
