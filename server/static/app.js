// The runstream web UI: runs table (filter language, sort, columns, selection), live curve overlay, compare,
// GPU & cost and drift views. Plain ES module, no build step; plotly.js comes from the server
// (/static/plotly.min.js, the installed plotly package), so the page works offline.
// Every number the API sends as "Infinity" / "-Infinity" / "NaN" (JSON has no non-finite floats) is turned
// back into a number here (`num`); charts draw non-finite values as gaps, tables print them.

// plotly.js (4.8 MB) loads while the first API answers are on their way; charts wait for it, tables do not.
const plotlyReady = new Promise((resolve, reject) => {
  const script = document.createElement("script");
  script.src = "/static/plotly.min.js";
  script.onload = () => { probe.plotlyAt = performance.now(); resolve(window.Plotly); };
  script.onerror = () => reject(new Error("could not load /static/plotly.min.js from the server"));
  document.head.appendChild(script);
});
plotlyReady.catch(() => {});  // reported where a chart awaits it, never as an unhandled rejection
const BUCKETS = 1000;          // buckets per curve (the API answers full resolution when a range holds fewer points)
// Live polling: the next poll starts 0.5 s after the previous one was answered and drawn (a point logged
// reaches the chart within 2 s: SDK flush + server load + this poll). One request at a time, so a slow server
// slows the polls down by itself and many open pages never pile requests onto it; a longer back-off (tried:
// twice the last answer's time) only added seconds to the delay whenever the machine was loaded.
const POLL_MS = 500;
const RUN_LIMIT = 10000;       // the most runs the table asks for (the API's limit)
const FULL_RETRY_MS = 5000;    // live: how often to ask again for a selected run that has no curve yet
const RUNS_REFRESH_MS = 5000;  // live: how often the runs table is read again (new runs, statuses, finals)
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf"];

const state = {
  project: "", where: "", columns: [], rows: [], hidden: null, sort: { column: null, desc: false },
  selected: [], names: new Map(), view: "curves",
  metric: "", metrics: [], x: "step", smoothing: 0, log: false, band: true, live: true,
  curves: [], axis: "step", zoom: null, curvesToken: 0, tailAppended: 0, fullAt: 0, runsAt: 0, runsToken: 0, runsText: "", webgl: hasWebGL(),
};

// What tests and bench/ui_responsiveness.py read: draws counted, times from navigation start (performance.now()).
const probe = { draws: 0, lastDraw: 0, firstDraw: 0, plotlyAt: 0, curvesAt: 0, runsRendered: 0, runsRenderMs: 0, runsShownAt: 0, state };
window.__runstream = probe;

const $ = (id) => document.getElementById(id);

// ---------- values ----------

export function num(value) {
  if (value === "Infinity") return Infinity;
  if (value === "-Infinity") return -Infinity;
  if (value === "NaN") return NaN;
  return value;
}

function plotValue(value) {
  const n = num(value);
  return typeof n === "number" && Number.isFinite(n) ? n : null;
}

// A time from the API (ISO-8601, with or without an offset: ClickHouse times are UTC; or epoch seconds) as epoch ms.
function parseTime(value) {
  if (typeof value === "number") return value * 1000;
  const text = String(value);
  return Date.parse(/(Z|[+-]\d\d:?\d\d)$/.test(text) ? text : `${text}Z`);
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function formatCell(value, column) {
  if (value === null || value === undefined) return "";
  const numeric = isNumericColumn(column);
  const n = numeric ? num(value) : value;
  if (typeof n === "number") {
    if (Number.isNaN(n)) return "NaN";
    if (!Number.isFinite(n)) return n > 0 ? "inf" : "-inf";
    if (Number.isInteger(n)) return String(n);
    return String(Number(n.toPrecision(6)));
  }
  if (typeof n === "boolean") return String(n);
  if (typeof n === "object") return JSON.stringify(n);
  if (column === "started_at" || column.endsWith("_at")) return String(n).replace("T", " ").replace(/\.\d+/, "").replace(/(Z|\+00:00)$/, "");
  return String(n);
}

function isNumericColumn(column) {
  return column.startsWith("metrics.") || column.startsWith("best.") || column === "gpu_hours";
}

// ---------- the API ----------

class ApiError extends Error {}

async function api(path, params = {}, options = {}) {
  const url = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || value === null || value === "") continue;
    if (Array.isArray(value)) value.forEach((item) => url.searchParams.append(key, item));
    else url.searchParams.set(key, value);
  }
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error : `${path}: HTTP ${response.status} ${response.statusText}`;
    throw new ApiError(message);
  }
  return body;
}

