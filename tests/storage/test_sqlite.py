"""The SQLite log on real files: reopening, retention, keys across restarts, failures, damage.

The EventLog contract itself is checked for every backend in test_conformance.py."""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
import trio
from hypothesis import strategies as st

from ipt_bus.core.errors import StorageFull, StorageOpenError
from ipt_bus.core.model import Event
from ipt_bus.storage.base import Key, Query
from ipt_bus.storage.seqfile import RESERVE_SEQS, SEQ_FILE, SeqRecord
from ipt_bus.storage.sqlite import FAST_CRASH_SEQ_SKIP, FILE_NAME, Retention, SqliteLog

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def ev(topic: str = "a.b", type_: str = "t", **kw: object) -> Event:
    return Event(type=type_, topic=topic, payload={"n": 1}, **kw)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[SqliteLog]:
    log = SqliteLog.open(tmp_path)
    yield log
    trio.run(log.aclose)


async def test_reopen_keeps_epoch_events_and_continues_seq(tmp_path: Path) -> None:
    log = SqliteLog.open(tmp_path)
    await log.append([ev() for _ in range(5)])
    epoch = log.epoch
    await log.aclose()
    log = SqliteLog.open(tmp_path)
    try:
        assert (log.epoch, log.first_seq, log.last_seq) == (epoch, 1, 5)
        (record,) = await log.append([ev()])
        assert record.seq == 6
    finally:
        await log.aclose()


async def test_a_new_database_has_a_new_epoch(tmp_path: Path) -> None:
    first = SqliteLog.open(tmp_path / "one")
    second = SqliteLog.open(tmp_path / "two")
    assert first.epoch != second.epoch
    await first.aclose()
    await second.aclose()


async def test_seq_is_never_reused_after_retention_empties_the_log(tmp_path: Path) -> None:
    clock = Clock()
    log = SqliteLog.open(tmp_path, retention=Retention(age_seconds=10))
    log.clock = clock
    await log.append([ev() for _ in range(3)])
    clock.now += 11
    assert await log.enforce_retention() == 3
    assert log.stats().size == 0
    assert (log.first_seq, log.last_seq) == (4, 3)
    await log.aclose()
    log = SqliteLog.open(tmp_path)
    try:
        assert (log.first_seq, log.last_seq) == (4, 3)
        assert [r.seq for r in await log.append([ev()])] == [4]
    finally:
        await log.aclose()


async def test_retention_by_count_bytes_and_age(tmp_path: Path) -> None:
    clock = Clock()
    log = SqliteLog.open(tmp_path, retention=Retention(events=50))
    log.clock = clock
    try:
        for _ in range(12):  # in many appends: retention works across chunk boundaries too
            await log.append([ev() for _ in range(10)])
        assert await log.enforce_retention() == 70
        assert (log.first_seq, log.last_seq, log.stats().size) == (71, 120, 50)
        page = await log.read_after(0, Query(), 5)
        assert page.first_seq == 71
        assert [r.seq for r in page.records] == [71, 72, 73, 74, 75]

        size = log.stats().bytes // 50  # about one event
        target = size * 20
        log.retention = Retention(bytes=target)
        assert await log.enforce_retention() in (30, 31)
        held = log.stats().bytes
        assert held <= target < held + size + 2  # no more went than needed
        assert log.first_seq == 121 - log.stats().size

        log.retention = Retention(age_seconds=60)
        older = log.stats().size
        clock.now += 30
        await log.append([ev() for _ in range(5)])
        clock.now += 40  # the older ones are 70 s old, the 5 newer 40 s
        assert await log.enforce_retention() == older
        assert log.stats().size == 5
        assert log.first_seq == 121
    finally:
        await log.aclose()


async def test_idempotency_keys_survive_a_restart_within_the_window(tmp_path: Path) -> None:
    clock = Clock()
    log = SqliteLog.open(tmp_path, dedupe_window_seconds=120)
    log.clock = clock
    await log.append([ev(), ev(), ev()], [Key("k1", 1, 2)])
    assert [p.seq for p in (await log.recall("k1")) or []] == [2, 3]
    await log.aclose()
    log = SqliteLog.open(tmp_path, dedupe_window_seconds=120)
    log.clock = clock
    try:
        recalled = await log.recall("k1")
        assert recalled is not None
        assert [(p.id, p.seq) for p in recalled] == [(f"{log.epoch}-2", 2), (f"{log.epoch}-3", 3)]
        clock.now += 121
        assert (await log.recall("k1")) is None
    finally:
        await log.aclose()


async def test_a_full_database_refuses_appends_keeps_reads_and_recovers(tmp_path: Path) -> None:
    log = SqliteLog.open(tmp_path)
    try:
        await log.append([ev() for _ in range(10)])
        await log.set_max_bytes(1)  # below what it holds: nothing more fits
        big = Event(type="t", topic="a", payload={"x": "y" * 100_000})
        with pytest.raises(StorageFull, match=FILE_NAME):
            await log.append([big])
        assert "full" in (log.problem() or "")
        last = log.last_seq
        page = await log.read_after(0, Query(), 100)
        assert [r.seq for r in page.records] == list(range(1, last + 1))
        await log.set_max_bytes(None)  # space is back
        (record,) = await log.append([ev()])
        assert record.seq == last + 1
        assert log.problem() is None
    finally:
        await log.aclose()


