// meter-gateway web pages: a small hand-written client of the JSON/SSE API (docs/http.md). No external assets.
// Every value from the gateway goes into the page with textContent, never as HTML.
"use strict";

const App = { session: null, sources: [], timers: [], view: null };

// ---------- helpers ----------
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function svgEl(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function loginUrl() {
  return "/ui/login.html?next=" + encodeURIComponent(location.pathname + location.hash);
}

class HttpError extends Error {
  constructor(status, text) { super(text || "HTTP " + status); this.status = status; }
}

async function api(path, opts) {
  opts = opts || {};
  const headers = { Accept: "application/json", ...(opts.headers || {}) };
  const init = { method: opts.method || "GET", credentials: "same-origin", headers };
  if (opts.body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(opts.body);
  }
  if (init.method !== "GET" && App.session && App.session.csrf) headers["X-CSRF-Token"] = App.session.csrf;
  const resp = await fetch(path, init);
  if (resp.status === 401) {
    location.assign(loginUrl());
    throw new HttpError(401, "not signed in");
  }
  const ct = resp.headers.get("Content-Type") || "";
  const data = ct.includes("json") ? await resp.json().catch(() => null) : await resp.text();
  if (!resp.ok) {
    const text = data && typeof data === "object" ? (data.error || data.message || data.reason || JSON.stringify(data)) : data;
    throw new HttpError(resp.status, String(text || "HTTP " + resp.status).trim());
  }
  return data;
}

function fmtValue(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "boolean") return v ? "1 (on)" : "0 (off)";
  if (typeof v === "number") {
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    return v.toFixed(a >= 1000 ? 1 : a >= 10 ? 2 : 3);
  }
  return String(v);
}

function fmtAge(s) {
  if (s === null || s === undefined || !isFinite(s)) return "—";
  s = Math.max(0, s);
  if (s < 60) return Math.round(s) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
}

function fmtTime(t) {
  if (t === null || t === undefined || t === "") return "never";
  const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
  if (isNaN(d)) return String(t);
  return d.toLocaleString([], { hour12: false });
}