function showError(id, error) {
  const line = $(id);
  if (!error) { line.hidden = true; line.textContent = ""; return; }
  line.textContent = error instanceof Error ? error.message : String(error);
  line.hidden = false;
}

// A {columns, rows} table, a list of records, or {key: list of records}: as {columns, rows}.
function asTable(body) {
  if (!body) return { columns: [], rows: [] };
  if (Array.isArray(body.columns) && Array.isArray(body.rows)) return body;
  const records = Array.isArray(body) ? body : Object.values(body).find(Array.isArray) || [];
  if (records.length && Array.isArray(records[0])) return { columns: records[0].map((_, i) => `#${i}`), rows: records };
  const columns = [];
  for (const record of records) for (const key of Object.keys(record)) if (!columns.includes(key)) columns.push(key);
  return { columns, rows: records.map((record) => columns.map((c) => record[c])) };
}

function renderTable(table, { columns, rows }, rowClass = () => "") {
  table.tHead.innerHTML = `<tr>${columns.map((c) => `<th>${escapeHtml(c)}</th>`).join("")}</tr>`;
  table.tBodies[0].innerHTML = rows.map((row) =>
    `<tr class="${rowClass(row)}">${row.map((v, i) => `<td>${escapeHtml(formatCell(v, String(columns[i])))}</td>`).join("")}</tr>`,
  ).join("");
}

// ---------- URL state: the selection, metric and axis survive a reload and can be shared ----------

function readHash() {
  const hash = new URLSearchParams(window.location.hash.slice(1));
  state.selected = (hash.get("runs") || "").split(",").filter(Boolean);
  state.metric = hash.get("metric") || "";
  state.x = hash.get("x") || "step";
  state.where = hash.get("where") || "";
  state.project = hash.get("project") || "";
  if (hash.get("renderer") === "svg") state.webgl = false;  // plotly's SVG lines instead of WebGL (scattergl)
  state.view = ["curves", "compare", "gpu", "drift"].includes(hash.get("view")) ? hash.get("view") : "curves";
}

function writeHash() {
  const hash = new URLSearchParams();
  if (state.project) hash.set("project", state.project);
  if (state.where) hash.set("where", state.where);
  if (state.selected.length) hash.set("runs", state.selected.join(","));
  if (state.metric) hash.set("metric", state.metric);
  if (state.x !== "step") hash.set("x", state.x);
  if (state.view !== "curves") hash.set("view", state.view);
  window.history.replaceState(null, "", `#${hash.toString()}`);
}

// ---------- runs table ----------

async function loadProjects() {
  try {
    const body = await api("/api/projects");
    const list = Array.isArray(body) ? body : body.projects || asTable(body).rows.map((r) => r[0]);
    const names = list.map((p) => (typeof p === "string" ? p : p.project || p.name)).filter(Boolean);
    const select = $("project");
    select.innerHTML = `<option value="">all projects</option>${names.map((p) =>
      `<option value="${escapeHtml(p)}">${escapeHtml(p)}</option>`).join("")}`;
    select.value = names.includes(state.project) ? state.project : "";
  } catch (error) {
    showError("runs-error", error);
  }
}

async function loadRuns() {
  state.runsAt = performance.now();
  const token = ++state.runsToken;
  try {
    const body = await api("/api/runs", { project: state.project, where: state.where, limit: RUN_LIMIT });
    if (token !== state.runsToken) return;  // a newer filter was applied meanwhile
    const text = JSON.stringify(body);
    if (text === state.runsText) { showError("runs-error", null); return; }  // the same answer: nothing to draw
    state.runsText = text;
    state.columns = body.columns;
    state.rows = body.rows;
    const id = state.columns.indexOf("run_id");
    const name = state.columns.indexOf("name");
    for (const row of state.rows) state.names.set(row[id], row[name]);
    showError("runs-error", null);
    if (state.hidden === null) state.hidden = defaultHidden(state.columns);
    renderColumnChooser();
    renderRuns();
  } catch (error) {
    if (token === state.runsToken) showError("runs-error", error);
  }
}

