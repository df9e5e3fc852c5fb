"""Redis event log: one log shared by every bus node on the same Redis (docs/scaling.md).

Theory of operation:
- Events live in one Redis stream whose entry ids are `<seq>-0`; a counter key hands out `seq`.
  One Lua script checks the epoch, takes `n` seqs and adds the `n` entries (and the publish's
  idempotency keys) atomically, so every node sees one order and the stream is in `seq` order.
- An entry keeps the event's JSON without `id` and `seq` (they come last in the encoding, so a
  reader appends them: `Record.data` is byte for byte what the publishing node would have
  encoded) and the fields history filters need (topic, type, correlation id, timestamp).
- The log never fans out: each node tails the stream (`tail`, one reader per node) and its
  router fans out what the tail read. So a subscriber sees an event only once Redis has it, in
  the same order on every node.
- `epoch` is a key set once (SET NX): a flushed or replaced Redis has none, so the script
  refuses to append under the old epoch (`EpochChanged`) and the node adopts the new one.
- Keys share one hash tag (`{prefix}`), so a Redis Cluster keeps them in one slot (the script
  needs them together).
- Sync properties (`last_seq`, `first_seq`, `stats`) answer from what this node last learnt;
  `read_after` reads the oldest retained entry in the same script as the page (one snapshot, so
  a retention gap is never missed).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import ssl
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import attrs
import coredis
import coredis.exceptions
import orjson
import trio

from ipt_bus.core.codec import encode_stored
from ipt_bus.core.errors import StorageError, StorageOpenError
from ipt_bus.storage.base import (
    DeadLetter,
    EpochChanged,
    Key,
    LogStats,
    Page,
    Query,
    Record,
    published_range,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from ipt_bus.core.model import Event, Published

log = logging.getLogger("ipt_bus.storage")

READ_CHUNK: Final = 1_000  # entries one read script returns
TAIL_BLOCK_MS: Final = 1_000  # how long one XREAD of the tail waits for new entries
DEFAULT_RETENTION_EVENTS: Final = 1_000_000  # Redis holds the log in memory: bounded by default
RETRY_SECONDS: Final = (0.05, 0.1, 0.25, 0.5, 1.0)  # the tail's waits between failed reads

_APPEND: Final = """
local epoch = redis.call('GET', KEYS[3])
if epoch ~= ARGV[1] then
  return redis.error_reply('EPOCH ' .. tostring(epoch))
end
local n = tonumber(ARGV[2])
local kbase = 4 + 5 * n
local nkeys = #KEYS - 4
local skip = {}
local repeats = {}
local appended = n
for k = 1, nkeys do
  local found = redis.call('GET', KEYS[4 + k])
  if found then
    local start = tonumber(ARGV[kbase + 2 * (k - 1)])
    local count = tonumber(ARGV[kbase + 2 * (k - 1) + 1])
    for e = start, start + count - 1 do skip[e] = true end
    appended = appended - count
    repeats[k] = found
  else
    repeats[k] = ''
  end
end
local last = redis.call('INCRBY', KEYS[1], appended)
local first = last - appended + 1
local s = first
local seqs = {}
local bytes = 0
local extra = 16 + #ARGV[1]
for e = 0, n - 1 do
  if not skip[e] then
    local i = 4 + 5 * e
    bytes = bytes + #ARGV[i + 4] + extra + 2 * #tostring(s)
    if ARGV[i + 2] == '' then
      redis.call('XADD', KEYS[2], s .. '-0', 't', ARGV[i], 'y', ARGV[i + 1],
        's', ARGV[i + 3], 'b', ARGV[i + 4])
    else
      redis.call('XADD', KEYS[2], s .. '-0', 't', ARGV[i], 'y', ARGV[i + 1],
        'c', ARGV[i + 2], 's', ARGV[i + 3], 'b', ARGV[i + 4])
    end
    seqs[e] = s
    s = s + 1
  end
end
redis.call('INCRBY', KEYS[4], bytes)
for k = 1, nkeys do
  if repeats[k] == '' then
    local start = tonumber(ARGV[kbase + 2 * (k - 1)])
    redis.call('SET', KEYS[4 + k], seqs[start] .. ':' .. ARGV[kbase + 2 * (k - 1) + 1],
      'PX', ARGV[3])
  end
