"""File events: JSON and JSON-Lines files in a watched directory become `file.*` events
(`ipt-bus serve --watch-dir DIR`, docs/integrations.md#file-events).

Theory of operation: one task scans DIR at start and again whenever watchfiles reports a
change. For each ``*.jsonl``/``*.ndjson`` file it reads from the offset it got to, publishes
every complete line (a partial last line waits for its newline) and then records the new offset
in ``<data-dir>/file-offsets.json``. Each line is published with an idempotency key made of the
file's identity and the line's offset, so a crash between publishing and saving the offset
cannot publish a line twice (within the bus's dedupe window). A file that shrank was truncated
and a file with a new inode was rotated: both are read again from the start. A ``*.json`` file
holds one document (an object or an array of objects), published once per version of the file.
Every line goes through the bus's one ingress (`ipt_bus.bus.ingress`): a line or document that
is not a valid event goes to the dead letters with its file and line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import orjson
import trio
import watchfiles

from ipt_bus.bus import ingress
from ipt_bus.bus.ingress import Offer, Origin
from ipt_bus.bus.node import BusHandle
from ipt_bus.core import codec
from ipt_bus.core.errors import BusError, ErrorCode, ProtocolError, StartupError, StorageError

if TYPE_CHECKING:
    from collections.abc import Callable

    from ipt_bus.core.config import BusConfig
    from ipt_bus.core.model import Event


log = logging.getLogger("ipt_bus.integrations.files")

LINE_FILES: Final = (".jsonl", ".ndjson")
DOCUMENT_FILES: Final = (".json",)
OFFSETS_FILE: Final = "file-offsets.json"
RESTART_SECONDS: Final = 5.0
_ENVELOPE: Final = ("type", "topic", "payload", "timestamp", "source", "correlation_id")
_NOT_SEGMENT: Final = re.compile(r"[^A-Za-z0-9_-]+")


@attrs.define
class _Position:
    inode: int
    offset: int  # bytes read and published
    line: int  # lines read (for dead-letter messages)
    version: str = ""  # *.json: the size and mtime last published
    generation: int = 0  # bumped on truncation: the same offset then holds another line


def topic_for(path: Path, obj: dict[str, Any]) -> str:
    """The object's own `file.*` topic, else ``file.<stem>``."""
    topic = obj.get("topic")
    if isinstance(topic, str) and topic.startswith("file."):
        return topic
    stem = _NOT_SEGMENT.sub("_", path.stem).strip("_") or "unnamed"
    return f"file.{stem[:64]}"


def to_event(path: Path, obj: Any) -> dict[str, Any]:
    """A file's object as an event body: `type`, `payload`, `source`, `correlation_id` carry
    over; without a `payload`, the object's other fields are the payload."""
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.INVALID_FRAME, "a file event must be a JSON object")
    payload = obj.get("payload")
    if payload is None:
        payload = {k: v for k, v in obj.items() if k not in _ENVELOPE}
    event = {
        "type": obj.get("type") or "file_event",
        "topic": topic_for(path, obj),
        "payload": payload,
        "source": obj.get("source") or f"file:{path.name}",
    }
    for key in ("correlation_id", "timestamp"):
        if obj.get(key) is not None:
            event[key] = obj[key]
    return event