function defaultHidden(columns) {
  // best.* and run_id start hidden (the chooser shows them); a very wide table keeps its first 8 params/metrics
  const hidden = new Set(columns.filter((c) => c.startsWith("best.") || c === "run_id"));
  for (const prefix of ["params.", "metrics."]) {
    columns.filter((c) => c.startsWith(prefix)).slice(8).forEach((c) => hidden.add(c));
  }
  return hidden;
}

function renderColumnChooser() {
  $("column-list").innerHTML = state.columns.map((c) =>
    `<label><input type="checkbox" data-column="${escapeHtml(c)}" ${state.hidden.has(c) ? "" : "checked"}> ${escapeHtml(c)}</label>`,
  ).join("");
}

function compareValues(a, b, numeric) {
  const x = numeric ? num(a) : a;
  const y = numeric ? num(b) : b;
  const missing = (v) => v === null || v === undefined || (typeof v === "number" && Number.isNaN(v));
  if (missing(x) || missing(y)) return missing(x) - missing(y);  // missing values last, either direction
  if (typeof x === "number" && typeof y === "number") return x - y;
  return String(x).localeCompare(String(y), undefined, { numeric: true });
}

function sortedRows() {
  const { column, desc } = state.sort;
  const index = state.columns.indexOf(column);
  if (index < 0) return state.rows;
  const numeric = isNumericColumn(column) || state.rows.every((r) => r[index] === null || typeof r[index] === "number");
  const sign = desc ? -1 : 1;
  return [...state.rows].sort((a, b) => {
    const missing = (v) => v === null || v === undefined;
    if (missing(a[index]) !== missing(b[index])) return missing(a[index]) ? 1 : -1;
    return sign * compareValues(a[index], b[index], numeric);
  });
}

function renderRuns() {
  if (!state.hidden) return;  // no answer from /api/runs yet
  const start = performance.now();
  const shown = state.columns.map((c, i) => [c, i]).filter(([c]) => !state.hidden.has(c));
  const idIndex = state.columns.indexOf("run_id");
  const selected = new Set(state.selected);
  const arrow = (c) => (state.sort.column === c ? (state.sort.desc ? " ▼" : " ▲") : "");
  const table = $("runs-table");
  table.tHead.innerHTML = `<tr><th class="sel"></th>${shown.map(([c]) =>
    `<th data-column="${escapeHtml(c)}" title="sort by ${escapeHtml(c)}">${escapeHtml(c)}${arrow(c)}</th>`).join("")}</tr>`;
  table.tBodies[0].innerHTML = sortedRows().map((row) => {
    const id = row[idIndex];
    const on = selected.has(id);
    return `<tr data-run="${escapeHtml(id)}"${on ? ' class="selected"' : ""}><td class="sel"><input type="checkbox"${on ? " checked" : ""}></td>${
      shown.map(([c, i]) => `<td>${escapeHtml(formatCell(row[i], c))}</td>`).join("")}</tr>`;
  }).join("");
  const limited = state.rows.length >= RUN_LIMIT ? ` (the first ${RUN_LIMIT})` : "";
  $("runs-count").textContent = `${state.rows.length} runs${limited}`;
  probe.runsRendered += 1;
  probe.runsRenderMs = performance.now() - start;
  probe.runsShownAt = performance.now();
}

function setSelection(runs) {
  state.selected = runs;
  writeHash();
  renderRuns();
  const names = runs.map((r) => state.names.get(r) || r);
  $("selection").textContent = runs.length ? `${runs.length} selected: ${names.join(", ")}` : "select runs in the table";
  state.zoom = null;
  loadView();
}

// ---------- curves ----------

function hasWebGL() {
  try {
    const canvas = document.createElement("canvas");
    return Boolean(canvas.getContext("webgl2") || canvas.getContext("webgl"));
  } catch {
    return false;
  }
}

function metricNames(body) {
  const list = Array.isArray(body) ? body : body.metrics || body.names || asTable(body).rows.map((r) => r[0]);
  return list.map((m) => (typeof m === "string" ? m : m.name || m.metric)).filter(Boolean);
}

async function loadMetrics() {
  if (!state.selected.length) { state.metrics = []; fillMetricSelects(); return; }
  const body = await api("/api/metrics", { run: state.selected });
  state.metrics = metricNames(body);
  if (!state.metrics.includes(state.metric)) {
    state.metric = state.metrics.includes("loss") ? "loss" : state.metrics[0] || "";
  }
  fillMetricSelects();
  writeHash();
}