def test_a_corrupt_file_stops_start_up_naming_it_and_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    garbage = b"this is not a database" * 200
    path.write_bytes(garbage)
    with pytest.raises(StorageOpenError, match=str(path)):
        SqliteLog.open(tmp_path)
    assert path.read_bytes() == garbage


def test_a_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE customers (name TEXT)")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StorageOpenError, match="not an ipt-bus event log"):
        SqliteLog.open(tmp_path)
    assert path.read_bytes() == before


def test_a_damaged_page_is_caught_at_start(tmp_path: Path) -> None:
    log = SqliteLog.open(tmp_path)
    trio.run(log.append, [ev() for _ in range(2000)])
    trio.run(log.aclose)
    path = tmp_path / FILE_NAME
    data = bytearray(path.read_bytes())
    page = 4096
    for i in range(3 * page, 3 * page + 200):  # scribble over a page's header and cell pointers
        data[i] = 0xA5
    path.write_bytes(bytes(data))
    with pytest.raises(StorageOpenError, match=str(path)):
        SqliteLog.open(tmp_path)


# --- the two logs answer every query alike ----------------------------------------------------

TOPICS = ["a", "a.b", "a.c", "a.b.c", "file.progress", "file.x.y", "logs.info"]
PATTERNS = ["a", "a.*", "a.**", "*.b", "file.*", "**", "logs.info", "x.**"]
moments = st.integers(0, 5).map(lambda h: datetime(2026, 1, 1, h, tzinfo=UTC))


def _crash(log: SqliteLog) -> None:
    """Stop the log's threads without a clean close, as a killed process would."""
    log._writer.stop()
    log._reader.stop()


async def test_fast_mode_skips_past_the_reservation_after_an_unclean_stop(tmp_path: Path) -> None:
    log = SqliteLog.open(tmp_path, durability="fast", retention=Retention(events=3))
    await log.append([ev() for _ in range(3)])
    _crash(log)
    log = SqliteLog.open(tmp_path, durability="fast", retention=Retention(events=3))
    try:
        # every seq that could have been handed out is at most the synced reservation
        assert log.last_seq == RESERVE_SEQS
        (record,) = await log.append([ev()])
        assert record.seq == RESERVE_SEQS + 1
        assert await log.enforce_retention() == 1  # counts events, not seq numbers
        page = await log.read_after(0, Query(), 10)
        assert [r.seq for r in page.records] == [2, 3, record.seq]
    finally:
        await log.aclose()
    log = SqliteLog.open(tmp_path, durability="fast")  # after a clean stop: no skip
    try:
        assert log.last_seq == RESERVE_SEQS + 1
    finally:
        await log.aclose()
    log = SqliteLog.open(tmp_path, durability="safe")
    _crash(log)
    log = SqliteLog.open(tmp_path, durability="safe")  # safe: nothing acked can be lost
    try:
        assert log.last_seq == RESERVE_SEQS + 1
    finally:
        await log.aclose()


async def test_a_log_without_its_sequence_record_gets_one(tmp_path: Path) -> None:
    """A log made before the record existed: fast mode skips a million after a crash."""
    log = SqliteLog.open(tmp_path, durability="fast")
    await log.append([ev() for _ in range(3)])
    _crash(log)
    (tmp_path / SEQ_FILE).unlink()
    log = SqliteLog.open(tmp_path, durability="fast")
    try:
        assert log.last_seq == 3 + FAST_CRASH_SEQ_SKIP
        assert (tmp_path / SEQ_FILE).exists()
    finally:
        await log.aclose()
    record = SeqRecord.read(tmp_path / SEQ_FILE)
    assert record is not None
    assert (record.epoch, record.committed) == (log.epoch, 3 + FAST_CRASH_SEQ_SKIP)


async def test_the_sequence_record_reserves_ahead_and_follows_every_commit(
    tmp_path: Path,
) -> None:
    log = SqliteLog.open(tmp_path)
    try:
        await log.append([ev() for _ in range(5)])
        record = SeqRecord.read(tmp_path / SEQ_FILE)
        assert record is not None
        assert (record.committed, record.reserved) == (5, RESERVE_SEQS)
        await log.append([ev() for _ in range(RESERVE_SEQS)])
        record = SeqRecord.read(tmp_path / SEQ_FILE)
        assert record is not None
        assert (record.committed, record.reserved) == (RESERVE_SEQS + 5, 2 * RESERVE_SEQS + 5)
    finally:
        await log.aclose()


@pytest.mark.parametrize("name", ["data#1", "100%", "what?", "a b", "ü"])
async def test_odd_directory_names_are_used_as_they_are(tmp_path: Path, name: str) -> None:
    """The SQLite URI is built percent-encoded: `#`, `%` and `?` mean themselves."""
    data = tmp_path / name
    log = SqliteLog.open(data)
    try:
        await log.append([ev()])
    finally:
        await log.aclose()
    assert (data / FILE_NAME).exists()
    assert os.listdir(tmp_path) == [name]
    log = SqliteLog.open(data)
    try:
        assert log.last_seq == 1
    finally:
        await log.aclose()
