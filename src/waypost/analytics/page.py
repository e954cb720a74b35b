# ruff: noqa: E501, RUF001
"""The analytics page (``/analytics`` on the admin port): one HTML page drawn with plotly.js.

plotly.js comes from the installed ``plotly`` package (``/analytics/plotly.min.js``), never a
CDN: admin networks are often air-gapped. The page polls ``/analytics.json`` with the chosen range
and drill-down (gateway, api, route, consumer: clicking a bar or a row narrows to it), a team
(the selector: only that team's routes), and
``/analytics/fleet.json`` when the server has a Prometheus. Untrusted text (consumer, route
names) only ever goes into ``textContent`` or plotly's escaped labels.
"""

from __future__ import annotations

__all__ = ["PAGE"]

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>waypost analytics</title>
<script src="/analytics/plotly.min.js"></script>
<style>
  :root { --bg:#f4f6f9; --card:#fff; --ink:#1c2430; --muted:#66707e; --line:#e3e7ed; --bad:#c0352b; --badbg:#fbe9e7; }
  * { box-sizing:border-box; }
  body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; background:var(--bg); color:var(--ink); }
  header { background:#1c2430; color:#fff; padding:14px 24px; display:flex; align-items:center; gap:18px; flex-wrap:wrap; }
  header h1 { margin:0; font-size:18px; }
  header a { color:#c9d3e0; font-size:13px; }
  header select { font:inherit; padding:3px 6px; border-radius:6px; }
  header .updated { margin-left:auto; font-size:12px; color:#9aa6b5; }
  main { padding:20px 24px; max-width:1280px; margin:0 auto; }
  .filters { margin-bottom:12px; display:flex; gap:8px; flex-wrap:wrap; align-items:center; min-height:26px; }
  .chip { background:#dce7fb; color:#1d4ea8; border-radius:999px; padding:2px 10px; font-size:13px; cursor:pointer; }
  .chip::after { content:" ×"; }
  .cards { display:grid; grid-template-columns:repeat(auto-fit,minmax(140px,1fr)); gap:12px; margin-bottom:16px; }
  .card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px 14px; }
  .card .label { font-size:12px; color:var(--muted); text-transform:uppercase; letter-spacing:.04em; }
  .card .value { font-size:24px; font-weight:600; font-variant-numeric:tabular-nums; }
  .grid { display:grid; grid-template-columns:1fr 1fr; gap:16px; }
  section { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:14px 16px; margin-bottom:16px; }
  section h2 { font-size:14px; margin:0 0 8px; text-transform:uppercase; letter-spacing:.04em; color:var(--muted); }
  .chart { height:260px; }
  table { width:100%; border-collapse:collapse; }
  th, td { text-align:left; padding:6px 8px; border-bottom:1px solid var(--line); font-variant-numeric:tabular-nums; }
  th { font-size:12px; color:var(--muted); }
  tr.pick { cursor:pointer; } tr.pick:hover { background:#f0f4fb; }
  .anomaly { background:var(--badbg); border-color:#f1c4be; }
  .anomaly h2 { color:var(--bad); }
  .empty { color:var(--muted); font-style:italic; }
  .hidden { display:none; }
  @media (max-width:900px) { .grid { grid-template-columns:1fr; } }
</style>
</head>
<body>
<header>
  <h1>waypost analytics</h1>
  <label>range <select id="range">
    <option>5m</option><option selected>15m</option><option>1h</option><option>6h</option>
    <option>24h</option><option>7d</option><option>30d</option></select></label>
  <label>team <select id="team"><option value="">all teams</option></select></label>
  <a href="/" id="dashboard-link">fleet dashboard</a>
  <span class="updated" id="updated"></span>
</header>
<main>
  <div class="filters" id="filters"></div>
  <div class="cards">
    <div class="card"><div class="label">requests</div><div class="value" id="k-requests">–</div></div>
    <div class="card"><div class="label">error rate (5xx)</div><div class="value" id="k-errors">–</div></div>
    <div class="card"><div class="label">p50</div><div class="value" id="k-p50">–</div></div>
    <div class="card"><div class="label">p95</div><div class="value" id="k-p95">–</div></div>
    <div class="card"><div class="label">p99</div><div class="value" id="k-p99">–</div></div>
    <div class="card"><div class="label">429 limited</div><div class="value" id="k-limited">–</div></div>
    <div class="card"><div class="label">401 / 403</div><div class="value" id="k-denied">–</div></div>
  </div>
  <section class="anomaly hidden" id="anomalies"><h2>anomalies</h2><table><thead><tr><th>consumer</th><th>kind</th><th>what</th><th>since</th></tr></thead><tbody></tbody></table></section>
  <div class="grid">
    <section><h2>requests</h2><div class="chart" id="c-requests"></div></section>
    <section><h2>latency (ms)</h2><div class="chart" id="c-latency"></div></section>
    <section><h2>top apis</h2><div class="chart" id="c-apis"></div></section>
    <section><h2>top consumers</h2><div class="chart" id="c-consumers"></div></section>
  </div>
  <section><h2>routes</h2><table id="t-routes"><thead><tr><th>route</th><th>requests</th><th>error rate</th><th>401/403</th><th>429</th><th>p50</th><th>p95</th><th>p99</th></tr></thead><tbody></tbody></table></section>
  <section><h2>consumers</h2><table id="t-consumers"><thead><tr><th>consumer</th><th>plan</th><th>requests</th><th>error rate</th><th>401/403</th><th>429</th><th>p50</th><th>p95</th><th>p99</th></tr></thead><tbody></tbody></table></section>
  <section class="hidden" id="fleet"><h2>fleet (prometheus)</h2><div class="cards">
    <div class="card"><div class="label">fleet requests (all time)</div><div class="value" id="f-total">–</div></div>
    <div class="card"><div class="label">in range</div><div class="value" id="f-range">–</div></div>
    <div class="card"><div class="label">fleet p95</div><div class="value" id="f-p95">–</div></div>
  </div><table id="t-replicas"><thead><tr><th>replica</th><th>requests (all time)</th></tr></thead><tbody></tbody></table></section>
</main>
<script>
"use strict";
const DIMS = ["gateway", "api", "route", "consumer"];
const params = new URLSearchParams(location.search);
const filters = {};
for (const d of DIMS) if (params.has(d)) filters[d] = params.get(d);
const rangeSel = document.getElementById("range");
if (params.has("range")) rangeSel.value = params.get("range");
rangeSel.onchange = () => { go(); };
const teamSel = document.getElementById("team");
let team = params.get("team") || "";
teamSel.onchange = () => { team = teamSel.value; go(); };
const query = () => new URLSearchParams({range: rangeSel.value, ...(team ? {team} : {}), ...filters});
function teamOptions(teams) {
  const have = [...teamSel.options].slice(1).map(o => o.value).join("\n");
  if (have !== teams.join("\n")) {
    teamSel.replaceChildren(teamSel.options[0]);
    for (const t of teams) { const o = document.createElement("option"); o.value = t; o.textContent = t; teamSel.append(o); }
  }
  teamSel.value = team;
  document.getElementById("dashboard-link").href = team ? "/?team=" + encodeURIComponent(team) : "/";
}
const label = (v) => v === "" ? "(none)" : v;
const fmt = (n) => n == null ? "–" : (Math.abs(n) >= 1000 ? Math.round(n).toLocaleString("en") : (+n.toFixed(2)).toString());
const ms = (n) => n == null ? "–" : fmt(n) + " ms";
const pct = (n) => (100 * n).toFixed(2) + "%";
function go() {
  history.replaceState(null, "", "?" + query());
  load();
}
function drill(dim, value) { filters[dim] = value; go(); }
function renderFilters() {
  const box = document.getElementById("filters");
  box.replaceChildren();
  for (const d of DIMS) if (d in filters) {
    const chip = document.createElement("span");
    chip.className = "chip"; chip.textContent = d + ": " + label(filters[d]);
    chip.onclick = () => { delete filters[d]; go(); };
    box.append(chip);
  }
}
function text(id, v) { document.getElementById(id).textContent = v; }
function rows(table, items, cells, dim, key) {
  const body = document.querySelector(table + " tbody");
  body.replaceChildren();
  if (!items.length) { const tr = body.insertRow(); const td = tr.insertCell(); td.colSpan = 9; td.className = "empty"; td.textContent = "no requests in range"; return; }
  for (const it of items) {
    const tr = body.insertRow(); tr.className = "pick"; tr.onclick = () => drill(dim, it[key]);
    for (const c of cells(it)) tr.insertCell().textContent = c;
  }
}
const layout = (extra) => Object.assign({margin:{l:48,r:12,t:8,b:36}, showlegend:true, legend:{orientation:"h", y:-0.2}, font:{size:11}}, extra || {});
const config = {displayModeBar:false, responsive:true};
async function load() {
  renderFilters();
  const r = await fetch("/analytics.json?" + query());
  const data = await r.json();
  if (!r.ok) { text("updated", data.error || "error"); document.body.dataset.error = data.error || "error"; return; }
  teamOptions(data.teams || []);
  document.body.dataset.loaded = "true";
  const t = data.totals;
  text("k-requests", fmt(t.requests)); text("k-errors", pct(t.error_rate));
  text("k-p50", ms(t.p50_ms)); text("k-p95", ms(t.p95_ms)); text("k-p99", ms(t.p99_ms));
  text("k-limited", fmt(t.limited)); text("k-denied", fmt(t.unauthorized) + " / " + fmt(t.forbidden));
  const xs = data.series.map(p => new Date(p.t * 1000));
  const ok = data.series.map(p => p.requests - p.errors - p.denied - p.limited);
  Plotly.react("c-requests", [
    {x: xs, y: ok, name: "ok", type: "bar", marker:{color:"#2f6fdb"}},
    {x: xs, y: data.series.map(p => p.errors), name: "5xx", type: "bar", marker:{color:"#c0352b"}},
    {x: xs, y: data.series.map(p => p.denied), name: "401/403", type: "bar", marker:{color:"#d9822b"}},
    {x: xs, y: data.series.map(p => p.limited), name: "429", type: "bar", marker:{color:"#9b59b6"}},
  ], layout({barmode: "stack"}), config);
  Plotly.react("c-latency", ["p50_ms", "p95_ms", "p99_ms"].map(k => ({x: xs, y: data.series.map(p => p[k]), name: k.replace("_ms", ""), mode: "lines+markers", connectgaps: false})), layout(), config);
  const bars = (items, key) => [{y: items.map(i => label(i[key])).reverse(), x: items.map(i => i.requests).reverse(), type: "bar", orientation: "h", marker:{color:"#2f6fdb"}, customdata: items.map(i => i[key]).reverse()}];
  Plotly.react("c-apis", bars(data.top_apis, "api"), layout({showlegend:false, margin:{l:110,r:12,t:8,b:30}}), config);
  Plotly.react("c-consumers", bars(data.top_consumers, "consumer"), layout({showlegend:false, margin:{l:110,r:12,t:8,b:30}}), config);
  for (const [id, dim] of [["c-apis", "api"], ["c-consumers", "consumer"]]) {
    const el = document.getElementById(id);
    if (!el.dataset.bound) { el.dataset.bound = "1"; el.on("plotly_click", ev => drill(dim, ev.points[0].customdata)); }
  }
  rows("#t-routes", data.top_routes, it => [it.route, fmt(it.requests), pct(it.error_rate), fmt(it.denied), fmt(it.limited), ms(it.p50_ms), ms(it.p95_ms), ms(it.p99_ms)], "route", "route");
  rows("#t-consumers", data.top_consumers, it => [label(it.consumer), it.plan, fmt(it.requests), pct(it.error_rate), fmt(it.denied), fmt(it.limited), ms(it.p50_ms), ms(it.p95_ms), ms(it.p99_ms)], "consumer", "consumer");
  const an = document.getElementById("anomalies");
  an.classList.toggle("hidden", !data.anomalies.length);
  const ab = an.querySelector("tbody"); ab.replaceChildren();
  for (const a of data.anomalies) {
    const tr = ab.insertRow();
    for (const c of [a.consumer, a.kind, a.detail, new Date(a.since * 1000).toLocaleTimeString()]) tr.insertCell().textContent = c;
  }
  text("updated", "updated " + new Date().toLocaleTimeString() + " · resolution " + data.resolution + "s");
  if (data.fleet) loadFleet();
}
async function loadFleet() {
  const r = await fetch("/analytics/fleet.json?range=" + rangeSel.value);
  const data = await r.json();
  const sec = document.getElementById("fleet");
  sec.classList.remove("hidden");
  if (!r.ok) { text("f-total", "error"); sec.querySelector("h2").textContent = "fleet (prometheus): " + data.error; return; }
  text("f-total", fmt(data.totals.requests)); text("f-range", fmt(data.in_range.requests)); text("f-p95", ms(data.in_range.p95_ms));
  const body = document.querySelector("#t-replicas tbody"); body.replaceChildren();
  for (const rep of data.totals.replicas) { const tr = body.insertRow(); tr.insertCell().textContent = rep.instance; tr.insertCell().textContent = fmt(rep.requests); }
}
load();
setInterval(load, 5000);
</script>
</body>
</html>
"""
