// robot-env web page: one WebSocket to the web server; no build step, no third-party code.
// Motion is hold-to-run: the page sends the whole set of held axes on every change and every
// HEARTBEAT ms while any is held; the server drops axes that are not refreshed in time.
"use strict";

const HEARTBEAT = 100;  // ms between "still held" messages
const KEYS = {
  KeyW: ["x", 1], KeyS: ["x", -1], KeyA: ["y", 1], KeyD: ["y", -1], KeyR: ["z", 1], KeyF: ["z", -1],
  KeyO: ["grip", 1], KeyP: ["grip", -1], KeyT: ["torso", 1], KeyG: ["torso", -1],
  KeyZ: ["pan", 1], KeyX: ["pan", -1], KeyV: ["tilt", -1], KeyB: ["tilt", 1],
  ArrowUp: ["v", 1], ArrowDown: ["v", -1], KeyI: ["v", 1], KeyK: ["v", -1],
  ArrowLeft: ["w", 1], ArrowRight: ["w", -1], KeyJ: ["w", 1], KeyL: ["w", -1], KeyH: ["home", 1],
};
const PLOT_SECONDS = 10;
const PLOT_COLORS = ["#4c8dff", "#3fb950", "#d29922", "#f778ba", "#a371f7", "#39c5cf"];

const $ = (id) => document.getElementById(id);
const body = document.body;
let ws = null, me = null, spec = null, holder = null, lastState = null;
const held = new Map();  // source (key code, pointer id, "pad:...") -> [axis, sign]
let sentAxes = "{}", jogSeq = 0;  // jogSeq: the number of the held set (a refresh repeats it)
let plotJoints = [];  // indices shown in the plot
const history = [];  // [t, q[], target[]]
const camStats = {};  // name -> {img, n, t0, fps, url}

function send(msg) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
}

// ---- hold-to-run -----------------------------------------------------------------------------
function axes() {
  const out = {};
  for (const [axis, sign] of held.values()) out[axis] = sign;
  if ("home" in out && Object.keys(out).length > 1) delete out.home;  // home moves alone
  return out;
}
function syncHolds(force) {
  const now = JSON.stringify(axes());
  if (now !== sentAxes) jogSeq++;
  if (force || now !== sentAxes) {
    sentAxes = now;
    send({type: "jog", axes: JSON.parse(now), seq: jogSeq});
  }
  for (const b of document.querySelectorAll("button.hold")) {
    const on = [...held.values()].some(([a, s]) => a === b.dataset.axis && String(s) === b.dataset.sign);
    b.classList.toggle("active", on);
  }
}
function press(source, axis, sign) { held.set(source, [axis, sign]); syncHolds(); }
function release(source) { if (held.delete(source)) syncHolds(); }
function releaseAll() { held.clear(); sentAxes = "null"; syncHolds(); }
setInterval(() => { if (held.size) syncHolds(true); }, HEARTBEAT);

// ---- keys, buttons, focus --------------------------------------------------------------------
window.addEventListener("keydown", (e) => {
  if (e.target instanceof HTMLInputElement && e.target.type !== "range") return;
  if (e.code === "Space" || e.code === "Escape") { e.preventDefault(); estop(); return; }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const m = KEYS[e.code];
  if (m) { e.preventDefault(); if (!e.repeat || !held.has(e.code)) press(e.code, m[0], m[1]); return; }
  if (e.key === "+" || e.key === "=") setSpeed(+$("speed").value + 5);
  else if (e.key === "-" || e.key === "_") setSpeed(+$("speed").value - 5);
  else if (e.code === "KeyC") send({type: "clear"});
});
let lastKeyUp = null;  // when the last jog key was released (ms since the epoch): tests time the stop from it
window.addEventListener("keyup", (e) => {
  if (KEYS[e.code]) { e.preventDefault(); lastKeyUp = performance.timeOrigin + e.timeStamp; release(e.code); }
});
window.addEventListener("blur", releaseAll);
window.addEventListener("pagehide", releaseAll);
document.addEventListener("visibilitychange", () => { if (document.hidden) releaseAll(); });

