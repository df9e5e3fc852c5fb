"""A damaged log never hands out a `seq` again under its epoch (issue 11 item 4).

`ipt-bus serve` is killed with SIGKILL while everything it wrote is still in the write-ahead log;
then the files are damaged the ways a disk, a bad copy or an operator can. SQLite would open each
of these as a shorter (or empty) log and carry on; the bus refuses to start, names the file and
leaves the files as they were, unless told to start over with `--discard-damaged-log`.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING

import httpx
import pytest
import trio

from ipt_bus.storage.seqfile import SEQ_FILE
from ipt_bus.storage.sqlite import FILE_NAME
from tests.conftest import event, wait_for
from tests.integration.test_launch import BIN, free_port, healthy, process

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

PUBLISHED = 300  # few enough that SQLite does not checkpoint: all of it is in the WAL


async def _killed_with_everything_in_the_wal(data: Path) -> str:
    """Publish, then SIGKILL the bus; returns the log's epoch."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(BIN / "ipt-bus"), "serve", "--port", str(port), "--data-dir", str(data)]
    async with process(*argv) as proc:
        await wait_for(lambda: healthy(url), seconds=20)
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            for start in range(0, PUBLISHED, 50):
                batch = [event("dmg.x", n=n) for n in range(start, start + 50)]
                assert (await http.post("/events", json=batch)).status_code == 201
            epoch = str((await http.get("/health")).json()["epoch"])
        proc.send_signal(signal.SIGKILL)
        with trio.fail_after(10):
            await proc.wait()
    wal = data / f"{FILE_NAME}-wal"
    assert wal.stat().st_size > 0
    return epoch


def _truncate_wal(data: Path) -> None:
    wal = data / f"{FILE_NAME}-wal"
    os.truncate(wal, wal.stat().st_size // 2)


def _flip_wal_middle(data: Path) -> None:
    wal = data / f"{FILE_NAME}-wal"
    raw = bytearray(wal.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 16] = bytes(b ^ 0xFF for b in raw[middle : middle + 16])
    wal.write_bytes(bytes(raw))


def _empty_main_file(data: Path) -> None:
    (data / FILE_NAME).write_bytes(b"")


def _delete_wal(data: Path) -> None:
    (data / f"{FILE_NAME}-wal").unlink()
    (data / f"{FILE_NAME}-shm").unlink(missing_ok=True)


def _zero_wal(data: Path) -> None:
    wal = data / f"{FILE_NAME}-wal"
    wal.write_bytes(bytes(wal.stat().st_size))


def _bad_wal_header(data: Path) -> None:
    wal = data / f"{FILE_NAME}-wal"
    raw = bytearray(wal.read_bytes())
    raw[:32] = b"\xde\xad\xbe\xef" * 8
    wal.write_bytes(bytes(raw))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "wal truncated": _truncate_wal,
    "wal bytes flipped": _flip_wal_middle,
    "main file empty": _empty_main_file,
    "wal deleted": _delete_wal,
    "wal zeroed": _zero_wal,
    "wal header bad": _bad_wal_header,
}


def _snapshot(data: Path) -> dict[str, bytes]:
    """The log's files as they are: the WAL index `-shm` is derived and left out, and an empty
    WAL is the same as none (SQLite opens one for reading)."""
    names = (FILE_NAME, f"{FILE_NAME}-wal", SEQ_FILE)
    files = {n: (data / n).read_bytes() for n in names if (data / n).exists()}
    return {n: content for n, content in files.items() if content or n != f"{FILE_NAME}-wal"}


async def _start(data: Path, *flags: str) -> tuple[int | None, str, str | None]:
    """Start the bus on `data`: (exit code or None if it serves, its output, its epoch)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(BIN / "ipt-bus"), "serve", "--port", str(port), "--data-dir", str(data), *flags]
    async with process(*argv) as proc:
        await wait_for(lambda: proc.returncode is not None or healthy(url), seconds=20)
        if proc.returncode is not None:
            assert proc.stdout is not None
            output = (await proc.stdout.receive_some(65536)).decode()
            return proc.returncode, output, None
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            health = (await http.get("/health")).json()
            after = (await http.post("/events", json=event("dmg.after"))).json()
        assert after["seq"] == health["last_seq"] + 1
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            await proc.wait()
        return None, "", str(health["epoch"]) + f"@{after['seq']}"


@pytest.mark.parametrize("damage", sorted(DAMAGE))
async def test_a_damaged_log_stops_start_up_and_can_be_discarded_explicitly(
    tmp_path: Path, damage: str
) -> None:
    data = tmp_path / "data"
    epoch = await _killed_with_everything_in_the_wal(data)
    DAMAGE[damage](data)
    before = _snapshot(data)

    code, output, _ = await _start(data)
    assert code == 1, output
    assert str(data / FILE_NAME) in output
    assert "--discard-damaged-log" in output
    assert _snapshot(data) == before  # left as it was

    code, output, started = await _start(data, "--discard-damaged-log")
    assert code is None, output
    assert started is not None
    new_epoch, first_seq = started.split("@")
    assert new_epoch != epoch  # a new log: clients resuming are told their history is gone
    assert first_seq == "1"
    (aside,) = data.glob("damaged-*")
    assert (aside / SEQ_FILE).exists()


async def test_a_killed_log_that_is_whole_starts_as_it_was(tmp_path: Path) -> None:
    data = tmp_path / "data"
    epoch = await _killed_with_everything_in_the_wal(data)
    code, output, started = await _start(data)
    assert code is None, output
    assert started == f"{epoch}@{PUBLISHED + 1}"  # safe mode: no seq skipped, none reused