@attrs.define
class FileWatcher:
    bus: BusHandle
    directory: Path
    offsets_path: Path
    _positions: dict[str, _Position] = attrs.field(factory=dict)
    _refused: set[str] = attrs.field(factory=set)  # links out of the directory, warned once

    def load(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            saved = orjson.loads(self.offsets_path.read_bytes())
            self._positions = {k: _Position(**v) for k, v in saved.items()}

    def _save(self) -> None:
        tmp = self.offsets_path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps({k: attrs.asdict(v) for k, v in self._positions.items()}))
        os.replace(tmp, self.offsets_path)

    async def run(self, stop: trio.Event) -> None:
        """Publish what is there, then what changes, until `stop` is set."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.load()
        await self.scan()
        async for _ in watchfiles.awatch(
            self.directory, stop_event=stop, debounce=50, step=20, recursive=False
        ):
            await self.scan()

    async def scan(self) -> None:
        for path in sorted(self.directory.iterdir()):
            if path.suffix in LINE_FILES or path.suffix in DOCUMENT_FILES:
                if not self._inside(path):
                    continue
                try:
                    await self._file(path)
                except (BusError, OSError) as exc:  # tried again at the next change
                    log.warning("cannot publish events of %s yet: %s", path, exc)

    def _inside(self, path: Path) -> bool:
        """Whether `path` is a regular file of the watch directory once links are followed.

        A symbolic link may point at another file of the directory; one that leads out of it
        (to any file the bus can read) is never read, so nothing outside reaches the bus.
        """
        real = path.resolve()
        if real.parent == self.directory.resolve() and real.is_file():
            return True
        if str(path) not in self._refused:
            self._refused.add(str(path))
            log.warning(
                "not reading %s: it leads to %s, outside the watch directory %s "
                "(or is not a regular file)",
                path,
                real,
                self.directory,
            )
        return False

    async def _file(self, path: Path) -> None:
        try:
            stat = await trio.to_thread.run_sync(path.stat)
        except FileNotFoundError:
            return
        key = str(path)
        pos = self._positions.get(key)
        if pos is None or pos.inode != stat.st_ino or stat.st_size < pos.offset:
            generation = 0 if pos is None else pos.generation + 1
            pos = _Position(inode=stat.st_ino, offset=0, line=0, generation=generation)
            self._positions[key] = pos  # new, rotated or truncated: from the start
            self._save()
        if path.suffix in DOCUMENT_FILES:
            await self._document(path, pos, f"{stat.st_size}:{stat.st_mtime_ns}")
        else:
            await self._lines(path, pos, stat.st_size)

    async def _lines(self, path: Path, pos: _Position, size: int) -> None:
        if size == pos.offset:
            return
        data = await trio.to_thread.run_sync(_read, path, pos.offset, size - pos.offset)
        end = data.rfind(b"\n")
        if end < 0:
            return  # only a partial line so far
        start = 0
        for raw in data[: end + 1].split(b"\n")[:-1]:
            pos.line += 1
            line_offset = pos.offset + start
            start += len(raw) + 1
            if raw.strip():
                key = f"{pos.inode}:{pos.generation}:{line_offset}"
                await self._publish(path, pos.line, key, partial(codec.loads, raw), raw)
        pos.offset += end + 1
        self._save()

    async def _document(self, path: Path, pos: _Position, version: str) -> None:
        if pos.version == version:
            return
        raw = await trio.to_thread.run_sync(path.read_bytes)
        try:
            body = codec.loads(raw)
        except ProtocolError as exc:  # kept whole: the file is one (broken) document
            text = partial(raw.decode, "utf-8", "replace")
            ingress.failed(self.bus, _origin(path, 0), text, exc)
        else:
            items = body if isinstance(body, list) else [body]
            for i, obj in enumerate(items, 1):
                key = f"{pos.inode}:{version}:{i}"
                await self._publish(path, i, key, partial(_same, obj), raw)
        pos.version = version
        self._save()

    async def _publish(
        self, path: Path, line: int, key: str, parse: Callable[[], Any], raw: bytes
    ) -> None:
        """One line's (or document item's) object, mapped to an event, through the ingress;
        a refused one is a dead letter (the mapped event, to retry; else the text itself)."""
        mapped: list[bytes] = []

        def decode() -> list[Event]:
            body = to_event(path, parse())
            mapped.append(codec.dumps(body))
            return [codec.decode_event(body, max_bytes=self.bus.config.max_event_bytes)]

        def kept() -> str:
            return (mapped[0] if mapped else raw).decode("utf-8", "replace")

        with contextlib.suppress(ProtocolError, StorageError):  # dead-lettered by the ingress
            offer = Offer(_origin(path, line), decode, kept, key=f"file:{path.name}:{key}")
            await ingress.publish(self.bus, offer)


def _same(value: Any) -> Any:
    return value


def _origin(path: Path, line: int) -> Origin:
    where = f"file:{path.name}:{line}" if line else f"file:{path.name}"
    return Origin("file", source=where)


def _read(path: Path, offset: int, count: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(count)


async def watch(
    bus: BusHandle,
    directory: Path,
    offsets_path: Path,
    stop: trio.Event,
) -> None:
    """Run the watcher until `stop`; a failure (the directory removed, a full disk for the
    offsets) is logged and the watcher starts again after `RESTART_SECONDS`, never taking the
    bus down with it."""
    while not stop.is_set():
        try:
            await FileWatcher(bus, directory, offsets_path).run(stop)
        except Exception:
            log.exception("the file watcher on %s failed; restarting it", directory)
            with trio.move_on_after(RESTART_SECONDS):
                await stop.wait()


def check_watch_dir(config: BusConfig) -> None:
    """Make sure `--watch-dir` (and the data dir for its offsets) can be used, at start.

    Raises:
        StartupError: naming the directory and why.
    """
    if config.watch_dir is None:
        return
    try:
        Path(config.watch_dir).mkdir(parents=True, exist_ok=True)
        Path(config.data_dir).mkdir(parents=True, exist_ok=True)  # the offsets live there
    except OSError as exc:
        raise StartupError(f"cannot use the watch directory {config.watch_dir}: {exc}") from None