function fillMetricSelects() {
  $("metric").innerHTML = state.metrics.map((m) => `<option>${escapeHtml(m)}</option>`).join("");
  $("metric").value = state.metric;
  const axes = ["step", "time", "relative", ...state.metrics.filter((m) => m !== state.metric)];
  if (!axes.includes(state.x)) axes.push(state.x);
  const labels = { relative: "relative (s)" };
  $("x-axis").innerHTML = axes.map((a) => `<option value="${escapeHtml(a)}">${escapeHtml(labels[a] || a)}</option>`).join("");
  $("x-axis").value = state.x;
}

function normalizeCurve(curve) {
  return {
    run: curve.run, name: curve.name || state.names.get(curve.run) || curve.run, metric: curve.metric,
    x: curve.x.slice(), last: curve.last.map(num), min: curve.min.map(num), max: curve.max.map(num),
    count: (curve.count || []).slice(),
  };
}

// An x as the chart draws it: times (ISO strings or seconds) as epoch milliseconds, the rest as numbers.
function chartX(value) {
  if (state.axis === "time") return parseTime(value);
  return plotValue(value);
}

// A chart x (a zoom range end) as the API's x_min / x_max: ISO-8601 for the time axis, else the number.
function apiX(value) {
  if (state.axis !== "time") return value;
  const ms = typeof value === "number" ? value : Date.parse(`${String(value).replace(" ", "T")}Z`);
  return new Date(ms).toISOString();
}

function xOrder(value) {
  return state.axis === "time" ? chartX(value) : num(value);
}

async function loadCurves() {
  const token = ++state.curvesToken;
  if (!state.selected.length || !state.metric) {
    state.curves = [];
    await draw();
    return;
  }
  const params = { run: state.selected, metric: state.metric, x: state.x, buckets: BUCKETS };
  if (state.zoom) { params.x_min = apiX(state.zoom[0]); params.x_max = apiX(state.zoom[1]); }
  state.fullAt = performance.now();
  try {
    const body = await api("/api/curves", params);
    if (token !== state.curvesToken) return;  // a newer question was asked meanwhile
    probe.curvesAt = performance.now();
    state.axis = body.x || state.x;
    state.curves = body.curves.map(normalizeCurve);
    state.tailAppended = 0;
    showError("curves-error", null);
    await draw();
  } catch (error) {
    if (token === state.curvesToken) showError("curves-error", error);
  }
}

// Live: ask only for what is past the last x every curve has (x_min), and splice it onto each curve.
async function pollTail() {
  if (!state.live || state.view !== "curves" || !state.selected.length || document.hidden) return;
  if (!state.metric) {  // the selected runs had logged no metric yet
    await loadMetrics();
    if (state.metric) await loadCurves();
    return;
  }
  const missing = state.curves.length < state.selected.length;
  const retry = !state.curves.length || performance.now() - state.fullAt > FULL_RETRY_MS;  // nothing drawn: cheap
  if (state.tailAppended > 2 * BUCKETS || (missing && retry)) {
    await loadCurves();  // long tails, or a selected run without points yet: ask for the whole picture again
    return;
  }
  if (!state.curves.length || state.axis !== state.x) return;  // a new axis is being fetched: no tail in old units
  const lasts = state.curves.map((c) => c.x[c.x.length - 1]);
  const from = lasts.reduce((a, b) => (xOrder(b) < xOrder(a) ? b : a));
  if (state.zoom && xOrder(apiX(state.zoom[1])) < xOrder(from)) return;  // zoomed into the past: nothing new to show
  const token = state.curvesToken;
  const params = { run: state.selected, metric: state.metric, x: state.x, buckets: BUCKETS, x_min: from };
  if (state.zoom) params.x_max = apiX(state.zoom[1]);
  const body = await api("/api/curves", params);
  if (token !== state.curvesToken) return;
  let changed = false;
  for (const tail of body.curves.map(normalizeCurve)) {
    const curve = state.curves.find((c) => c.run === tail.run && c.metric === tail.metric);
    if (!curve || !tail.x.length) continue;
    const cut = xOrder(tail.x[0]);
    let keep = curve.x.length;
    while (keep > 0 && xOrder(curve.x[keep - 1]) >= cut) keep -= 1;
    const same = curve.x.length - keep === tail.x.length
      && tail.x.every((x, i) => x === curve.x[keep + i] && Object.is(tail.last[i], curve.last[keep + i])
        && Object.is(tail.min[i], curve.min[keep + i]) && Object.is(tail.max[i], curve.max[keep + i]));
    if (same) continue;
    for (const key of ["x", "last", "min", "max", "count"]) curve[key] = curve[key].slice(0, keep).concat(tail[key]);
    state.tailAppended += tail.x.length;
    changed = true;
  }
  if (changed) await draw();
}