end
return {first, repeats}
"""

_TRIM: Final = """
local max_events = tonumber(ARGV[1])
local min_ts = tonumber(ARGV[2])
local max_bytes = tonumber(ARGV[3])
local extra = tonumber(ARGV[4])
local size = redis.call('XLEN', KEYS[1])
local total = tonumber(redis.call('GET', KEYS[2]) or '0')
local entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', ARGV[5])
local dropped, freed, cut = 0, 0, nil
for _, e in ipairs(entries) do
  local ts, bytes = 0, 0
  local fields = e[2]
  for j = 1, #fields, 2 do
    if fields[j] == 's' then ts = tonumber(fields[j + 1])
    elseif fields[j] == 'b' then bytes = #fields[j + 1] end
  end
  local seq = string.match(e[1], '^(%d+)')
  local over = (max_events and size - dropped > max_events)
    or (min_ts and ts < min_ts) or (max_bytes and total - freed > max_bytes)
  if not over then break end
  dropped = dropped + 1
  freed = freed + bytes + extra + 2 * #seq
  cut = seq
end
if cut then
  redis.call('XTRIM', KEYS[1], 'MINID', (tonumber(cut) + 1) .. '-0')
  redis.call('DECRBY', KEYS[2], freed)
end
return {dropped, dropped == #entries and dropped > 0 and 1 or 0}
"""

_READ: Final = """
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local page
if ARGV[4] == 'rev' then
  page = redis.call('XREVRANGE', KEYS[1], ARGV[2], ARGV[1], 'COUNT', ARGV[3])
else
  page = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', ARGV[3])
end
return {first, page, redis.call('GET', KEYS[2]) or '0'}
"""


@attrs.frozen
class _Entry:
    seq: int
    topic: str
    type: str
    correlation_id: str | None
    ts: float
    body: bytes

    @classmethod
    def parse(cls, ident: bytes | str, fields: Any) -> _Entry:
        # XREAD gives a mapping; a script's reply a flat [field, value, ...] list
        pairs: dict[bytes, bytes] = (
            fields
            if isinstance(fields, dict)
            else dict(zip(fields[::2], fields[1::2], strict=True))
        )
        correlation = pairs.get(b"c")
        seq = ident.split(b"-", 1)[0] if isinstance(ident, bytes) else ident.split("-", 1)[0]
        return cls(
            int(seq),
            pairs[b"t"].decode(),
            pairs[b"y"].decode(),
            None if correlation is None else correlation.decode(),
            float(pairs[b"s"]),
            pairs[b"b"],
        )

    def matches(self, query: Query) -> bool:
        return query.matches_fields(self.topic, self.type, self.correlation_id, self.ts)

    def record(self, epoch: str) -> Record:
        return _record(self.seq, self.topic, self.body, epoch)


def _record(seq: int, topic: str, body: bytes, epoch: str) -> Record:
    """The stored event as the other logs encode it: its JSON with `id` and `seq` last."""
    ident = f"{epoch}-{seq}"
    tail = f',"id":"{ident}","seq":{seq}}}'.encode()
    return Record(seq, ident, topic, body[:-1] + tail)


def _body(event: Event, now: datetime) -> tuple[datetime, bytes]:
    """The event's timestamp (now when absent), and its JSON without `id` and `seq`."""
    moment = event.timestamp or now
    return moment, encode_stored(event, moment)


Client = coredis.Redis[bytes] | coredis.RedisCluster[bytes]


@contextlib.asynccontextmanager
async def connect(url: str, connect_timeout: float) -> AsyncIterator[Client]:
    """A client for `url`: `redis://`, `rediss://` or `unix://` (one server),
    `redis+cluster://host:port` (a Redis Cluster, found from any of its nodes), or
    `redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]` (the primary the
    Sentinels name for `service`, followed across failovers). `rediss+…`: the same over TLS.

    Raises:
        StorageOpenError: the URL is not one of those.
    """
    options: dict[str, Any] = {
        "connect_timeout": connect_timeout,
        "stream_timeout": TAIL_BLOCK_MS / 1000 + 5,  # a tail's XREAD BLOCK, and then some
        "retry_policy": coredis.retry.ConstantRetryPolicy(
            (coredis.exceptions.ConnectionError,), retries=1, delay=0.01
        ),
    }
    scheme, sep, rest = url.partition("://")
    base, _, kind = scheme.partition("+")
    try:
        if not (
            sep and base in ("redis", "rediss", "unix") and kind in ("", "cluster", "sentinel")
        ):
            raise ValueError(
                "expected redis://, rediss://, unix://, redis+cluster:// or redis+sentinel://"
            )
        if kind == "sentinel":
            user, password, where = _credentials(rest)
            hosts, _, path = where.partition("/")
            service, _, db = path.partition("/")
            if not service:
                raise ValueError("name the Sentinel service: redis+sentinel://host:port/service")
            tls: dict[str, Any] = {}
            if base == "rediss":
                tls["ssl_context"] = ssl.create_default_context()
            sentinel: coredis.Sentinel[bytes] = coredis.Sentinel(
                [_location(h, 26379) for h in hosts.split(",")],
                connect_timeout=connect_timeout,
                retry_policy=options["retry_policy"],
                **tls,
            )
            primary_options = {k: v for k, v in options.items() if k != "retry_policy"} | {
                "db": int(db or 0),
                "username": user or None,
                "password": password or None,
            }
        elif kind == "cluster":
            user, password, where = _credentials(rest)
            cluster: coredis.RedisCluster[bytes] = coredis.RedisCluster(
                startup_nodes=[_location(h, 6379) for h in where.split("/")[0].split(",")],
                username=user or None,
                password=password or None,
                ssl=base == "rediss",
                **options,
            )
        else:
            single: coredis.Redis[bytes] = coredis.Redis.from_url(url, **options)
    except ValueError as exc:
        raise StorageOpenError(f"--redis-url {_redacted(url)}: {exc}") from None
    if kind == "sentinel":
        async with sentinel, sentinel.primary_for(service, **primary_options) as primary:
            yield primary
    elif kind == "cluster":
        async with cluster:
            yield cluster
    else:
        async with single:
            yield single


def _location(host_port: str, default_port: int) -> coredis.connection.TCPLocation:
    host, _, port = host_port.rpartition(":")
    return coredis.connection.TCPLocation(host or host_port, int(port) if host else default_port)


@attrs.define
class RedisLog:
    """The log in Redis; build it with `RedisLog.open`."""

    _client: Client
    prefix: str
    url: str
    retention_events: int | None = DEFAULT_RETENTION_EVENTS
    retention_age_seconds: float | None = None
    retention_bytes: int | None = None
    dedupe_window_seconds: float = 120.0
    _epoch: str = ""
    _first: int = 1
    _last: int = 0  # the newest seq this node knows of (its appends, its tail, its reads)
    _bytes: int = 0
    _problem: str | None = None
    _append_script: Any = None
    _read_script: Any = None
    _trim_script: Any = None
    _epoch_lost: bool = False
    _advanced: trio.Event = attrs.field(factory=trio.Event)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        url: str,
        *,
        prefix: str = "ipt_bus",
        retention_events: int | None = DEFAULT_RETENTION_EVENTS,
        retention_age_seconds: float | None = None,
        retention_bytes: int | None = None,
        dedupe_window_seconds: float = 120.0,
        connect_timeout: float = 2.0,
    ) -> AsyncIterator[RedisLog]:
        """Connect, and join the log at `prefix` (starting it when Redis has none).

        Raises:
            StorageOpenError: Redis cannot be reached or refuses (the message names the URL).
        """
        try:
            async with connect(url, connect_timeout) as client:
                self = cls(
                    client,
                    prefix,
                    _redacted(url),
                    retention_events,
                    retention_age_seconds,
                    retention_bytes,
                    dedupe_window_seconds,
                )
                self._append_script = client.register_script(_APPEND)
                self._read_script = client.register_script(_READ)
                self._trim_script = client.register_script(_TRIM)
                try:
                    with trio.fail_after(connect_timeout * 3):
                        await self._join()
                except (coredis.exceptions.RedisError, OSError, trio.TooSlowError) as exc:
                    raise StorageOpenError(
                        f"cannot use Redis at {self.url}: {_reason(exc)}; is redis-server "
                        "running there (--redis-url)?"
                    ) from None
                yield self
        except BaseExceptionGroup as group:
            # the client's task group wraps what leaves its block: hand on the one error
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    # --- keys -------------------------------------------------------------------------------

    def _key(self, name: str) -> str:
        return f"{{{self.prefix}}}:{name}"

    @property
    def _stream(self) -> str:
        return self._key("events")

    async def _join(self) -> None:
        """Adopt the log's epoch (starting one if Redis has none) and where it stands."""
        await self._client.set(
            self._key("epoch"), secrets.token_hex(8), condition=coredis.PureToken.NX
        )
        epoch = await self._client.get(self._key("epoch"))
        assert epoch is not None
        self._epoch = epoch.decode()
        for source in (_APPEND, _READ, _TRIM):  # loaded now: the first publish pays no retry
            await self._client.script_load(source)
        await self.refresh()

    async def refresh(self) -> None:
        """Learn the oldest and newest seq and the bytes held from Redis."""
        raw = await self._read_script(
            keys=[self._stream, self._key("seq")], args=["-", "+", 0, "fwd"]
        )
        first, _, last = raw
        self._last = max(self._last, int(last))
        self._first = int(first[0][0].split(b"-", 1)[0]) if first else self._last + 1
        self._bytes = int(await self._client.get(self._key("bytes")) or 0)

    # --- the EventLog interface -----------------------------------------------------------

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
        return True

    async def append(self, events: Sequence[Event], keys: Sequence[Key] = ()) -> list[Record]:
        """As every log's; a publish whose key another node logged meanwhile holds the original
        seqs and ids in its slots (`append_keyed` tells such repeats apart: the router uses it)."""
        records, repeats = await self.append_keyed(events, keys)
        out: list[Record] = []
        taken = 0
        by_start = {k.start: k for k in keys if k.key in repeats}
        index = 0
        while index < len(events):
            key = by_start.get(index)
            if key is None:
                out.append(records[taken])
                taken += 1
                index += 1
                continue
            original = repeats[key.key]
            for i in range(key.count):
                p = original[min(i, len(original) - 1)]
                out.append(Record(p.seq, p.id, events[index + i].topic, b""))
            index += key.count
        return out

    async def append_keyed(
        self, events: Sequence[Event], keys: Sequence[Key] = ()
    ) -> tuple[list[Record], dict[str, list[Published]]]:
        """Append in one script, which also checks each publish's key: a key another node
        logged since the router's `recall` makes its publish a repeat, not appended. Returns
        the records of what was appended, and each repeat's original answer by key."""
        now = datetime.now(UTC)
        args: list[str | bytes | int | float] = [
            self._epoch,
            len(events),
            max(1, round(self.dedupe_window_seconds * 1000)),
        ]
        bodies = []
        for event in events:
            moment, body = _body(event, now)
            bodies.append((event.topic, body))
            args += [
                event.topic,
                event.type,
                event.correlation_id or "",
                repr(moment.timestamp()),
                body,
            ]
        for k in keys:
            args += [k.start, k.count]
        names = [self._key("seq"), self._stream, self._key("epoch"), self._key("bytes")]
        names += [self._key(f"key:{k.key}") for k in keys]
        first_raw, found = await self._guard(self._append_script(keys=names, args=args))
        first = int(first_raw)
        repeats: dict[str, list[Published]] = {}
        skipped: set[int] = set()
        for k, value in zip(keys, found, strict=True):
            if value:
                original_first, count = value.split(b":")
                repeats[k.key] = published_range(self._epoch, int(original_first), int(count))
                skipped.update(range(k.start, k.start + k.count))
        kept = [b for i, b in enumerate(bodies) if i not in skipped] if skipped else bodies
        records = [_record(first + i, t, b, self._epoch) for i, (t, b) in enumerate(kept)]
        if records:
            self._note(records[-1].seq)
        self._bytes += sum(len(r.data) for r in records)
        return records, repeats

    async def recall(self, key: str) -> list[Published] | None:
        found = await self._guard(self._client.get(self._key(f"key:{key}")))
        if found is None:
            return None
        first, count = found.split(b":")
        return published_range(self._epoch, int(first), int(count))

    async def read_after(
        self, since: int, query: Query, limit: int, *, until: int | None = None
    ) -> Page:
        out: list[Record] = []
        cursor = since
        first_seq: int | None = None
        end = "+" if until is None else f"{until}-0"
        while len(out) < limit and (until is None or cursor < until):
            first, entries, last = await self._read(f"({cursor}-0", end, READ_CHUNK)
            if first_seq is None:
                first_seq = first
            for ident, fields in entries:
                entry = _Entry.parse(ident, fields)
                cursor = entry.seq
                if entry.matches(query):
                    out.append(entry.record(self._epoch))
                    if len(out) == limit:
                        break
            if len(entries) < READ_CHUNK:  # the end: everything up to `last` was examined
                if len(out) < limit:
                    cursor = max(cursor, last if until is None else min(until, last))
                break
        if first_seq is None:
            first_seq = self._first
        return Page(out, cursor, first_seq)

    async def read_latest(self, query: Query, limit: int) -> list[Record]:
        out: list[Record] = []
        cursor = "+"
        while len(out) < limit:
            _, entries, _ = await self._read("-", cursor, READ_CHUNK, reverse=True)
            for ident, fields in entries:
                entry = _Entry.parse(ident, fields)
                if entry.matches(query):
                    out.append(entry.record(self._epoch))
                    if len(out) == limit:
                        break
            if len(entries) < READ_CHUNK:
                break
            cursor = f"({entries[-1][0].decode()}"
        out.reverse()
        return out

    async def _read(
        self, start: str, end: str, count: int, *, reverse: bool = False
    ) -> tuple[int, list[Any], int]:
        """(oldest retained seq, entries, newest seq), read at one moment."""
        first, entries, last = await self._guard(
            self._read_script(
                keys=[self._stream, self._key("seq")],
                args=[start, end, count, "rev" if reverse else "fwd"],
            )
        )
        newest = int(last)
        self._note(newest)
        oldest = int(first[0][0].split(b"-", 1)[0]) if first else newest + 1
        self._first = oldest
        return oldest, entries, newest

    async def enforce_retention(self) -> int:
        """Trim by count, age and bytes, oldest first, in chunks (each chunk one script: Redis
        stays responsive), and learn where the log now stands."""
        dropped = 0
        if any(
            v is not None
            for v in (self.retention_events, self.retention_age_seconds, self.retention_bytes)
        ):
            cutoff = (
                None
                if self.retention_age_seconds is None
                else time.time() - self.retention_age_seconds
            )
            args = [
                _arg(self.retention_events),
                _arg(cutoff),
                _arg(self.retention_bytes),
                16 + len(self._epoch),
                READ_CHUNK,
            ]
            more = 1
            while more:
                count, more = await self._guard(
                    self._trim_script(keys=[self._stream, self._key("bytes")], args=args)
                )
                dropped += int(count)
        await self._guard(self.refresh())
        return dropped

    def stats(self) -> LogStats:
        return LogStats(
            size=max(0, self._last - self._first + 1),  # seqs are dense; trims take the oldest
            capacity=self.retention_events,
            first_seq=self._first,
            last_seq=self._last,
            bytes=self._bytes,
        )

    def problem(self) -> str | None:
        return self._problem

    async def aclose(self) -> None:
        return None  # `open`'s context closes the client

    # --- dead letters (bus/dlq.py: a store shared by the nodes) ----------------------------

    async def sync_dead(self, put: Sequence[DeadLetter], drop: Sequence[int]) -> None:
        key = self._key("dlq")
        if put:
            mapping = {str(d.id): orjson.dumps(attrs.asdict(d)) for d in put}
            await self._guard(self._client.hset(key, mapping))
        if drop:
            await self._guard(self._client.hdel(key, [str(i) for i in drop]))

    async def load_dead(self) -> list[DeadLetter]:
        stored = await self._guard(self._client.hgetall(self._key("dlq")))
        letters = [DeadLetter(**orjson.loads(raw)) for raw in stored.values()]
        return sorted(letters, key=lambda d: d.id)

    async def reserve_dead_ids(self, count: int) -> int:
        last = await self._guard(self._client.incrby(self._key("dlq:ids"), count))
        return int(last) - count + 1

    # --- tailing --------------------------------------------------------------------------

    async def tail(self, after: int) -> AsyncIterator[list[Record]]:
        """The events after `after`, in order, as they arrive (batches of what one read got).

        Survives Redis going away: it retries (the problem shows in `problem()`) and goes on
        where it stopped, so what was appended meanwhile is delivered, not skipped. Stops with
        `EpochChanged` when Redis holds another log."""
        cursor = after
        failures = 0
        while True:
            try:
                got = await self._client.xread(
                    {self._stream: f"{cursor}-0"}, count=READ_CHUNK, block=TAIL_BLOCK_MS
                )
                if failures or not got or self._epoch_lost:
                    # back from a failure, or idle: a flushed Redis has no entries after `cursor`
                    await self._check_epoch()
            except (coredis.exceptions.RedisError, OSError) as exc:
                self._unreachable(exc)
                await _back_off(failures)
                failures += 1
                continue
            if failures:
                failures = 0
                self._problem = None
            if not got:
                continue
            entries = next(iter(got.values()))
            records = [
                _Entry.parse(e.identifier, e.field_values).record(self._epoch) for e in entries
            ]
            cursor = records[-1].seq
            self._note(cursor)
            yield records

    async def _check_epoch(self) -> None:
        epoch = await self._client.get(self._key("epoch"))
        if epoch is None or epoch.decode() != self._epoch:
            raise self._lost()

    def _lost(self) -> EpochChanged:
        self._epoch_lost = True
        return EpochChanged(
            f"Redis at {self.url} holds another log than this node's (epoch {self._epoch} "
            "is gone): it was flushed or replaced"
        )

    async def rejoin(self) -> int:
        failures = 0
        while True:
            try:
                self._last = 0
                await self._join()
            except (coredis.exceptions.RedisError, OSError) as exc:
                self._unreachable(exc)
                await _back_off(failures)
                failures += 1
                continue
            self._epoch_lost = False
            self._problem = None
            log.warning("joined the log in Redis at %s anew: epoch %s", self.url, self._epoch)
            return self._last

    def _note(self, seq: int) -> None:
        if seq > self._last:
            self._last = seq
            self._advanced.set()
            self._advanced = trio.Event()

    async def settle(self, seq: int, timeout: float) -> None:
        """Wait (at most `timeout`) until this node knows of `seq`: a client resuming here
        from another node may have seen events this node's tail has not read yet."""
        with trio.move_on_after(timeout):
            while self._last < seq:
                await self._advanced.wait()

    # --- failure handling -----------------------------------------------------------------

    async def _guard(self, request: Any) -> Any:
        """Await a Redis request: its failures become `StorageError` (and `problem()`), a lost
        epoch `EpochChanged`."""
        try:
            result = await request
        except coredis.exceptions.ResponseError as exc:
            if str(exc).startswith("EPOCH"):
                raise self._lost() from None
            raise StorageError(f"Redis at {self.url} refused: {exc}") from None
        except (coredis.exceptions.RedisError, OSError) as exc:
            raise StorageError(self._unreachable(exc)) from None
        self._problem = None
        return result

    def _unreachable(self, exc: BaseException) -> str:
        self._problem = f"Redis at {self.url} unreachable: {_reason(exc)}"
        return self._problem


async def _back_off(failures: int) -> None:
    """The wait before retrying after `failures` failed tries in a row."""
    await trio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])


def _arg(value: float | None) -> str:
    """A script argument that may be unset (Lua's tonumber('') is nil)."""
    return "" if value is None else repr(value)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _redacted(url: str) -> str:
    """The URL without its password, for messages and /stats."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    user, _, where = _credentials(rest)
    return f"{scheme}://{user + ':***@' if user else '***@'}{where}"


def _credentials(rest: str) -> tuple[str, str, str]:
    """`[user[:password]@]where` (a URL after its scheme) -> user, password, where."""
    auth, _, where = rest.rpartition("@")
    user, _, password = auth.partition(":")
    return user, password, where
