// The ipt_bus dashboard (docs/observability.md): plain JS, served from /ui/app.js.
"use strict";
const REFRESH_MS = 2000, HISTORY = 150, TAIL_ROWS = 300;
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("ipt_bus_token") || "";
let paused = false, socket = null, lastSeq = null, previousCounts = new Map();
const rates = [];

function headers() { return token ? { "Authorization": "Bearer " + token } : {}; }

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (response.status === 401) { needToken(); throw new Error("a token is needed"); }
  if (response.status === 204) return null;
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.code + ": " + body.error.message : response.status);
  return body;
}

function needToken() { $("auth").classList.remove("hidden"); setStatus("this bus requires a token", true); }
function setStatus(text, bad) { const s = $("status"); s.textContent = text; s.className = "status " + (bad ? "bad" : "ok"); }
function text(cell, value) { cell.textContent = value; return cell; }
function compact(n) { return n >= 1e6 ? (n / 1e6).toFixed(1) + "M" : n >= 1e4 ? (n / 1e3).toFixed(1) + "k" : String(n); }

// --- wildcards, as the bus has them: `*` one segment, a final `**` any number (zero included)
function matches(pattern, topic) {
  if (!pattern) return true;
  return pattern.split(",").map((p) => p.trim()).filter(Boolean).some((p) => {
    const want = p.split("."), have = topic.split(".");
    for (let i = 0; i < want.length; i++) {
      if (want[i] === "**" && i === want.length - 1) return true;
      if (i >= have.length || (want[i] !== "*" && want[i] !== have[i])) return false;
    }
    return want.length === have.length;
  });
}

// --- tiles, chart, tables -----------------------------------------------------------------
async function refresh() {
  try {
    const stats = await api("/stats");
    $("meta").textContent = `${stats.log.storage} log · epoch ${stats.log.epoch} · up ${Math.round(stats.uptime_seconds)} s`;
    $("tile-rate").textContent = stats.events_per_second.last_10s.toFixed(1);
    $("tile-connections").textContent = stats.active_connections;
    $("tile-p99").textContent = stats.latency_ms.p99 === null ? "–" : stats.latency_ms.p99.toFixed(1);
    $("tile-dropped").textContent = compact(stats.events_dropped.total);
    $("tile-log").textContent = compact(stats.log.events);
    $("tile-dlq").textContent = compact(stats.dead_letters.size);
    rates.push(stats.events_per_second.last_10s);
    if (rates.length > HISTORY) rates.shift();
    draw();
    setStatus("live", false);
  } catch (error) { setStatus(String(error.message || error), true); return; }
  await Promise.all([topics(), deadLetters(), connections()]);
}

function draw() {
  const canvas = $("chart"), ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, top = Math.max(1, ...rates) * 1.15;
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#e3e6ec"; ctx.fillStyle = "#6b7385"; ctx.font = "12px system-ui";
  for (let i = 0; i <= 4; i++) {
    const y = h - (h - 10) * i / 4 - 1;
    ctx.beginPath(); ctx.moveTo(40, y); ctx.lineTo(w, y); ctx.stroke();
    ctx.fillText(compact(Math.round(top * i / 4)), 2, y - 2);
  }
  ctx.strokeStyle = "#2f6fde"; ctx.lineWidth = 2; ctx.beginPath();
  rates.forEach((r, i) => {
    const x = 40 + (w - 40) * (i + HISTORY - rates.length) / (HISTORY - 1);
    const y = h - 1 - (h - 10) * r / top;
    i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
  });
  ctx.stroke(); ctx.lineWidth = 1;
}

async function topics() {
  const body = await api("/topics").catch(() => null);
  if (!body) return;
  const tbody = $("topics").tBodies[0], rows = [];
  for (const t of body.topics.sort((a, b) => b.count - a.count)) {
    const before = previousCounts.get(t.topic);
    const rate = before === undefined ? 0 : (t.count - before) / (REFRESH_MS / 1000);
    previousCounts.set(t.topic, t.count);
    const tr = document.createElement("tr");
    text(tr.insertCell(), t.topic).title = t.description || "";
    text(tr.insertCell(), compact(t.count)).className = "num";
    text(tr.insertCell(), rate.toFixed(1)).className = "num";
    text(tr.insertCell(), t.last_seen ? t.last_seen.slice(11, 19) : "–");
    text(tr.insertCell(), t.subscribers).className = "num";
    rows.push(tr);
  }
  tbody.replaceChildren(...rows);
}