async function liveLoop() {
  try {
    const typing = document.activeElement === $("filter");
    if (state.live && !typing && performance.now() - state.runsAt > RUNS_REFRESH_MS) loadRuns();
    await pollTail();
    showError("curves-error", null);
  } catch (error) {
    showError("curves-error", error);
  }
  window.setTimeout(liveLoop, POLL_MS);
}

function smooth(values, weight) {
  if (!weight) return values;
  let ema = 0;
  let n = 0;
  return values.map((v) => {
    if (v === null) return null;
    n += 1;
    ema = ema * weight + (1 - weight) * v;
    return ema / (1 - weight ** n);  // debiased: the first points are not pulled towards 0
  });
}

function rgba(hex, alpha) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255},${(n >> 8) & 255},${n & 255},${alpha})`;
}

async function draw() {
  const type = state.webgl ? "scattergl" : "scatter";
  const traces = [];
  state.curves.forEach((curve, i) => {
    const color = PALETTE[i % PALETTE.length];
    const x = curve.x.map(chartX);
    const group = `${curve.run}/${curve.metric}`;
    const meta = (role) => ({ run: curve.run, metric: curve.metric, role });
    if (state.band) {
      traces.push({ type, mode: "lines", x, y: curve.min.map(plotValue), line: { width: 0, color },
        hoverinfo: "skip", showlegend: false, legendgroup: group, meta: meta("min") });
      traces.push({ type, mode: "lines", x, y: curve.max.map(plotValue), line: { width: 0, color },
        fill: "tonexty", fillcolor: rgba(color, 0.2), hoverinfo: "skip", showlegend: false, legendgroup: group,
        meta: meta("max") });
    }
    traces.push({ type, mode: x.length > 1 ? "lines" : "markers", x, y: smooth(curve.last.map(plotValue), state.smoothing),
      name: curve.name, legendgroup: group, line: { color, width: 1.5 }, marker: { color }, meta: meta("last") });
  });
  const xaxis = { title: { text: state.axis === "relative" ? "seconds since the run's first point" : state.axis },
    type: state.axis === "time" ? "date" : "linear" };
  if (state.zoom) Object.assign(xaxis, { range: state.zoom.slice(), autorange: false });
  else xaxis.autorange = true;
  const layout = {
    uirevision: `${state.selected.join(",")}|${state.metric}|${state.x}|${state.log}`,
    margin: { l: 60, r: 20, t: 20, b: 50 }, xaxis,
    yaxis: { title: { text: state.metric }, type: state.log ? "log" : "linear" },
    legend: { orientation: "h", y: -0.2 }, hovermode: "x unified",
  };
  const Plotly = await plotlyReady;
  const chart = $("curves-chart");
  await Plotly.react(chart, traces, layout, { displaylogo: false, responsive: true });
  if (!chart.dataset.bound) {  // plotly's own events exist once it drew
    chart.on("plotly_relayout", onRelayout);
    chart.dataset.bound = "1";
  }
  const points = state.curves.reduce((n, c) => n + c.x.length, 0);
  $("curves-status").textContent = state.curves.length
    ? `${state.curves.length} curves, ${points} points${state.zoom ? " (zoomed)" : ""}, ${new Date().toLocaleTimeString()}`
    : state.selected.length ? "no points for this metric yet" : "";
  probe.draws += 1;
  probe.lastDraw = performance.now();
  if (!probe.firstDraw && state.curves.length) probe.firstDraw = probe.lastDraw;
}

// plotly_relayout: a zoom asks again for the zoomed x range, at full resolution when it holds fewer points
// than buckets; a reset (double click) asks for the whole range.
function onRelayout(event) {
  if (state.axis !== state.x) return;  // the chart still shows the previous axis: its range means nothing now
  if (event["xaxis.autorange"] || event.autosize) {
    if (state.zoom) { state.zoom = null; loadCurves(); }
    return;
  }
  const range = event["xaxis.range"] || (("xaxis.range[0]" in event) ? [event["xaxis.range[0]"], event["xaxis.range[1]"]] : null);
  if (!range) return;
  state.zoom = range.map((v) => (state.axis === "time" && typeof v === "string" ? Date.parse(`${v.replace(" ", "T")}Z`) : v));
  loadCurves();
}

// ---------- compare, GPU & cost, drift ----------

async function loadCompare() {
  const table = $("compare-table");
  if (state.selected.length < 1) { renderTable(table, { columns: [], rows: [] }); return; }
  try {
    const body = asTable(await api("/api/compare", { run: state.selected }));
    const differs = body.columns.indexOf("differs");
    const columns = body.columns.filter((_, i) => i !== differs);
    const rows = body.rows.map((row) => row.filter((_, i) => i !== differs));
    const marks = body.rows.map((row) => (differs >= 0 && row[differs] ? "differs" : ""));
    renderTable(table, { columns, rows });
    [...table.tBodies[0].rows].forEach((tr, i) => {
      if (marks[i]) tr.classList.add("differs");
      const field = String(rows[i][0]);
      if (/ (final|best)/.test(field)) tr.classList.add("metric-row");
    });
    showError("compare-error", null);
  } catch (error) {
    showError("compare-error", error);
  }
}

// /api/gpu: per run, its GPU samples bucketed over time (mean utilisation of its GPUs, the fullest GPU's memory),
// GPU-hours and cost. /api/cost: the cost table by project.
async function loadGpu() {
  if (!state.selected.length) { renderTable($("gpu-table"), { columns: [], rows: [] }); return; }
  try {
    const body = await api("/api/gpu", { run: state.selected });
    const util = [];
    const memory = [];
    const rows = [];
    body.runs.forEach((run, i) => {
      const line = { color: PALETTE[i % PALETTE.length] };
      const s = run.series;
      const x = s.time.map(parseTime);
      util.push({ type: "scatter", mode: "lines", name: run.name, x, y: s.utilization_pct.map(plotValue), line });
      memory.push({ type: "scatter", mode: "lines", name: run.name, x,
        y: s.memory_used_bytes.map((b) => (b === null ? null : b / 2 ** 30)), line });
      const gpus = s.gpus.length ? Math.max(...s.gpus) : 0;
      rows.push([run.name, gpus, run.gpu_hours, run.idle_gpu_hours, run.cost_usd, run.idle_cost_usd, run.energy_kwh]);
    });
    const layout = (title, unit) => ({ title: { text: title }, margin: { l: 60, r: 20, t: 40, b: 40 },
      xaxis: { type: "date" }, yaxis: { title: { text: unit }, rangemode: "tozero" }, legend: { orientation: "h", y: -0.25 } });
    const Plotly = await plotlyReady;
    await Plotly.react($("gpu-util-chart"), util, layout("GPU utilisation (mean over the run's GPUs)", "%"),
      { displaylogo: false, responsive: true });
    await Plotly.react($("gpu-memory-chart"), memory, layout("GPU memory used (fullest GPU)", "GiB"),
      { displaylogo: false, responsive: true });
    renderTable($("gpu-table"), { columns: ["run", "GPUs", "GPU-hours", "idle GPU-hours", "cost (USD)",
      "idle cost (USD)", "energy (kWh)"], rows });
    const costs = await api("/api/cost", { project: state.project, by: "project", since: "2000-01-01T00:00:00Z" });
    renderTable($("cost-table"), asTable(costs.rows));
    showError("gpu-error", null);
  } catch (error) {
    showError("gpu-error", error);
  }
}

// /api/drift: PSI (and KS for numeric features) per model, version, feature and window; one line per
// (model, feature) of its PSI over the windows.
async function loadDrift() {
  try {
    const body = await api("/api/drift", { model: $("drift-model").value.trim(), feature: $("drift-feature").value.trim() });
    const table = asTable(body.scores);
    renderTable($("drift-table"), table);
    const lines = new Map();
    for (const row of body.scores) {
      const key = `${row.model} v${row.version} / ${row.feature}`;
      if (!lines.has(key)) lines.set(key, { type: "scatter", mode: "lines+markers", name: key, x: [], y: [] });
      lines.get(key).x.push(parseTime(row.window_start));
      lines.get(key).y.push(plotValue(row.psi));
    }
    const Plotly = await plotlyReady;
    await Plotly.react($("drift-chart"), [...lines.values()], {
      margin: { l: 60, r: 20, t: 20, b: 40 }, xaxis: { type: "date" }, yaxis: { title: { text: "PSI" }, rangemode: "tozero" },
      legend: { orientation: "h", y: -0.25 },
      shapes: [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: 0.2, y1: 0.2, line: { dash: "dot", color: "#b42318" } }],
    }, { displaylogo: false, responsive: true });
    $("drift-status").textContent = body.scores.length ? `PSI over 0.2 (dotted) is usually read as drift`
      : "no drift scores in the last 24 hours (runstream.monitor logs live samples)";
    showError("drift-error", null);
  } catch (error) {
    showError("drift-error", error);
  }
}

// ---------- views ----------

async function loadView() {
  for (const view of ["curves", "compare", "gpu", "drift"]) {
    $(`view-${view}`).hidden = view !== state.view;
    document.querySelector(`#tabs button[data-view="${view}"]`).classList.toggle("active", view === state.view);
  }
  if (state.view === "curves") {
    try {
      const asked = state.metric;
      if (asked) await Promise.all([loadMetrics(), loadCurves()]);  // the metric is known (the URL): both at once
      if (state.metric !== asked) await loadCurves();  // none known, or the URL's was not logged by these runs
    } catch (error) {
      showError("curves-error", error);
    }
  } else if (state.view === "compare") await loadCompare();
  else if (state.view === "gpu") await loadGpu();
  else await loadDrift();
}

