// exo dashboard. The node pushes the state in sections (GET /events?view=sections): all of
// them first, then those that changed. The page keeps the latest of each and redraws; it
// never polls. Every action is a call to the same API a script would make, with the
// node's API key when it has one.

const view = { sections: {}, header: {}, seenNodes: new Map(), counters: new Map() };
const $ = (id) => document.getElementById(id);

// --- small DOM helpers: text always goes in as text, never as markup ---------------------
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}
const svg = (tag, attrs = {}, ...children) => {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  for (const child of children) el.append(child instanceof Node ? child : String(child));
  return el;
};
const status = (word) => h("span", { class: `status status-${word}` }, word);
const short = (id) => (id ? String(id).replace(/^(node|inst)-/, "").slice(0, 8) : "–");

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${n.toFixed(n >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
}
function duration(seconds) {
  if (!Number.isFinite(seconds)) return "–";
  if (seconds < 60) return `${Math.ceil(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}
function bits(bps) {
  if (!bps) return "";
  return bps >= 1e9 ? `${(bps / 1e9).toFixed(1)} Gbit/s` : `${(bps / 1e6).toFixed(0)} Mbit/s`;
}

function showError(message) {
  const el = $("error");
  el.textContent = message;
  el.hidden = !message;
}

// --- the API key (asked for only when the node has keys: its first 401) ---------------------
// Kept in localStorage and sent as `Authorization: Bearer` on every call, the event stream
// included: that is why the stream is read with fetch, as EventSource sends no headers.
const KEY_STORE = "exo-api-key";
let keyEntered = null; // while the key form is up: resolves when a key is entered
let keyGiven = () => {};

function withKey(init = {}) {
  const key = localStorage.getItem(KEY_STORE);
  return key ? { ...init, headers: { ...init.headers, Authorization: `Bearer ${key}` } } : init;
}
// Shows the key form (a stored key was refused: it is dropped) until a key is entered.
function askForKey() {
  if (!keyEntered) {
    const refused = localStorage.getItem(KEY_STORE) !== null;
    localStorage.removeItem(KEY_STORE);
    $("key-message").textContent = refused
      ? "The node refused the stored API key. Enter its key:"
      : "This node asks for an API key (exo node --api-key). Enter it:";
    $("key-card").hidden = false;
    $("connection").dataset.state = "locked";
    $("connection").textContent = "API key needed";
    keyEntered = new Promise((resolve) => { keyGiven = resolve; });
    $("key-input").focus();
  }
  return keyEntered;
}
function useKey(event) {
  event.preventDefault();
  const key = $("key-input").value.trim();
  if (!key) return;
  localStorage.setItem(KEY_STORE, key);
  $("key-input").value = "";
  $("key-card").hidden = true;
  keyEntered = null;
  keyGiven();
}
// fetch with the key; on a 401, asks for a key and tries again with it.
async function call(path, init = {}) {
  for (;;) {
    const sent = localStorage.getItem(KEY_STORE);
    const reply = await fetch(path, withKey(init));
    if (reply.status !== 401) return reply;
    // A key entered while this was on its way is tried before asking again.
    if (localStorage.getItem(KEY_STORE) === sent) await askForKey();
  }
}

async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const reply = await call(path, init);
  const text = await reply.text();
  const data = text ? JSON.parse(text) : null;
  if (!reply.ok) {
    const message = data?.error?.message ?? `${method} ${path}: HTTP ${reply.status}`;
    throw new Error(message);
  }
  return data;
}
const act = (work) => async (event) => {
  event?.preventDefault?.();
  try { showError(""); await work(event); } catch (error) { showError(error.message); }
};

// --- the live stream ---------------------------------------------------------------------
// Read with fetch (it carries the key), and followed again after a failure as EventSource
// would, waiting 1 s, doubling to 30 s, back to 1 s once sections arrive.
const RETRY_FIRST_MS = 1000;
const RETRY_MOST_MS = 30000;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function showSections(update) {
  Object.assign(view.sections, update.sections);
  view.header = { node: update.node_id, master: update.master, term: update.term, index: update.index };
  $("connection").dataset.state = "live";
  $("connection").textContent = "live";
  noteCounters(performance.now());
  render();
}
async function follow() {
  let wait = RETRY_FIRST_MS;
  for (;;) {
    try {
      const reply = await call("/events?view=sections", { headers: { Accept: "text/event-stream" } });
      if (reply.ok) {
        for await (const { event, data } of serverSentEvents(reply.body)) {
          if (event !== "sections") continue;
          showSections(JSON.parse(data));
          wait = RETRY_FIRST_MS;
        }
      }
    } catch {
      // The node went away mid-stream, or could not be reached: try again below.
    }
    // The node sends every section again on the next connection.
    $("connection").dataset.state = "lost";
    $("connection").textContent = "reconnecting";
    await sleep(wait);
    wait = Math.min(wait * 2, RETRY_MOST_MS);
  }
}

// Tokens per second per instance: the tokens its counters (cumulative, reported by the
// nodes about once a second) gained over the last RATE_WINDOW_MS, over that window.
const RATE_WINDOW_MS = 5000;
function noteCounters(now) {
  const counters = view.sections.request_counters ?? {};
  for (const id of Object.keys(view.sections.instances ?? {})) {
    const tokens = counters[id]?.completion_tokens ?? 0;
    const samples = view.counters.get(id) ?? [];
    if (!samples.length || samples[samples.length - 1].tokens !== tokens) samples.push({ at: now, tokens });
    view.counters.set(id, samples);
  }
}
function tokensPerSecond(id, now) {
  const samples = view.counters.get(id) ?? [];
  // Keep one sample from before the window: the count the window's tokens add to.
  while (samples.length > 1 && now - samples[1].at > RATE_WINDOW_MS) samples.shift();
  if (samples.length < 2) return 0;
  const gained = samples[samples.length - 1].tokens - samples[0].tokens;
  return (gained * 1000) / RATE_WINDOW_MS;
}

// --- rendering ---------------------------------------------------------------------------
function render() {
  const { header } = view;
  $("this-node").textContent = short(header.node);
  $("this-node").title = header.node ?? "";
  $("master").textContent = short(header.master);
  $("master").title = header.master ?? "";
  $("term").textContent = header.term ?? "–";
  $("index").textContent = header.index ?? "–";
  rememberNodes();
  renderTopology();
  renderNodes();
  renderInstances();
  renderDownloads();
  renderModelChoices();
}

// Nodes the page has seen stay listed, marked down, when the cluster drops them.
function rememberNodes() {
  const nodes = view.sections.nodes ?? {};
  for (const [id, profile] of Object.entries(nodes)) view.seenNodes.set(id, profile);
  for (const instance of Object.values(view.sections.instances ?? {})) {
    for (const shard of instance.shards) {
      if (!view.seenNodes.has(shard.node_id)) view.seenNodes.set(shard.node_id, null);
    }
  }
}
const isUp = (id) => id in (view.sections.nodes ?? {});
const nodeIds = () => [...view.seenNodes.keys()].sort();

function renderTopology() {
  const area = $("topology");
  const ids = nodeIds();
  const [cx, cy, radius] = [300, 170, ids.length > 1 ? 120 : 0];
  const at = new Map(ids.map((id, i) => {
    const angle = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(ids.length, 1);
    return [id, [cx + radius * Math.cos(angle), cy + radius * Math.sin(angle)]];
  }));
  const links = view.sections.links ?? {};
  const drawn = [];
  for (const a of ids) {
    for (const b of ids) {
      if (a >= b || !isUp(a) || !isUp(b)) continue; // a down node's last measurements are stale
      const there = links[a]?.[b];
      const back = links[b]?.[a];
      if (!there && !back) continue;
      const [[x1, y1], [x2, y2]] = [at.get(a), at.get(b)];
      const latency = [there, back].filter(Boolean).map((s) => s.latency_us);
      const bandwidth = [there, back].map((s) => s?.bandwidth_bps).filter(Boolean);
      const label = `${(Math.min(...latency) / 1000).toFixed(2)} ms ${bits(bandwidth.length ? Math.min(...bandwidth) : 0)}`;
      drawn.push(
        svg("line", { class: "link", x1, y1, x2, y2, "data-link": `${a}|${b}` }),
        linkLabel(x1, y1, x2, y2, label.trim()),
      );
    }
  }
  for (const id of ids) {
    const [x, y] = at.get(id);
    const profile = view.seenNodes.get(id);
    const classes = ["node", id === view.header.master ? "master" : "", isUp(id) ? "up" : "down"];
    drawn.push(svg("g", { class: classes.join(" ").trim(), "data-node": id },
      svg("circle", { cx: x, cy: y, r: 30 }),
      svg("text", { x, y: y - 2 }, short(id)),
      svg("text", { x, y: y + 11 }, isUp(id) ? (id === view.header.master ? "master" : profile?.accelerator ?? "") : "down"),
      svg("title", {}, `${id}${profile ? ` (${profile.hostname})` : ""}`),
    ));
  }
  area.replaceChildren(...drawn);
}

// A label along its link (turned to read left to right), just above the line.
function linkLabel(x1, y1, x2, y2, text) {
  let angle = (Math.atan2(y2 - y1, x2 - x1) * 180) / Math.PI;
  if (angle > 90) angle -= 180;
  if (angle < -90) angle += 180;
  const [x, y] = [(x1 + x2) / 2, (y1 + y2) / 2];
  return svg("text", { class: "link-label", x, y: y - 4, transform: `rotate(${angle.toFixed(1)} ${x} ${y})` }, text);
}

function runnersOn(nodeId) {
  const out = [];
  for (const [instanceId, perNode] of Object.entries(view.sections.runners ?? {})) {
    const runner = perNode[nodeId];
    if (runner) out.push(h("div", { title: runner.detail }, `${short(instanceId)} `, status(runner.phase)));
  }
  return out.length ? out : "–";
}

function renderNodes() {
  const rows = nodeIds().map((id) => {
    const p = view.seenNodes.get(id);
    const up = isUp(id);
    const used = p ? p.memory_total - p.memory_available : 0;
    return h("tr", { "data-node": id, "data-state": up ? "up" : "down" },
      h("td", { class: "mono", title: id }, short(id), id === view.header.master ? " ★" : ""),
      h("td", {}, p?.hostname ?? "–"),
      h("td", {}, status(up ? "up" : "down")),
      h("td", {}, p ? `${p.accelerator}${p.worker ? "" : " (coordinator only)"}` : "–"),
      h("td", { class: "num" }, p?.cpu_cores ?? "–"),
      h("td", { class: "num" }, p ? [h("span", { class: "bar" }, h("span", { style: `width:${(100 * used) / p.memory_total}%` })), `${bytes(used)} / ${bytes(p.memory_total)}`] : "–"),
      h("td", {}, runnersOn(id)),
    );
  });
  $("nodes").tBodies[0].replaceChildren(...rows);
}

function inFlight(instanceId) {
  let total = 0;
  for (const perInstance of Object.values(view.sections.in_flight ?? {})) total += perInstance[instanceId] ?? 0;
  return total;
}

function renderInstances() {
  const now = performance.now();
  const instances = Object.values(view.sections.instances ?? {});
  const rows = instances.map((instance) => {
    const serving = view.sections.serving?.[instance.id];
    const queued = serving ? Math.max(0, serving.in_flight - serving.batch_size) : null;
    const shards = instance.shards.map((s) => `${short(s.node_id)}: ${s.start_layer}–${s.end_layer - 1}`).join(", ");
    return h("tr", { "data-instance": instance.id, "data-status": instance.status },
      h("td", { class: "mono", title: instance.id }, short(instance.id)),
      h("td", {}, instance.model),
      h("td", {}, instance.strategy),
      h("td", { class: "mono" }, shards),
      h("td", {}, status(instance.status)),
      h("td", { class: "num tps" }, tokensPerSecond(instance.id, now).toFixed(1)),
      h("td", { class: "num" }, inFlight(instance.id)),
      h("td", { class: "num", title: serving ? `batch of ${serving.batch_size}` : "known on the node running rank 0" }, queued ?? "–"),
      h("td", {}, h("button", { class: "danger", onclick: act(() => api("DELETE", `/instances/${encodeURIComponent(instance.id)}`)) }, "Delete")),
    );
  });
  $("instances").tBodies[0].replaceChildren(...rows);
  $("no-instances").hidden = rows.length > 0;
}

function renderDownloads() {
  const rows = [];
  for (const [nodeId, perModel] of Object.entries(view.sections.downloads ?? {}).sort()) {
    for (const [model, d] of Object.entries(perModel).sort()) {
      const fraction = d.bytes_total ? d.bytes_done / d.bytes_total : 0;
      const eta = d.phase === "downloading" && d.rate ? (d.bytes_total - d.bytes_done) / d.rate : NaN;
      const target = { model, node: nodeId };
      const control = d.phase === "downloading" || d.phase === "pending"
        ? h("button", { onclick: act(() => api("DELETE", `/downloads?${new URLSearchParams(target)}`)) }, "Stop")
        : d.phase !== "complete"
          ? h("button", { onclick: act(() => api("POST", "/downloads", target)) }, "Start")
          : null;
      rows.push(h("tr", { "data-download": `${nodeId}|${model}`, "data-phase": d.phase, "data-bytes": d.bytes_done },
        h("td", { class: "mono", title: nodeId }, short(nodeId)),
        h("td", {}, model),
        h("td", { title: d.detail }, status(d.phase)),
        h("td", { class: "num" }, h("span", { class: "bar" }, h("span", { style: `width:${100 * fraction}%` })), `${bytes(d.bytes_done)} / ${bytes(d.bytes_total)}`),
        h("td", { class: "num" }, d.phase === "downloading" && d.rate ? `${bytes(d.rate)}/s` : "–"),
        h("td", { class: "num" }, duration(eta)),
        h("td", {}, control),
      ));
    }
  }
  $("downloads").tBodies[0].replaceChildren(...rows);
}

function renderModelChoices() {
  const models = view.sections.models ?? [];
  const names = models.map((m) => m.id);
  const list = $("model-names");
  if (list.dataset.names !== names.join("\n")) {
    list.dataset.names = names.join("\n");
    list.replaceChildren(...names.map((name) => h("option", { value: name })));
    const downloadable = models.filter((m) => m.card).map((m) => m.id);
    keepChoice($("download-model"), downloadable);
  }
  const workers = Object.entries(view.sections.nodes ?? {}).filter(([, p]) => p.worker).map(([id]) => id).sort();
  keepChoice($("download-node"), workers, short);
}

function keepChoice(select, values, label = (v) => v) {
  if (select.dataset.values === values.join("\n")) return;
  const chosen = select.value;
  select.dataset.values = values.join("\n");
  select.replaceChildren(...values.map((v) => h("option", { value: v, selected: v === chosen }, label(v))));
}

// --- placement ---------------------------------------------------------------------------
async function preview() {
  const model = $("preview-model").value.trim();
  const context = $("preview-context").value;
  const query = new URLSearchParams({ model });
  if (context) query.set("context_length", context);
  const previews = await api("GET", `/instances/previews?${query}`);
  const rows = previews.map((p) => {
    const nodes = p.shards.map((s) => s.node_id);
    const memory = Object.entries(p.memory_by_node).map(([n, b]) => `${short(n)}: ${bytes(b)}`).join(", ");
    const launch = async () => {
      const body = { model, strategy: p.strategy, nodes, min_nodes: nodes.length };
      if (context) body.context_length = Number(context);
      await api("POST", "/instances", body);
    };
    return h("tr", { "data-preview": `${p.strategy}|${p.node_count}`, "data-valid": String(p.valid) },
      h("td", {}, p.strategy),
      h("td", { class: "num" }, p.node_count),
      h("td", { class: "mono" }, p.shards.map((s) => `${short(s.node_id)}: ${s.start_layer}–${s.end_layer - 1}`).join(", ")),
      h("td", { class: "num" }, memory || "–"),
      h("td", { class: "num" }, p.predicted_tokens_per_second ? p.predicted_tokens_per_second.toFixed(1) : "–"),
      h("td", {}, p.valid ? status("valid") : h("span", {}, status("invalid"), ` ${p.reason}`)),
      h("td", {}, p.valid ? h("button", { onclick: act(launch) }, "Launch") : null),
    );
  });
  $("previews").tBodies[0].replaceChildren(...rows);
}

// --- chat --------------------------------------------------------------------------------
const conversation = [];
let stopChat = null;

async function send() {
  const model = $("chat-model").value.trim();
  const text = $("chat-input").value;
  if (!model || !text.trim()) return;
  $("chat-input").value = "";
  conversation.push({ role: "user", content: text });
  const transcript = $("transcript");
  transcript.append(h("li", { class: "user" }, text));
  const answer = h("span", { class: "content" });
  const stats = h("span", { class: "stats" }, "waiting for the first token…");
  const item = h("li", { class: "assistant" }, answer, stats);
  transcript.append(item);

  const abort = new AbortController();
  stopChat = abort;
  $("chat-send").disabled = true;
  $("chat-stop").disabled = false;
  const started = performance.now();
  let first = null;
  let pieces = 0;
  let usage = null;
  try {
    const reply = await call("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model, messages: conversation, stream: true, stream_options: { include_usage: true } }),
      signal: abort.signal,
    });
    if (!reply.ok) throw new Error((await reply.json()).error?.message ?? `HTTP ${reply.status}`);
    for await (const { data } of serverSentEvents(reply.body)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.usage) usage = chunk.usage;
      const delta = chunk.choices?.[0]?.delta?.content;
      if (delta) {
        first ??= performance.now();
        pieces += 1;
        answer.append(delta);
        stats.textContent = replyStats(started, first, performance.now(), pieces, usage);
      }
    }
    conversation.push({ role: "assistant", content: answer.textContent });
    item.dataset.done = "true";
  } catch (error) {
    if (error.name !== "AbortError") stats.textContent = `failed: ${error.message}`;
    conversation.pop();
    item.dataset.done = "failed";
  } finally {
    if (first !== null) stats.textContent = replyStats(started, first, performance.now(), pieces, usage);
    stopChat = null;
    $("chat-send").disabled = false;
    $("chat-stop").disabled = true;
  }
}

function replyStats(started, first, now, pieces, usage) {
  const tokens = usage?.completion_tokens ?? pieces;
  const rate = tokens > 1 && now > first ? ((tokens - 1) * 1000) / (now - first) : 0;
  return `TTFT ${((first - started) / 1000).toFixed(2)} s · ${rate.toFixed(1)} tok/s · ${tokens} tokens`;
}

// The events of a server-sent event stream read with fetch, as `{ event, data }` (EventSource
// can neither POST nor send a key). Comments (keep-alives) are skipped.
async function* serverSentEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        else if (line.startsWith("event:")) event = line.slice(6).trim();
      }
      if (data.length) yield { event, data: data.join("\n") };
    }
  }
}

// --- wiring ------------------------------------------------------------------------------
$("key-form").addEventListener("submit", useKey);
$("preview-form").addEventListener("submit", act(preview));
$("chat-form").addEventListener("submit", act(send));
$("chat-input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("chat-form").requestSubmit(); }
});
$("chat-stop").addEventListener("click", () => stopChat?.abort());
$("chat-clear").addEventListener("click", () => { conversation.length = 0; $("transcript").replaceChildren(); });
$("download-form").addEventListener("submit", act(() =>
  api("POST", "/downloads", { model: $("download-model").value, node: $("download-node").value })));
// Rates fall to zero when the counters stop moving; redraw them on the page's own clock.
setInterval(() => {
  const now = performance.now();
  for (const row of $("instances").tBodies[0].rows) {
    row.querySelector(".tps").textContent = tokensPerSecond(row.dataset.instance, now).toFixed(1);
  }
}, 1000);
follow();