function fmtClock(t) {
  const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
  if (isNaN(d)) return String(t);
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

const QUALITY_TEXT = {
  good: "good", stale: "stale", "comm-failure": "comm failure", "bad-data": "bad data",
  unsupported: "unsupported", "wrong-device": "wrong device", unknown: "unknown",
};

function badge(kind, value, title) {
  const v = String(value === undefined || value === null || value === "" ? "unknown" : value);
  const cls = (kind === "q" ? "q-" : "st-") + v.toLowerCase().replace(/[^a-z0-9-]+/g, "-");
  const text = kind === "q" ? (QUALITY_TEXT[v] || v) : v.replace(/[_-]+/g, " ");
  return el("span", { class: "badge " + cls, title: title || null, "data-value": v }, text);
}

// A meter's communication state (ok / starting / failed from the gateway) as colour and text.
const COMM = { ok: ["q-good", "ok"], good: ["q-good", "ok"], failed: ["q-comm-failure", "comm failure"],
  "comm-failure": ["q-comm-failure", "comm failure"], starting: ["q-unknown", "starting"] };
function commBadge(v, reason) {
  const [cls, text] = COMM[v] || ["q-unknown", String(v || "unknown")];
  return el("span", { class: "badge " + cls, title: reason || null, "data-value": String(v || "") }, text);
}

function busyBar(frac) {
  const f = typeof frac === "number" && isFinite(frac) ? Math.max(0, Math.min(1, frac)) : null;
  const pct = f === null ? "—" : Math.round(f * 100) + " %";
  const bar = el("span", {
    class: "bar" + (f !== null && f > 0.9 ? " full" : f !== null && f > 0.7 ? " hot" : ""),
    role: "meter", "aria-valuemin": "0", "aria-valuemax": "100",
    "aria-valuenow": f === null ? null : String(Math.round(f * 100)), "aria-label": "bus busy fraction",
  }, el("span", { style: "width:" + (f === null ? 0 : f * 100).toFixed(1) + "%" }));
  return el("span", {}, bar, el("span", { class: "bar-label" }, pct));
}

function asList(data, key) {
  if (Array.isArray(data)) return data;
  if (data && Array.isArray(data[key])) return data[key];
  return [];
}

function message(kind, text) {
  return el("div", { class: "msg " + kind, role: kind === "err" ? "alert" : "status" }, text);
}

function liveIndicator() {
  return el("span", { class: "live", "data-state": "connecting", id: "live" }, "connecting…");
}

function setLive(state) {
  const l = document.getElementById("live");
  if (!l) return;
  l.dataset.state = state;
  l.textContent = state === "live" ? "● live" : state === "lost" ? "● connection lost, retrying" : "connecting…";
}

// An SSE subscription: calls onData(parsed JSON) for every event, whatever its name, until the view changes.
function subscribe(url, onData, eventNames) {
  const es = new EventSource(url, { withCredentials: true });
  App.sources.push(es);
  const handler = (ev) => {
    setLive("live");
    if (!ev.data) return;
    let d;
    try { d = JSON.parse(ev.data); } catch (e) { return; }
    onData(d, ev.type);
  };
  for (const name of ["message", ...(eventNames || [])]) es.addEventListener(name, handler);
  es.addEventListener("heartbeat", () => setLive("live"));
  es.onopen = () => setLive("live");
  es.onerror = () => {
    setLive("lost");
    if (es.readyState === EventSource.CLOSED) {
      // the server refused the stream (session expired?): check the session, then retry
      setTimeout(async () => {
        if (!App.sources.includes(es)) return;
        try { await api("/api/session"); } catch (e) { return; }
        App.sources = App.sources.filter((s) => s !== es);
        if (App.view) subscribe(url, onData, eventNames);
      }, 3000);
    }
  };
  return es;
}

function every(ms, fn) { App.timers.push(setInterval(fn, ms)); }

function teardown() {
  for (const s of App.sources) s.close();
  App.sources = [];
  for (const t of App.timers) clearInterval(t);
  App.timers = [];
}

function mergeById(list, updates, key) {
  const byId = new Map(list.map((x) => [x[key], x]));
  for (const u of updates) {
    if (!u || u[key] === undefined) continue;
    const old = byId.get(u[key]);
    if (old) Object.assign(old, u);
    else { list.push(u); byId.set(u[key], u); }
  }
}

function hasRole(role) {
  const order = { viewer: 0, operator: 1, admin: 2 };
  return App.session && (order[App.session.role] ?? -1) >= order[role];
}

// ---------- overview ----------
async function viewOverview(main) {
  const data = await api("/api/overview");
  const state = { buses: asList(data, "buses"), meters: asList(data, "meters"), gateway: data.gateway || {} };
  const gwState = el("span", {});
  const busBody = el("tbody");
  const meterBody = el("tbody");
  main.append(
    el("h1", {}, "Overview ", gwState, " ", liveIndicator()),
    el("h2", { id: "buses-h" }, "Buses"),
    el("table", { id: "buses", "aria-labelledby": "buses-h" },
      el("thead", {}, el("tr", {}, ["Bus", "Protocol", "State", "Transactions", "Errors", "Busy"].map((h) => el("th", { scope: "col" }, h)))),
      busBody),
    el("h2", { id: "meters-h" }, "Meters"),
    el("table", { id: "meters", "aria-labelledby": "meters-h" },
      el("thead", {}, el("tr", {}, ["Meter", "Name", "Bus", "Profile", "Communication", "Last good read", "Alarms"].map((h) => el("th", { scope: "col" }, h)))),
      meterBody),
  );
  const render = () => {
    const g = state.gateway;
    if (g.name) document.getElementById("gwname").textContent = g.name;
    gwState.replaceChildren(g.state ? badge("st", g.state) : "");
    busBody.replaceChildren(...state.buses.map((b) => el("tr", { "data-bus": b.id },
      el("td", {}, el("a", { href: "#/bus/" + encodeURIComponent(b.id) }, b.id)),
      el("td", {}, b.protocol || b.type || ""),
      el("td", { class: "state" }, badge("st", b.state)),
      el("td", { class: "num tx" }, fmtValue(b.transactions)),
      el("td", { class: "num errors" }, fmtValue(b.errors)),
      el("td", { class: "busy" }, busyBar(b.busy_fraction)),
    )));
    meterBody.replaceChildren(...state.meters.map((m) => {
      const alarms = Array.isArray(m.alarms) ? m.alarms : [];
      return el("tr", { "data-meter": m.id },
        el("td", {}, el("a", { href: "#/meter/" + encodeURIComponent(m.id) }, m.id)),
        el("td", {}, m.name || ""),
        el("td", {}, m.bus ? el("a", { href: "#/bus/" + encodeURIComponent(m.bus) }, m.bus) : ""),
        el("td", {}, m.profile || ""),
        el("td", { class: "comm" }, commBadge(m.comm, m.comm_reason), m.comm_reason && m.comm !== "ok" ? el("span", { class: "muted" }, " " + m.comm_reason) : ""),
        el("td", { class: "lastgood" }, fmtTime(m.last_good_read)),
        el("td", { class: "alarms" }, alarms.length
          ? alarms.map((a) => el("span", { class: "badge q-stale" }, typeof a === "string" ? a : (a.name || JSON.stringify(a))))
          : el("span", { class: "muted" }, "none")),
      );
    }));
  };
  render();
  subscribe("/api/stream?topic=overview", (d) => {
    if (Array.isArray(d.buses)) mergeById(state.buses, d.buses, "id");
    if (Array.isArray(d.meters)) mergeById(state.meters, d.meters, "id");
    if (d.gateway) Object.assign(state.gateway, d.gateway);
    render();
  }, ["overview", "update", "change"]);
}

// ---------- meter ----------
function pointAge(p) {
  if (typeof p.age_s !== "number") return null;
  return p.age_s + (Date.now() - p._at) / 1000;
}

async function viewMeter(main, id) {
  const data = await api("/api/meters/" + encodeURIComponent(id));
  const now = Date.now();
  const points = asList(data, "points");
  for (const p of points) p._at = now;
  const canWrite = hasRole("operator");
  const body = el("tbody");
  const writeMsg = el("div", { id: "write-msg", "aria-live": "polite" });
  const charts = el("div", { class: "grid2" });
  const comm = el("span", { id: "meter-comm" }, commBadge(data.comm));
  main.append(
    el("h1", {}, "Meter ", el("span", { class: "mono" }, data.id || id), data.name ? " · " + data.name : "", " ", comm, " ", liveIndicator()),
    el("p", { class: "muted" }, "Bus ", data.bus ? el("a", { href: "#/bus/" + encodeURIComponent(data.bus) }, data.bus) : "?",
      " · profile ", data.profile || "?"),
    el("section", { class: "card", "aria-label": "charts" }, el("h2", {}, "Last hours"), charts),
    writeMsg,
    el("table", { id: "points", "aria-label": "points" },
      el("thead", {}, el("tr", {}, ["#", "Point", "Value", "Unit", "Quality", "Age", canWrite ? "Write" : null]
        .filter((h) => h !== null).map((h) => el("th", { scope: "col" }, h)))),
      body),
  );
  const rows = new Map();
  const makeRow = (p) => {
    const tr = el("tr", { "data-point": p.name },
      el("td", { class: "num muted" }, p.index ?? ""),
      el("td", {}, p.name),
      el("td", { class: "num value" }),
      el("td", { class: "unit" }, p.unit || ""),
      el("td", { class: "quality" }),
      el("td", { class: "num age" }),
    );
    if (canWrite) {
      const cell = el("td", { class: "write" });
      if (p.writable) {
        const label = "new value for " + p.name;
        const input = el("input", { type: "number", step: "any", "aria-label": label, name: "value" });
        const btn = el("button", { type: "button", class: "secondary" }, "Write");
        const doWrite = async () => {
          if (input.value === "") { input.focus(); return; }
          btn.disabled = true;
          writeMsg.replaceChildren();
          try {
            const r = await api("/api/meters/" + encodeURIComponent(id) + "/points/" + encodeURIComponent(p.name),
              { method: "POST", body: { value: Number(input.value) } });
            const dec = r && (r.decision || r.result || r.status);
            const ok = !dec || dec === "accepted" || dec === "ok";
            writeMsg.replaceChildren(message(ok ? "ok" : "err", p.name + " = " + input.value + ": " + (dec || "accepted")
              + (r && r.reason ? " (" + r.reason + ")" : "")));
          } catch (e) {
            writeMsg.replaceChildren(message("err", p.name + ": refused (" + e.message + ")"));
          } finally { btn.disabled = false; }
        };
        btn.addEventListener("click", doWrite);
        input.addEventListener("keydown", (ev) => { if (ev.key === "Enter") doWrite(); });
        cell.append(el("span", { class: "writecell" }, input, btn));
      }
      tr.append(cell);
    }
    rows.set(p.name, { tr, p });
    return tr;
  };
  const paint = (name) => {
    const r = rows.get(name);
    if (!r) return;
    const p = r.p;
    const [, , vTd, uTd, qTd, aTd] = r.tr.children;
    vTd.textContent = fmtValue(p.value);
    uTd.textContent = p.unit || "";
    qTd.replaceChildren(badge("q", p.quality, p.reason || null), p.reason ? el("span", { class: "muted" }, " " + p.reason) : "");
    aTd.textContent = fmtAge(pointAge(p));
  };
  body.append(...points.map(makeRow));
  points.forEach((p) => paint(p.name));
  every(1000, () => { for (const { p, tr } of rows.values()) tr.children[5].textContent = fmtAge(pointAge(p)); });
  subscribe("/api/stream?topic=meter:" + encodeURIComponent(id), (d) => {
    const at = Date.now();
    if (d.comm) comm.replaceChildren(commBadge(d.comm));
    const ups = asList(d, "points").length ? asList(d, "points") : asList(d, "changes");
    for (const u of ups) {
      const name = u.name || u.point;
      const r = rows.get(name);
      if (!r) continue;
      Object.assign(r.p, u, { _at: at });
      paint(name);
    }
  }, ["meter", "update", "change"]);
  drawCharts(charts, id, points);
  every(60000, async () => {  // the charts follow the recent history, redrawn off-page then swapped in
    const box = el("div");
    await drawCharts(box, id, points);
    charts.replaceChildren(...box.children);
  });
}

async function drawCharts(box, id, points) {
  const names = new Set(points.map((p) => p.name));
  const wanted = [["Active_Power_Total", "#1f5fbf"], ["Active_Energy_Import", "#1b7f3b"]].filter(([n]) => names.has(n) || !names.size);
  for (const [name, colour] of wanted) {
    const fig = el("figure", { style: "margin:0" });
    box.append(fig);
    try {
      const h = await api("/api/meters/" + encodeURIComponent(id) + "/history?point=" + encodeURIComponent(name) + "&hours=6");
      fig.append(chart(name, h.unit || "", asList(h, "samples"), colour));
    } catch (e) {
      fig.append(message("info", name + ": no history (" + e.message + ")"));
    }
  }
}

// A line chart of [t, value, quality] samples as SVG; samples that are not good are drawn as gaps and marked.
function chart(title, unit, samples, colour) {
  const W = 560, H = 240, L = 72, R = 14, T = 26, B = 30;
  const svg = svgEl("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${title} (${unit}), last hours` });
  const t = svgEl("text", { x: L, y: 16, "font-weight": "600" });
  t.textContent = `${title} (${unit})`;
  svg.append(t);
  const pts = samples.filter((s) => Array.isArray(s) && typeof s[0] === "number");
  const good = pts.filter((s) => typeof s[1] === "number" && (s[2] === undefined || s[2] === "good"));
  if (good.length === 0) {
    const n = svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle" });
    n.textContent = pts.length ? "no good samples yet" : "no samples yet";
    svg.append(n);
    return svg;
  }
  const t0 = pts[0][0], t1 = Math.max(pts[pts.length - 1][0], t0 + 1);
  let lo = Math.min(...good.map((s) => s[1])), hi = Math.max(...good.map((s) => s[1]));
  if (hi === lo) { hi += Math.abs(hi) * 0.05 || 1; lo -= Math.abs(lo) * 0.05 || 1; }
  const pad = (hi - lo) * 0.08; lo -= pad; hi += pad;
  const decimals = Math.max(0, Math.min(6, Math.ceil(-Math.log10((hi - lo) / 4)) + 1));
  const x = (v) => L + ((v - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    svg.append(svgEl("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    const lab = svgEl("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" });
    lab.textContent = v.toFixed(decimals);
    svg.append(lab);
  }
  for (let i = 0; i <= 4; i++) {
    const tv = t0 + ((t1 - t0) * i) / 4;
    const lab = svgEl("text", { x: x(tv), y: H - 10, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" });
    const opts = { hour: "2-digit", minute: "2-digit", hour12: false };
    if (t1 - t0 < 600) opts.second = "2-digit";
    lab.textContent = new Date(tv * 1000).toLocaleTimeString([], opts);
    svg.append(lab);
  }
  svg.append(svgEl("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
  svg.append(svgEl("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  let d = "", pen = false;
  for (const s of pts) {
    const ok = typeof s[1] === "number" && (s[2] === undefined || s[2] === "good");
    if (!ok) {
      pen = false;
      svg.append(svgEl("line", { x1: x(s[0]), x2: x(s[0]), y1: T, y2: H - B, stroke: "#f2b8b3", "stroke-width": 1 }));
      continue;
    }
    d += (pen ? "L" : "M") + x(s[0]).toFixed(1) + " " + y(s[1]).toFixed(1) + " ";
    pen = true;
  }
  svg.append(svgEl("path", { class: "line", d, stroke: colour }));
  if (good.length === 1) svg.append(svgEl("circle", { cx: x(good[0][0]), cy: y(good[0][1]), r: 3, fill: colour }));
  return svg;
}

// ---------- bus ----------
async function viewBus(main, id) {
  const ov = await api("/api/overview");
  const info = asList(ov, "buses").find((b) => b.id === id) || { id };
  const stats = el("div", { class: "stats", id: "bus-stats" });
  const paintStats = (b) => stats.replaceChildren(
    el("div", {}, el("b", {}, fmtValue(b.transactions)), el("span", {}, "transactions")),
    el("div", {}, el("b", {}, fmtValue(b.errors)), el("span", {}, "errors")),
    el("div", {}, el("b", {}, busyBar(b.busy_fraction)), el("span", {}, "busy")),
    el("div", {}, el("b", {}, badge("st", b.state)), el("span", {}, "state")),
    el("div", {}, el("b", { id: "frame-count" }, "0"), el("span", {}, "frames shown")),
  );
  paintStats(info);
  const meters = asList(ov, "meters").filter((m) => m.bus === id);
  main.append(
    el("h1", {}, "Bus ", el("span", { class: "mono" }, id), " · ", info.protocol || "", " ", liveIndicator()),
    el("section", { class: "card" }, stats),
    el("p", {}, "Meters: ", meters.length ? meters.map((m, i) => [i ? ", " : "", el("a", { href: "#/meter/" + encodeURIComponent(m.id) }, m.id)]) : "none"),
  );
  subscribe("/api/stream?topic=overview", (d) => {
    const b = asList(d, "buses").find((x) => x.id === id);
    if (b) { Object.assign(info, b); paintStats(info); }
  }, ["overview", "update", "change"]);
  if (!hasRole("admin")) {
    main.append(message("info", "The traffic monitor is for administrators."));
    return;
  }
  const body = el("tbody");
  let paused = false, count = 0;
  const pauseBtn = el("button", { type: "button", class: "secondary", "aria-pressed": "false" }, "Pause");
  pauseBtn.addEventListener("click", () => {
    paused = !paused;
    pauseBtn.textContent = paused ? "Resume" : "Pause";
    pauseBtn.setAttribute("aria-pressed", String(paused));
  });
  const clearBtn = el("button", { type: "button", class: "secondary" }, "Clear");
  clearBtn.addEventListener("click", () => { body.replaceChildren(); count = 0; document.getElementById("frame-count").textContent = "0"; });
  main.append(
    el("h2", { id: "traffic-h" }, "Traffic monitor ", pauseBtn, " ", clearBtn),
    el("div", { class: "scroll" }, el("table", { id: "frames", "aria-labelledby": "traffic-h" },
      el("thead", {}, el("tr", {}, ["Time", "Dir", "Frame (hex)", "Meaning"].map((h) => el("th", { scope: "col" }, h)))),
      body)),
  );
  const MAX = 500;
  subscribe("/api/buses/" + encodeURIComponent(id) + "/trace", (d) => {
    if (paused) return;
    const frames = Array.isArray(d) ? d : Array.isArray(d.frames) ? d.frames : [d];
    for (const f of frames) {
      if (!f || !f.hex) continue;
      const dir = String(f.dir || f.direction || "");
      const tx = /^(tx|out|req|>|send)/i.test(dir);
      body.prepend(el("tr", {},
        el("td", { class: "mono" }, fmtClock(f.t ?? f.time)),
        el("td", { class: tx ? "dir-tx" : "dir-rx" }, tx ? "→ " + dir : "← " + dir),
        el("td", { class: "hex" }, f.hex),
        el("td", {}, f.meaning || ""),
      ));
      count++;
    }
    while (body.children.length > MAX) body.lastChild.remove();
    document.getElementById("frame-count").textContent = String(count);
  }, ["frame", "frames", "trace"]);
}

// ---------- scan ----------
async function viewScan(main) {
  const ov = await api("/api/overview");
  const buses = asList(ov, "buses");
  const sel = el("select", { id: "scan-bus", name: "bus" }, buses.map((b) => el("option", { value: b.id }, b.id + " (" + (b.protocol || "") + ")")));
  const first = el("input", { id: "scan-first", name: "first", type: "number", min: "0", max: "250", placeholder: "1" });
  const last = el("input", { id: "scan-last", name: "last", type: "number", min: "0", max: "250", placeholder: "247" });
  const btn = el("button", { type: "submit", id: "scan-run" }, "Run scan");
  const out = el("div", { id: "scan-result", "aria-live": "polite" });
  const form = el("form", { class: "inline" },
    el("label", {}, "Bus", sel), el("label", {}, "First address", first), el("label", {}, "Last address", last), btn);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    btn.disabled = true;
    out.replaceChildren(message("info", "Scanning " + sel.value + "… the bus pauses its polling meanwhile."));
    const body = {};
    if (first.value !== "") body.first = Number(first.value);
    if (last.value !== "") body.last = Number(last.value);
    try {
      const r = await api("/api/buses/" + encodeURIComponent(sel.value) + "/scan", { method: "POST", body });
      const found = asList(r, "found");
      let yaml = r.yaml ?? r.meters_yaml ?? r.proposed ?? r.lines ?? "";
      if (Array.isArray(yaml)) yaml = yaml.join("\n");
      const keys = [...new Set(found.flatMap((f) => Object.keys(f)))].filter((k) => typeof found[0][k] !== "object" || found[0][k] === null).slice(0, 8);
      out.replaceChildren(
        message("ok", found.length + " meter(s) found on " + sel.value + "."),
        found.length ? el("table", { id: "scan-found" },
          el("thead", {}, el("tr", {}, keys.map((k) => el("th", { scope: "col" }, k.replace(/_/g, " "))))),
          el("tbody", {}, found.map((f) => el("tr", {}, keys.map((k) => el("td", {}, fmtValue(f[k]))))))) : "",
        el("h2", {}, "Proposed ", el("code", {}, "meters:"), " lines"),
        el("pre", { class: "yaml", id: "scan-yaml" }, yaml || "# nothing found"),
        el("button", { type: "button", class: "secondary", onclick: () => navigator.clipboard && navigator.clipboard.writeText(yaml) }, "Copy"),
      );
    } catch (e) {
      out.replaceChildren(message("err", "Scan refused or failed: " + e.message));
    } finally { btn.disabled = false; }
  });
  main.append(el("h1", {}, "Scan a bus"),
    el("p", { class: "muted" }, "Finds the meters answering on a bus and proposes the lines to paste under meters: in the configuration."),
    el("section", { class: "card" }, form), out);
}

// ---------- audit ----------
async function viewAudit(main) {
  const q = new URLSearchParams(location.hash.split("?")[1] || "");
  const f = {};
  const field = (name, label, opts) => {
    f[name] = opts
      ? el("select", { name, id: "audit-" + name }, opts.map((o) => el("option", { value: o }, o || "any")))
      : el("input", { name, id: "audit-" + name, size: "12" });
    f[name].value = q.get(name) || "";
    return el("label", {}, label, f[name]);
  };
  const form = el("form", { class: "inline" },
    field("meter", "Meter"), field("point", "Point"),
    field("protocol", "Protocol", ["", "http", "bacnet", "modbus", "cli"]),
    field("result", "Result", ["", "accepted", "denied", "out-of-range", "failed"]),
    field("user", "User"),
    field("limit", "Limit", ["200", "50", "1000"]),
    el("button", { type: "submit" }, "Filter"));
  const body = el("tbody");
  const out = el("div", { "aria-live": "polite" });
  main.append(el("h1", {}, "Write audit log"), el("section", { class: "card" }, form), out,
    el("table", { id: "audit" }, el("thead", {}, el("tr", {},
      ["Time", "Protocol", "User @ source", "Meter", "Point", "Value", "Decision", "Reason"].map((h) => el("th", { scope: "col" }, h)))), body));
  const load = async () => {
    const p = new URLSearchParams();
    for (const [k, e] of Object.entries(f)) if (e.value) p.set(k, e.value);
    history.replaceState(null, "", "#/audit?" + p);
    try {
      const r = await api("/api/audit?" + p);
      const recs = asList(r, "records").length ? asList(r, "records") : asList(r, "entries");
      out.replaceChildren(el("p", { class: "muted" }, recs.length + " record(s)" + (r && r.total > recs.length ? " of " + r.total : "")));
      body.replaceChildren(...recs.map((x) => el("tr", { "data-decision": x.decision || "" },
        el("td", { class: "mono" }, x.time || ""), el("td", {}, x.protocol || ""), el("td", {}, x.user ? x.user + " @ " + (x.source || "?") : x.source || ""),
        el("td", {}, x.meter || ""), el("td", {}, x.point || ""), el("td", { class: "num" }, fmtValue(x.value)),
        el("td", { class: "decision" }, decisionBadge(x.decision)),
        el("td", {}, [x.reason, x.meter_reply].filter(Boolean).join(" · ")),
      )));
    } catch (e) {
      out.replaceChildren(message("err", "Audit log: " + e.message));
    }
  };
  form.addEventListener("submit", (ev) => { ev.preventDefault(); load(); });
  await load();
}

function decisionBadge(d) {
  const cls = d === "accepted" ? "q-good" : d === "failed" ? "q-comm-failure" : "q-stale";
  return el("span", { class: "badge " + cls }, d || "?");
}

// ---------- exports ----------
async function viewExports(main) {
  const today = new Date();
  const iso = (d) => d.toISOString().slice(0, 10);
  const first = new Date(today.getFullYear(), today.getMonth(), 1);
  const from = el("input", { type: "date", name: "from", id: "exp-from", value: iso(new Date(first - first.getTimezoneOffset() * 60000)), required: true });
  const to = el("input", { type: "date", name: "to", id: "exp-to", value: iso(new Date(today.getTime() + 86400000)), required: true });
  let tenants = [];
  try {
    const cfg = await api("/api/overview");
    tenants = [...new Set(asList(cfg, "meters").map((m) => m.tenant).filter(Boolean))];
  } catch (e) { /* free text then */ }
  const tenant = el("input", { name: "tenant", id: "exp-tenant", list: "tenant-list", placeholder: "all tenants" });
  const fmt = el("select", { name: "format", id: "exp-format" }, ["csv", "json", "xml"].map((x) => el("option", { value: x }, x.toUpperCase())));
  const link = el("a", { id: "export-link", class: "button", download: "" }, "Download");
  const update = () => {
    const p = new URLSearchParams({ from: from.value, to: to.value, format: fmt.value });
    if (tenant.value) p.set("tenant", tenant.value);
    link.href = "/export?" + p;
    link.setAttribute("download", `billing-${tenant.value || "all"}-${from.value}-${to.value}.${fmt.value}`);
  };
  for (const x of [from, to, tenant, fmt]) x.addEventListener("input", update);
  update();
  main.append(el("h1", {}, "Billing exports"),
    el("section", { class: "card" },
      el("p", { class: "muted" }, "Readings from the journal for a period (dates in the site's time zone, end excluded)."),
      el("form", { class: "inline", onsubmit: (ev) => ev.preventDefault() },
        el("label", {}, "From", from), el("label", {}, "To", to), el("label", {}, "Tenant", tenant),
        el("datalist", { id: "tenant-list" }, tenants.map((t) => el("option", { value: t }))),
        el("label", {}, "Format", fmt), link)));
}

// ---------- configuration ----------
async function viewConfig(main) {
  const r = await api("/api/config");
  const cfg = r.config ?? r;
  const check = r.check || {};
  const errors = Array.isArray(check.errors) ? check.errors : [];
  let checkBox;
  if (check.ok === true) checkBox = message("ok", "check: no problems found in " + (r.path || "the configuration file") + ".");
  else if (check.ok === false) checkBox = el("div", {}, message("err", "check found problems in " + (r.path || "the configuration file") + ":"),
    el("pre", { class: "config", id: "check-errors" }, errors.join("\n")));
  else checkBox = message("info", check.note || "check was not run.");
  const dl = (href, text) => el("a", { href, download: "", class: "button" }, text);
  main.append(el("h1", {}, "Configuration"),
    el("section", { class: "card" }, el("h2", {}, "Downloads"),
      el("p", { class: "stats" }, dl("/api/downloads/ede.csv", "BACnet EDE (CSV)"),
        dl("/api/downloads/ede-state-texts.csv", "EDE state texts (CSV)"),
        dl("/api/downloads/registers.csv", "Modbus register map (CSV)"))),
    el("section", { class: "card", id: "check" }, el("h2", {}, "Check"), checkBox),
    el("section", { class: "card" }, el("h2", {}, "Running configuration (secrets hidden)"),
      el("pre", { class: "config", id: "config-text" }, typeof cfg === "string" ? cfg : toYaml(cfg))));
}

// A small YAML rendering of the configuration document (read-only display; strings quoted when needed).
function toYaml(v, indent) {
  indent = indent || "";
  const scalar = (x) => {
    if (x === null || x === undefined) return "null";
    if (typeof x === "string") return x === "" || /[:#{}\[\],&*!|>'"%@`]|^\s|\s$|^(true|false|null|yes|no|[-+.\d].*)$/i.test(x) ? JSON.stringify(x) : x;
    return String(x);
  };
  if (Array.isArray(v)) {
    if (!v.length) return "[]";
    return v.map((x) => {
      if (x && typeof x === "object") {
        const inner = toYaml(x, indent + "  ");
        return indent + "- " + inner.slice(indent.length + 2);
      }
      return indent + "- " + scalar(x);
    }).join("\n");
  }
  if (v && typeof v === "object") {
    const keys = Object.keys(v);
    if (!keys.length) return "{}";
    return keys.map((k) => {
      const x = v[k];
      if (x && typeof x === "object" && (Array.isArray(x) ? x.length : Object.keys(x).length)) {
        return indent + k + ":\n" + toYaml(x, indent + "  ");
      }
      return indent + k + ": " + (x && typeof x === "object" ? (Array.isArray(x) ? "[]" : "{}") : scalar(x));
    }).join("\n");
  }
  return indent + scalar(v);
}

// ---------- router ----------
const ROUTES = [
  [/^#?\/?$/, "overview", viewOverview],
  [/^#\/meter\/([^?]+)/, "overview", viewMeter],
  [/^#\/bus\/([^?]+)/, "overview", viewBus],
  [/^#\/scan/, "scan", viewScan],
  [/^#\/audit/, "audit", viewAudit],
  [/^#\/exports/, "exports", viewExports],
  [/^#\/config/, "config", viewConfig],
];

async function route() {
  teardown();
  const main = document.getElementById("main");
  main.replaceChildren();
  const h = location.hash || "#/";
  const hit = ROUTES.find(([re]) => re.test(h)) || ROUTES[0];
  const m = h.match(hit[0]);
  App.view = h;
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.nav === hit[1]) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  try {
    await hit[2](main, m && m[1] ? decodeURIComponent(m[1]) : undefined);
  } catch (e) {
    if (e.status === 401) return;
    main.append(message("err", e.status === 403 ? "Not allowed for your role: " + e.message : "Could not load this page: " + e.message));
  }
}

async function start() {
  try {
    App.session = await api("/api/session");
  } catch (e) {
    if (e.status !== 401) document.getElementById("main").append(message("err", "The gateway refused: " + e.message));
    return;
  }
  document.getElementById("who").textContent = (App.session.user || "?") + " (" + (App.session.role || "?") + ")";
  for (const a of document.querySelectorAll("[data-role]")) a.hidden = !hasRole(a.dataset.role);
  document.getElementById("logout").addEventListener("click", async () => {
    try { await api("/logout", { method: "POST", body: {} }); } catch (e) { /* gone anyway */ }
    location.assign("/ui/login.html");
  });
  window.addEventListener("hashchange", route);
  route();
}

start();