async function loadHealth() {
  try {
    const health = await api("/api/health");
    $("server-status").textContent = `database ${health.database} · server ${health.version || ""}`;
  } catch (error) {
    $("server-status").textContent = `server not answering: ${error.message}`;
  }
}

function wire() {
  $("filter-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.where = $("filter").value.trim();
    writeHash();
    loadRuns();
  });
  $("project").addEventListener("change", () => {
    state.project = $("project").value;
    writeHash();
    loadRuns();
  });
  $("column-list").addEventListener("change", (event) => {
    const column = event.target.dataset.column;
    if (!column) return;
    if (event.target.checked) state.hidden.delete(column); else state.hidden.add(column);
    renderRuns();
  });
  const table = $("runs-table");
  table.tHead.addEventListener("click", (event) => {
    const th = event.target.closest("th[data-column]");
    if (!th) return;
    const column = th.dataset.column;
    state.sort = { column, desc: state.sort.column === column ? !state.sort.desc : false };
    renderRuns();
  });
  table.tBodies[0].addEventListener("change", (event) => {
    const tr = event.target.closest("tr[data-run]");
    if (!tr) return;
    const run = tr.dataset.run;
    setSelection(event.target.checked ? [...state.selected.filter((r) => r !== run), run] : state.selected.filter((r) => r !== run));
  });
  document.querySelectorAll("#tabs button[data-view]").forEach((button) => button.addEventListener("click", () => {
    state.view = button.dataset.view;
    writeHash();
    loadView();
  }));
  $("metric").addEventListener("change", () => {
    state.metric = $("metric").value;
    state.zoom = null;
    fillMetricSelects();
    writeHash();
    loadCurves();
  });
  $("x-axis").addEventListener("change", () => {
    state.x = $("x-axis").value;
    state.zoom = null;
    writeHash();
    loadCurves();
  });
  $("smoothing").addEventListener("input", () => {
    state.smoothing = Number($("smoothing").value);
    $("smoothing-value").textContent = state.smoothing.toFixed(2);
    draw();
  });
  $("log-scale").addEventListener("change", () => { state.log = $("log-scale").checked; draw(); });
  $("band").addEventListener("change", () => { state.band = $("band").checked; draw(); });
  $("live").addEventListener("change", () => { state.live = $("live").checked; });
  $("drift-apply").addEventListener("click", () => loadDrift());
  window.addEventListener("hashchange", () => {  // a link or an edited URL (writeHash's replaceState fires none)
    readHash();
    state.zoom = null;
    $("filter").value = state.where;
    loadRuns();
    loadView();
  });
}

async function start() {
  readHash();
  $("filter").value = state.where;
  wire();
  loadHealth();
  await Promise.all([loadProjects(), loadRuns(), loadView()]);
  setSelectionLabel();
  window.setTimeout(liveLoop, POLL_MS);
}

function setSelectionLabel() {
  const names = state.selected.map((r) => state.names.get(r) || r);
  if (names.length) $("selection").textContent = `${names.length} selected: ${names.join(", ")}`;
}

start();
