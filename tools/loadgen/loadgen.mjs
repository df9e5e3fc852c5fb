// The benchmark's load generator: WebSocket subscribers and a publisher in one Node.js process.
//
// tools/bench.py starts it pinned to the core the server does not use, with one JSON spec as
// its argument; it prints {"phase":"counting"} when the measured window starts and one JSON
// result at the end. Like the Python generator before it, it speaks just enough RFC 6455 over
// plain TCP sockets (zero mask key) and scans what arrives instead of parsing it: a delivery is
// one `_event"` in the byte stream (so a batched message counts each event it holds); latency
// comes from the `"t":` publish time (µs of performance.now) the publisher put in each event.
// Node's native byte search does this several times faster than Python could, so the server
// saturates first.
//
// spec: {sub_url (or a list: subscribers take them in turn, e.g. one per node), pub_url,
//        subscribers, seconds, warmup, grace, rate (events/s; 0 = as fast as
//        the server reads), ack (ask for acks, `in_flight` unanswered at most), topics
//        (published round robin), bare (the bare relay: raw events, no envelope), pad}
import net from "node:net";
import { randomBytes } from "node:crypto";

const spec = JSON.parse(process.argv[2]);
const SUB_URLS = [].concat(spec.sub_url);
const subUrl = (i) => SUB_URLS[i % SUB_URLS.length];
// A delivery is one event type in the byte stream (`bench_event`, in the bus's envelope and the
// bare relay's alike), a gap notice one `gap"`. The needles start with a byte that is rare in
// the events' JSON: Node's search skips to each candidate first byte, and with '"seq":' (a quote
// leads every key) it cost 50 us per 64 KiB read, a third of the generator's core at 1,000
// subscribers; '_event"' costs 15 us, 'gap"' 1 us.
const MARK = Buffer.from('_event"');
const T = Buffer.from('"t":');
const GAP = Buffer.from('gap"');
const ACK = Buffer.from('"action":"published"');
const ERROR = Buffer.from('"action":"error"');
const TAIL = 64; // bytes kept from a chunk's end, so a marker split across chunks is found

function count(buf, needle, from) {
  let n = 0;
  for (let at = buf.indexOf(needle, from); at >= 0; at = buf.indexOf(needle, at + needle.length)) n++;
  return n;
}

// Occurrences of `needle` in `chunk`, plus the one that may straddle the end of `prev` (the
// previous chunk's tail) and the start of `chunk`: the edge is shorter than two needles, so any
// match in it straddles. Nothing is copied but the edge (a 64 KiB chunk was copied whole before).
function scan(prev, chunk, needle) {
  let n = count(chunk, needle, 0);
  const k = needle.length - 1;
  if (prev.length >= k && chunk.length >= k) {
    n += count(Buffer.concat([prev.subarray(prev.length - k), chunk.subarray(0, k)]), needle, 0);
  }
  return n;
}

// Open a WebSocket; `onData(chunk, tail)` gets what follows the handshake, and the previous
// chunk's last TAIL bytes (for markers cut between two chunks).
function open(url, onData) {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: u.hostname, port: Number(u.port) }, () => {
      sock.setNoDelay(true);
      sock.write(
        `GET ${u.pathname}${u.search} HTTP/1.1\r\nHost: ${u.host}\r\nUpgrade: websocket\r\n` +
          `Connection: Upgrade\r\nSec-WebSocket-Key: ${randomBytes(16).toString("base64")}\r\n` +
          "Sec-WebSocket-Version: 13\r\n\r\n",
      );
    });
    let head = Buffer.alloc(0);
    let tail = Buffer.alloc(0);
    sock.on("error", reject);
    sock.on("data", (chunk) => {
      if (head !== null) {
        head = Buffer.concat([head, chunk]);
        const end = head.indexOf("\r\n\r\n");
        if (end < 0) return;
        if (!head.subarray(0, 12).toString().startsWith("HTTP/1.1 101")) {
          reject(new Error(head.subarray(0, end).toString()));
          return;
        }
        chunk = head.subarray(end + 4);
        head = null;
        resolve(sock);
      }
      onData(chunk, tail);
      // a copy: a view would keep each socket's last 64 KiB chunk alive
      tail = Buffer.from(chunk.length >= TAIL ? chunk.subarray(chunk.length - TAIL) : Buffer.concat([tail, chunk]).subarray(-TAIL));
    });
  });
}

function textFrame(text) {
  const data = Buffer.from(text);
  const n = data.length;
  let header;
  if (n < 126) header = Buffer.from([0x81, 0x80 | n, 0, 0, 0, 0]);
  else if (n < 65536) header = Buffer.from([0x81, 0x80 | 126, n >> 8, n & 255, 0, 0, 0, 0]);
  else throw new Error("frame too large for the generator");
  return Buffer.concat([header, data]);
}

const state = { counting: false, delivered: 0, messages: 0, gaps: 0, samples: [], published: 0, acked: 0, errors: 0 };