async function deadLetters() {
  let body;
  try { body = await api("/dlq?limit=100"); }
  catch (error) { $("dlq-count").textContent = String(error.message || error); return; }
  const rows = body.dead_letters.map((letter) => {
    const tr = document.createElement("tr");
    tr.dataset.id = letter.id;
    text(tr.insertCell(), letter.id).className = "num";
    text(tr.insertCell(), letter.source);
    text(tr.insertCell(), letter.error.code + ": " + letter.error.message).title = letter.raw;
    text(tr.insertCell(), letter.attempts).className = "num";
    const actions = tr.insertCell();
    const retry = document.createElement("button"), drop = document.createElement("button");
    retry.textContent = "Retry"; retry.className = "retry";
    drop.textContent = "Delete"; drop.className = "delete";
    retry.onclick = () => act(`/dlq/${letter.id}/retry`, "POST");
    drop.onclick = () => act(`/dlq/${letter.id}`, "DELETE");
    actions.append(retry, " ", drop);
    return tr;
  });
  $("dlq").tBodies[0].replaceChildren(...rows);
  $("dlq-count").textContent = body.total ? `(${body.total})` : "(none)";
}

async function act(path, method) {
  try {
    await api(path, { method, headers: { "Content-Type": "application/json" }, body: method === "POST" ? "{}" : undefined });
    $("dlq-status").textContent = method === "POST" ? "published again" : "deleted";
  } catch (error) { $("dlq-status").textContent = String(error.message || error); }
  await deadLetters();
}

async function connections() {
  let body;
  try { body = await api("/connections?limit=100"); $("conn-status").textContent = ""; }
  catch (error) { $("conn-status").textContent = String(error.message || error); return; }
  const rows = body.connections.map((c) => {
    const tr = document.createElement("tr");
    text(tr.insertCell(), c.id).className = "num";
    text(tr.insertCell(), (c.sub ? c.sub + " @ " : "") + (c.remote || "–"));
    text(tr.insertCell(), c.subscriptions.join(", ")).title = c.subscriptions.join("\n");
    text(tr.insertCell(), compact(c.delivered)).className = "num";
    text(tr.insertCell(), c.outbox.events).className = "num";
    text(tr.insertCell(), c.state);
    return tr;
  });
  $("connections").tBodies[0].replaceChildren(...rows);
  $("conn-status").textContent = `${body.total} open`;
}

// --- the live tail --------------------------------------------------------------------------
function connect() {
  const query = new URLSearchParams({ batch: "1" });
  if (token) query.set("token", token);
  if (lastSeq !== null) query.set("since", lastSeq);
  socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws?${query}`);
  socket.onopen = () => { $("tail-status").textContent = "connected"; };
  socket.onmessage = (message) => {
    for (const line of message.data.split("\n")) {
      if (!line) continue;
      const frame = JSON.parse(line);
      if (frame.action === undefined) show(frame);
      else if (frame.action === "gap") $("tail-status").textContent = `gap: ${frame.from_seq}..${frame.to_seq ?? ""} (${frame.reason})`;
    }
  };
  socket.onclose = (event) => {
    $("tail-status").textContent = `disconnected (${event.code}); reconnecting`;
    if (event.code === 4001 || event.code === 1008) needToken();
    setTimeout(connect, 2000);
  };
}

function show(event) {
  lastSeq = event.seq;
  if (paused) return;
  const row = document.createElement("div");
  row.className = "event";
  row.dataset.topic = event.topic;
  const seq = document.createElement("span"), topic = document.createElement("span"), kind = document.createElement("span");
  seq.className = "seq"; seq.textContent = event.seq;
  topic.className = "topic"; topic.textContent = event.topic;
  kind.textContent = event.type + " " + JSON.stringify(event.payload).slice(0, 160);
  row.append(seq, topic, kind);
  row.onclick = () => {
    const open = row.querySelector("pre");
    if (open) { open.remove(); return; }
    const pre = document.createElement("pre");
    pre.textContent = JSON.stringify(event, null, 2);
    row.append(pre);
  };
  if (!matches($("filter").value.trim(), event.topic)) row.classList.add("hidden");
  const tail = $("tail");
  tail.prepend(row);
  while (tail.childElementCount > TAIL_ROWS) tail.lastElementChild.remove();
}

$("filter").addEventListener("input", () => {
  const pattern = $("filter").value.trim();
  for (const row of $("tail").children) row.classList.toggle("hidden", !matches(pattern, row.dataset.topic));
});
$("pause").onclick = () => { paused = !paused; $("pause").textContent = paused ? "Resume" : "Pause"; };
$("clear").onclick = () => $("tail").replaceChildren();
$("token-save").onclick = () => {
  token = $("token").value.trim();
  sessionStorage.setItem("ipt_bus_token", token);
  $("auth").classList.add("hidden");
  if (socket) socket.close();
  refresh();
};

connect();
refresh();
setInterval(refresh, REFRESH_MS);