for (const b of document.querySelectorAll("button.hold")) {
  const src = () => "btn:" + b.dataset.axis + b.dataset.sign;
  b.addEventListener("pointerdown", (e) => {
    e.preventDefault(); b.setPointerCapture(e.pointerId); press(src(), b.dataset.axis, +b.dataset.sign);
  });
  for (const ev of ["pointerup", "pointercancel", "lostpointercapture"]) b.addEventListener(ev, () => release(src()));
  b.addEventListener("contextmenu", (e) => e.preventDefault());
}
function estop() { releaseAll(); send({type: "estop"}); }
$("estop").addEventListener("pointerdown", (e) => { e.preventDefault(); estop(); });
$("estop").addEventListener("click", (e) => e.preventDefault());
$("clear").addEventListener("click", () => send({type: "clear"}));
$("take").addEventListener("click", () => send({type: holder === me ? "release" : "take"}));
function setSpeed(pct) {
  pct = Math.max(5, Math.min(100, pct));
  $("speed").value = pct;
  $("speedval").textContent = pct + " %";
  send({type: "speed", value: pct / 100});
}
$("speed").addEventListener("input", () => setSpeed(+$("speed").value));

// ---- gamepad ---------------------------------------------------------------------------------
let padsPolled = false;
const padStop = new Set();  // pads whose e-stop button is down
function pollPads() {
  const pads = navigator.getGamepads ? [...navigator.getGamepads()].filter(Boolean) : [];
  if (!pads.length) { padsPolled = false; return; }  // until the next gamepadconnected
  for (const p of pads) {
    const a = (i) => p.axes[i] || 0, btn = (i) => !!(p.buttons[i] && p.buttons[i].pressed);
    const want = {};
    const stick = (i, axis, flip) => { const v = a(i); if (Math.abs(v) > 0.5) want[axis] = (v > 0 ? 1 : -1) * flip; };
    stick(1, "x", -1); stick(0, "y", -1); stick(3, "v", -1); stick(2, "w", -1);
    if (btn(5)) want.z = 1; else if (btn(4)) want.z = -1;
    if (btn(7)) want.grip = 1; else if (btn(6)) want.grip = -1;
    if (btn(12)) want.torso = 1; else if (btn(13)) want.torso = -1;
    if (btn(14)) want.pan = 1; else if (btn(15)) want.pan = -1;
    if (btn(1) && !padStop.has(p.index)) estop();  // on the press, not every frame it is held
    if (btn(1)) padStop.add(p.index); else padStop.delete(p.index);
    for (const axis of ["x", "y", "z", "grip", "torso", "pan", "v", "w"]) {
      const key = "pad" + p.index + ":" + axis, cur = held.get(key);
      if (want[axis] && (!cur || cur[1] !== want[axis])) press(key, axis, want[axis]);
      else if (!want[axis] && cur) release(key);
    }
  }
  requestAnimationFrame(pollPads);
}
window.addEventListener("gamepadconnected", () => { if (!padsPolled) { padsPolled = true; requestAnimationFrame(pollPads); } });
window.addEventListener("gamepaddisconnected", () => {
  for (const k of [...held.keys()]) if (String(k).startsWith("pad")) release(k);
});

// ---- the socket ------------------------------------------------------------------------------
const pings = [];  // the last round trips page <-> web server, ms (the median is shown)
let pageRtt = null;
function connect() {
  ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
  ws.binaryType = "arraybuffer";
  ws.onopen = () => { body.dataset.socket = "open"; badge("link", "connected", "ok"); };
  ws.onclose = () => {
    held.clear(); syncHolds();  // the server stops what this page held when it sees the socket go
    body.dataset.socket = "closed"; badge("link", "disconnected: retrying", "bad");
    me = null; setTimeout(connect, 1000);
  };
  ws.onmessage = (e) => {
    if (typeof e.data !== "string") return frame(e.data);
    const m = JSON.parse(e.data);
    if (m.type === "hello") hello(m);
    else if (m.type === "state") state(m);
    else if (m.type === "control") control(m);
    else if (m.type === "message") say(m.text);
    else if (m.type === "error") say("refused: " + m.message + " [" + m.code + "]", true);
    else if (m.type === "pong") {
      pings.push(performance.now() - m.value); if (pings.length > 10) pings.shift();
      pageRtt = [...pings].sort((a, b) => a - b)[pings.length >> 1];
    }
  };
}
setInterval(() => send({type: "ping", value: performance.now()}), 1000);

function badge(id, text, cls) { const el = $(id); el.textContent = text; el.className = "badge " + (cls || ""); }
let sayTimer = null;
function say(text, error) {
  const el = $("message"); el.textContent = text; el.classList.add("fresh");
  if (error) body.dataset.lastError = text;
  clearTimeout(sayTimer); sayTimer = setTimeout(() => el.classList.remove("fresh"), 3000);
}