function onSubscriberData(chunk, tail) {
  if (!state.counting) return;
  state.delivered += scan(tail, chunk, MARK);
  state.gaps += scan(tail, chunk, GAP);
  if (spec.rate) {
    const buf = Buffer.concat([tail, chunk]); // fixed-rate runs only: a sample may be cut
    const from = tail.length;
    const now = performance.now() * 1000;
    for (let at = buf.indexOf(T, from); at >= 0; at = buf.indexOf(T, at + 4)) {
      const end = buf.indexOf(44, at); // ','
      if (end < 0) break; // cut by the chunk's end: found again with the next chunk
      state.samples.push(now - Number(buf.toString("latin1", at + 4, end)));
    }
  }
}

function event(i, topic) {
  const body = { type: "bench_event", topic, payload: { i, t: Math.round(performance.now() * 1000), pad: spec.pad }, source: "bench" };
  const raw = JSON.stringify(body);
  if (spec.bare) return textFrame(raw);
  return textFrame(`{"action":"publish","ack":${spec.ack},"id":${i},"event":${raw}}`);
}

// Idle mode: `subscribers` connections, `concurrency` opening at a time, each counted once its
// welcome frame arrived; then holds them until stdin closes.
async function idle() {
  const WELCOME = Buffer.from('"action":"welcome"');
  const socks = [];
  const t0 = performance.now();
  let next = 0;
  async function opener() {
    while (next < spec.subscribers) {
      const url = subUrl(next++);
      let welcomed;
      const seen = new Promise((r) => { welcomed = r; });
      socks.push(await open(url, (buf) => { if (buf.indexOf(WELCOME) >= 0) welcomed(); }));
      await seen;
    }
  }
  await Promise.all(Array.from({ length: spec.concurrency }, opener));
  process.stdout.write(JSON.stringify({ phase: "connected", connected: socks.length, elapsed: (performance.now() - t0) / 1000 }) + "\n");
  process.stdin.resume();
  process.stdin.on("end", () => { for (const sock of socks) sock.destroy(); process.exit(0); });
}

async function main() {
  if (spec.idle) return idle();
  const subs = [];
  for (let i = 0; i < spec.subscribers; i++) subs.push(await open(subUrl(i), onSubscriberData));
  let inFlight = 0;
  let wake = null;
  const pub = await open(spec.pub_url, (chunk, tail) => {
    const acks = scan(tail, chunk, ACK);
    inFlight -= acks;
    if (state.counting) state.acked += acks;
    state.errors += scan(tail, chunk, ERROR);
    if (acks && wake) { const w = wake; wake = null; w(); }
  });
  const topics = spec.topics;
  const total = spec.rate ? Math.round(spec.rate * spec.seconds) : Infinity;
  let stop = false;
  let i = 0;
  let start = 0;

  async function publish() {
    start = performance.now();
    while (!stop && i < total) {
      if (spec.rate) {
        // timers fire to the millisecond; each event carries the time it was really sent
        const wait = start + (i * 1000) / spec.rate - performance.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      } else if (spec.ack && inFlight >= spec.in_flight) {
        await new Promise((r) => { wake = r; });
        continue;
      } else if (pub.writableLength > 256 * 1024) {
        await new Promise((r) => pub.once("drain", r));
        continue;
      }
      pub.write(event(i, topics[i % topics.length]));
      i++;
      if (spec.ack) inFlight++;
      if (state.counting) state.published++;
      if (!spec.rate && i % 64 === 0) await new Promise((r) => setImmediate(r));
    }
  }

  let cpu0, t0;
  const begin = () => {
    state.counting = true;
    process.stdout.write('{"phase":"counting"}\n');
    cpu0 = process.cpuUsage();
    t0 = performance.now();
  };
  if (spec.rate) {
    begin();
    await publish();
    const expected = total * spec.subscribers;
    const deadline = Date.now() + spec.grace * 1000;
    while (state.samples.length < expected && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
  } else {
    const publishing = publish();
    await new Promise((r) => setTimeout(r, spec.warmup * 1000));
    begin();
    await new Promise((r) => setTimeout(r, spec.seconds * 1000));
    stop = true;
    if (wake) wake();
    void publishing; // may wait on a socket the server no longer reads: not awaited
  }
  state.counting = false;
  stop = true;
  const elapsed = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const result = {
    elapsed,
    deliveries: state.delivered,
    gap_notices: state.gaps,
    published: state.published,
    acked: state.acked,
    errors: state.errors,
    loadgen_cpu: (cpu.user + cpu.system) / 1e6 / elapsed,
  };
  if (spec.rate) {
    const s = state.samples.sort((a, b) => a - b);
    const q = (p) => (s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))] / 1e3 : null);
    Object.assign(result, { expected: total * spec.subscribers, received: s.length, p50_ms: q(0.5), p99_ms: q(0.99), max_ms: s.length ? s[s.length - 1] / 1e3 : null });
  }
  process.stdout.write(JSON.stringify(result) + "\n");
  for (const sock of [...subs, pub]) sock.destroy();
  process.exit(0);
}

main().catch((err) => { process.stderr.write(String(err.stack || err) + "\n"); process.exit(1); });