function hello(m) {
  me = m.you; spec = m;
  $("backend").textContent = `· ${m.backend} · ${m.clock} clock · ${Math.round(m.period * 1000)} ms`;
  $("backend").title = "this page is " + m.name;
  const tb = $("joints").tBodies[0]; tb.innerHTML = "";
  m.joints.forEach((j, i) => {
    const tr = tb.insertRow(); tr.dataset.joint = j.name;
    const unit = j.kind === "prismatic" ? "m" : "rad";
    tr.innerHTML = `<td>${j.name}</td><td class="pos"></td><td class="tgt"></td><td class="vel"></td>` +
      `<td class="lim">${fmt(j.lower, 2)} … ${fmt(j.upper, 2)} ${unit}</td><td class="bar"><div class="meter"><i></i></div></td>`;
  });
  const cams = $("cameras");
  for (const el of cams.querySelectorAll("figure")) el.remove();
  $("nocams").hidden = Object.keys(m.cameras).length > 0;
  for (const name of Object.keys(m.cameras)) {
    const fig = document.createElement("figure"); fig.className = "camera"; fig.style.margin = 0;
    fig.innerHTML = `<img alt="${name} camera" data-camera="${name}"><figcaption><span>${name}</span><span class="fps">–</span></figcaption>`;
    cams.appendChild(fig);
    camStats[name] = {img: fig.querySelector("img"), fpsEl: fig.querySelector(".fps"), n: 0, t0: performance.now(), url: null};
  }
  const names = m.joints.map((j) => j.name);
  const prefer = ["torso_lift_joint", "shoulder_pan_joint", "elbow_flex_joint", "head_pan_joint"];
  plotJoints = prefer.map((n) => names.indexOf(n)).filter((i) => i >= 0);
  if (!plotJoints.length) plotJoints = [0, 1, 2].filter((i) => i < names.length);
  legend();
  history.length = 0;
}

function legend() {
  const el = $("legend"); el.innerHTML = "";
  spec.joints.forEach((j, i) => {
    const k = plotJoints.indexOf(i);
    const lab = document.createElement("label");
    lab.innerHTML = `<input type="checkbox" ${k >= 0 ? "checked" : ""}> <span style="color:${k >= 0 ? PLOT_COLORS[k % PLOT_COLORS.length] : "inherit"}">${j.name}</span>`;
    lab.querySelector("input").addEventListener("change", (e) => {
      if (e.target.checked && plotJoints.length < PLOT_COLORS.length) plotJoints.push(i);
      else plotJoints = plotJoints.filter((x) => x !== i);
      legend();
    });
    el.appendChild(lab);
  });
}

function control(m) {
  holder = m.holder;
  const mine = holder !== null && holder === me;
  body.dataset.control = holder === null ? "free" : mine ? "yours" : "other";
  $("holder").textContent = holder === null ? `nobody is in control (${m.pages} page${m.pages === 1 ? "" : "s"} open)` :
    mine ? "you are in control" : `observing: ${m.holder_name} is in control`;
  $("take").textContent = mine ? "Release control" : "Take control";
  $("take").disabled = !mine && holder !== null;
  if (!mine) releaseAll();
}

function fmt(v, d) { return v === null || v === undefined ? "–" : (+v + 0).toFixed(d); }

function state(m) {
  lastState = m;
  body.dataset.mode = m.mode;
  badge("mode", m.mode.toUpperCase(), {ok: "ok", watchdog: "warn"}[m.mode] || "bad");
  const rows = $("joints").tBodies[0].rows;
  if (spec && m.q) {
    spec.joints.forEach((j, i) => {
      const r = rows[i]; if (!r) return;
      r.cells[1].textContent = fmt(m.q[i], 4); r.cells[2].textContent = fmt(m.target && m.target[i], 4);
      r.cells[3].textContent = fmt(m.dq[i], 3);
      const span = j.upper - j.lower, f = span > 0 ? (m.q[i] - j.lower) / span : 0.5;
      r.querySelector(".meter i").style.left = `calc(${Math.max(0, Math.min(1, f)) * 100}% - 1px)`;
      r.classList.toggle("near", f < 0.03 || f > 0.97);
    });
  }
  if (m.ee) {
    const e = m.ee;
    $("ee").textContent = `x ${fmt(e[0], 3)}  y ${fmt(e[1], 3)}  z ${fmt(e[2], 3)} m · quat ${e.slice(3).map((v) => fmt(v, 2)).join(" ")}`;
  }
  if (m.base) {
    const b = m.base;
    $("base").textContent = `x ${fmt(b[0], 3)}  y ${fmt(b[1], 3)} m  θ ${fmt(b[2], 3)} rad · v ${fmt(b[3], 2)} m/s  ω ${fmt(b[4], 2)} rad/s`;
  }
  const faults = m.faults.map((f) => `${f.code || "fault"}${f.joint ? " " + f.joint : ""}: ${f.message || ""}`);
  $("faults").textContent = faults.length ? faults.join("; ") : "none";
  $("faults").className = faults.length ? "bad" : "";
  $("clipped").textContent = m.clipped.length ? m.clipped.join(", ") : "none";
  $("clipped").className = m.clipped.length ? "warn" : "";
  const lat = m.latency;
  $("latency").textContent = (pageRtt === null ? "page ↔ web –" : `page ↔ web ${pageRtt.toFixed(1)} ms`) +
    (lat ? ` · web ↔ robot p50 ${lat.p50_ms.toFixed(2)} ms  p99 ${lat.p99_ms.toFixed(2)} ms` : "") +
    (m.release ? ` · release → stop sent p50 ${m.release.p50_ms.toFixed(1)} ms` : "");
  const jog = Object.entries(m.jog).map(([a, s]) => a + (s > 0 ? "+" : "−")).join(" ");
  $("jog").textContent = `robot jogging: ${jog || "idle"}`;
  if (Math.abs(+$("speed").value - Math.round(m.speed * 100)) >= 1 && document.activeElement !== $("speed")) {
    $("speed").value = Math.round(m.speed * 100); $("speedval").textContent = Math.round(m.speed * 100) + " %";
  }
  if (m.q) {
    const t = performance.now() / 1000;
    history.push([t, m.q, m.target || m.q]);
    while (history.length && history[0][0] < t - PLOT_SECONDS) history.shift();
    redraw();
  }
}

function frame(buf) {
  const bytes = new Uint8Array(buf), n = bytes[0];
  const name = new TextDecoder().decode(bytes.subarray(1, 1 + n));
  const cam = camStats[name]; if (!cam) return;
  const url = URL.createObjectURL(new Blob([bytes.subarray(1 + n)], {type: "image/jpeg"}));
  const old = cam.url; cam.url = url; cam.img.src = url;
  if (old) URL.revokeObjectURL(old);
  cam.n++;
  const now = performance.now();
  if (now - cam.t0 >= 1000) { cam.fps = cam.n * 1000 / (now - cam.t0); cam.n = 0; cam.t0 = now; cam.fpsEl.textContent = cam.fps.toFixed(1) + " fps"; }
  cam.img.dataset.frames = (+cam.img.dataset.frames || 0) + 1;
}

// ---- plot ------------------------------------------------------------------------------------
let plotDirty = false;  // redrawn once per new state, not on every animation frame
function draw() {
  plotDirty = false;
  const c = $("plot"), dpr = window.devicePixelRatio || 1;
  const w = c.clientWidth, h = c.clientHeight;
  if (c.width !== w * dpr) { c.width = w * dpr; c.height = h * dpr; }
  const g = c.getContext("2d"); g.setTransform(dpr, 0, 0, dpr, 0, 0); g.clearRect(0, 0, w, h);
  if (spec && history.length > 1) {
    const t1 = history[history.length - 1][0], t0 = t1 - PLOT_SECONDS;
    const x = (t) => ((t - t0) / PLOT_SECONDS) * (w - 10) + 5;
    g.strokeStyle = "#2e3540"; g.lineWidth = 1;
    for (let k = 0; k <= PLOT_SECONDS; k += 2) { g.beginPath(); g.moveTo(x(t0 + k), 0); g.lineTo(x(t0 + k), h); g.stroke(); }
    plotJoints.forEach((j, k) => {
      const lo = spec.joints[j].lower, hi = spec.joints[j].upper, span = hi - lo || 1;
      const y = (v) => h - 5 - ((v - lo) / span) * (h - 10);
      g.strokeStyle = PLOT_COLORS[k % PLOT_COLORS.length];
      for (const [col, dash] of [[2, [5, 4]], [1, []]]) {
        g.setLineDash(dash); g.lineWidth = dash.length ? 1 : 2; g.beginPath();
        history.forEach(([t, q, tg], n) => { const v = (col === 1 ? q : tg)[j]; if (v === null) return; n ? g.lineTo(x(t), y(v)) : g.moveTo(x(t), y(v)); });
        g.stroke();
      }
    });
    g.setLineDash([]);
  }
}
function redraw() { if (!plotDirty) { plotDirty = true; requestAnimationFrame(draw); } }
connect();
