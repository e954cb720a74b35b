# ruff: noqa: E501, RUF001
"""The fleet dashboard's HTML: one self-contained page (inline CSS and JS, no external asset).

A Python string rather than a package data file so that every install, editable or wheel, has it.
Untrusted text (NACK errors, load errors, node ids) only ever goes into ``textContent``.
"""

from __future__ import annotations

__all__ = ["PAGE"]

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>waypost fleet</title>
<style>
  :root { --bg:#f4f6f9; --card:#fff; --ink:#1c2430; --muted:#66707e; --line:#e3e7ed;
          --ok:#17864b; --okbg:#e5f5ec; --bad:#c0352b; --badbg:#fbe9e7; --warn:#a66300; --warnbg:#fdf2de;
          --c1:#2f6fdb; --c2:#d9822b; --c3:#c0352b; --c4:#9aa6b5; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; background:var(--bg); color:var(--ink); }
  header { background:#1c2430; color:#fff; padding:14px 24px; display:flex; align-items:baseline; gap:18px; flex-wrap:wrap; }
  header h1 { margin:0; font-size:18px; letter-spacing:.02em; }
  header .version { font-family:ui-monospace,Menlo,Consolas,monospace; font-size:13px; color:#c9d3e0; }
  header .updated { margin-left:auto; font-size:12px; color:#9aa6b5; }
  main { padding:20px 24px; max-width:1280px; margin:0 auto; }
  .cards { display:grid; grid-template-columns:repeat(auto-fit,minmax(150px,1fr)); gap:12px; margin-bottom:16px; }
  .card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px 14px; }
  .card .label { font-size:12px; color:var(--muted); text-transform:uppercase; letter-spacing:.04em; }
  .card .value { font-size:26px; font-weight:600; margin-top:2px; font-variant-numeric:tabular-nums; }
  .card .value small { font-size:13px; color:var(--muted); font-weight:400; }
  section { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:14px 16px; margin-bottom:16px; }
  section h2 { font-size:14px; margin:0 0 10px; text-transform:uppercase; letter-spacing:.04em; color:var(--muted); }
  table { width:100%; border-collapse:collapse; }
  th, td { text-align:left; padding:7px 8px; border-bottom:1px solid var(--line); vertical-align:top; }
  th { font-size:12px; color:var(--muted); font-weight:600; }
  td.mono, .mono { font-family:ui-monospace,Menlo,Consolas,monospace; font-size:12.5px; }
  .badge { display:inline-block; padding:2px 9px; border-radius:999px; font-size:12px; font-weight:600; }
  .badge.ok { background:var(--okbg); color:var(--ok); }
  .badge.bad { background:var(--badbg); color:var(--bad); }
  .badge.warn { background:var(--warnbg); color:var(--warn); }
  .types span { margin-right:6px; white-space:nowrap; }
  .empty { color:var(--muted); font-style:italic; }
  .error { background:var(--badbg); border-color:#f1c4be; }
  .error h2 { color:var(--bad); }
  .error h2 span { text-transform:none; font-weight:400; letter-spacing:0; }
  .error pre { margin:0; white-space:pre-wrap; font:12.5px/1.5 ui-monospace,Menlo,Consolas,monospace; }
  .legend { display:flex; gap:16px; font-size:12px; color:var(--muted); margin-bottom:6px; }
  .legend i { display:inline-block; width:10px; height:3px; margin-right:5px; vertical-align:middle; }
  svg text { font-size:11px; fill:var(--muted); }
  .hidden { display:none; }
  .note { margin-left:auto; font-style:italic; }
  .card .value.text { font-size:18px; padding-top:6px; }
</style>
</head>
<body>
<header>
  <h1>waypost fleet</h1>
  <span class="version" id="version">loading…</span>
  <a href="/analytics" id="analytics-link" style="color:#c9d3e0;font-size:13px">call analytics</a>
  <label style="font-size:13px;color:#c9d3e0">team <select id="team"><option value="">all teams</option></select></label>
  <span class="updated" id="updated"></span>
</header>
<main>
  <div class="cards">
    <div class="card"><div class="label">Envoys in sync</div><div class="value" id="c-sync">–</div></div>
    <div class="card"><div class="label">NACKs</div><div class="value" id="c-nacks">–</div></div>
    <div class="card"><div class="label">Decisions / s</div><div class="value" id="c-decisions">–</div></div>
    <div class="card"><div class="label">4xx / s (auth)</div><div class="value" id="c-denied">–</div></div>
    <div class="card"><div class="label">429 / s (rate limit)</div><div class="value" id="c-limited">–</div></div>
    <div class="card"><div class="label">Policy loaded</div><div class="value text" id="c-loaded">–</div></div>
  </div>
  <section class="error hidden" id="pull-error">
    <h2>git pull failing <span id="pull-error-at"></span></h2>
    <pre id="pull-error-text"></pre>
  </section>
  <section class="error hidden" id="unserved">
    <h2>Routes whose decision service nothing serves</h2>
    <pre id="unserved-text"></pre>
  </section>
  <section class="error hidden" id="teams-held">
    <h2>Teams held at their last good version</h2>
    <pre id="teams-held-text"></pre>
  </section>
  <section class="hidden" id="team-view">
    <h2>Team <span id="team-name"></span> <span class="note" id="team-owners"></span></h2>
    <table>
      <thead><tr><th>route</th><th>gateway</th><th>hosts</th></tr></thead>
      <tbody id="team-routes"></tbody>
    </table>
    <p class="mono" id="team-owns"></p>
  </section>
  <section class="error hidden" id="load-error">
    <h2>Last policy change refused <span id="load-error-at"></span></h2>
    <pre id="load-error-text"></pre>
  </section>
  <section>
    <h2>Decisions, last minutes</h2>
    <div class="legend">
      <span><i style="background:var(--c1)"></i>decisions/s</span>
      <span><i style="background:var(--c2)"></i>4xx/s</span>
      <span><i style="background:var(--c3)"></i>429/s</span>
      <span><i style="background:var(--c4)"></i>xDS pushes/s</span>
      <span id="absent" class="note"></span>
    </div>
    <svg id="chart" width="100%" height="160" viewBox="0 0 1000 160" preserveAspectRatio="none"></svg>
  </section>
  <section>
    <h2>Decision services <span class="note" id="advertise"></span></h2>
    <table>
      <thead><tr><th>cluster</th><th>service</th><th>served by</th><th>endpoints</th><th>needed by routes</th></tr></thead>
      <tbody id="decisions"></tbody>
    </table>
  </section>
  <section>
    <h2>Envoy nodes</h2>
    <table>
      <thead><tr><th>node</th><th>cluster / labels</th><th>gateways</th><th>state</th><th>resources (acked version)</th><th>connected</th></tr></thead>
      <tbody id="nodes"></tbody>
    </table>
  </section>
  <section>
    <h2>NACKs</h2>
    <table>
      <thead><tr><th>node</th><th>type</th><th>rejected version</th><th>error</th><th>at</th></tr></thead>
      <tbody id="nacks"></tbody>
    </table>
  </section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}
const fmt = (n) => (n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n.toFixed(2));
const ago = (t, now) => {
  const s = Math.max(0, Math.round(now - t));
  return s < 60 ? s + "s ago" : s < 3600 ? Math.round(s / 60) + "m ago" : Math.round(s / 3600) + "h ago";
};
const inSync = (node) => {
  const types = Object.values(node.types || {});
  return types.length > 0 && types.every((t) => t.in_sync);
};

function render(data) {
  const st = data.status, policy = st.policy || {}, now = st.time;
  const git = policy.git && policy.git.describe ? policy.git.describe : null;
  $("version").textContent = policy.version
    ? (git ? "commit " + git + " · " : "") + "version " + policy.version.slice(0, 12)
    : "no valid policy loaded";
  $("updated").textContent = "updated " + new Date(now * 1000).toLocaleTimeString();
  const nodes = st.nodes || [];
  const synced = nodes.filter(inSync).length;
  $("c-sync").replaceChildren(el("span", {}, String(synced)), el("small", {}, " / " + nodes.length));
  const nacks = [];
  for (const node of nodes)
    for (const [type, state] of Object.entries(node.types || {}))
      if (state.last_nack) nacks.push({ node, type, nack: state.last_nack });
  $("c-nacks").textContent = String(nacks.length);
  $("c-nacks").style.color = nacks.length ? "var(--bad)" : "";
  $("c-decisions").textContent = fmt(data.now.decisions || 0);
  $("c-denied").textContent = fmt(data.now.denied || 0);
  $("c-limited").textContent = fmt(data.now.limited || 0);
  $("c-loaded").textContent = policy.applied_at ? ago(policy.applied_at, now) : "never";
  const absent = ["authz", "ratelimit"].filter((k) => !(data.metrics || []).some((m) => m.includes(k)));
  $("absent").textContent = absent.length ? "no " + absent.join(" or ") + " decisions reported by this process yet" : "";

  const pull = policy.git && policy.git.last_pull;
  $("pull-error").classList.toggle("hidden", !pull || pull.ok);
  if (pull && !pull.ok) {
    $("pull-error-at").textContent = pull.at ? ago(pull.at, now) : "";
    $("pull-error-text").textContent = pull.message || "";
  }
  if (git && policy.git.branch) $("version").textContent += " · branch " + policy.git.branch;

  const err = policy.last_error;
  $("load-error").classList.toggle("hidden", !err);
  if (err) {
    const commit = err.git && err.git.describe ? " (commit " + err.git.describe + ")" : "";
    $("load-error-at").textContent = ago(err.at, now) + commit;
    $("load-error-text").textContent = err.errors.join("\n");
  }

  const held = Object.entries(policy.teams || {}).filter(([, t]) => t.state !== "serving");
  $("teams-held").classList.toggle("hidden", held.length === 0);
  $("teams-held-text").textContent = held
    .map(([name, t]) => "team " + name + " (" + t.state + ", " + ago(t.since, now) + "):\n  " + t.errors.join("\n  "))
    .join("\n");

  const plane = st.decision_services || { clusters: {}, unserved: [] };
  const unserved = plane.unserved || [];
  $("unserved").classList.toggle("hidden", unserved.length === 0);
  $("unserved-text").textContent = unserved
    .map((p) => "route " + p.route + " needs " + p.service + " (" + p.cluster + "): " + p.fix).join("\n");
  $("advertise").textContent = plane.advertise_address ? "advertised at " + plane.advertise_address : "";
  const decisionRows = Object.entries(plane.clusters || {}).map(([name, c]) => {
    const missing = c.needed_by.length > 0 && c.endpoints.length === 0;
    const by = c.served_by || (c.needed_by.length ? "nothing" : "not needed");
    return el("tr", { "data-cluster": name },
      el("td", { class: "mono" }, name), el("td", {}, c.service),
      el("td", {}, missing ? el("span", { class: "badge bad" }, by) : by + (c.health_checked ? " (health-checked)" : "")),
      el("td", { class: "mono" }, c.endpoints.join(", ") || "—"),
      el("td", {}, c.needed_by.join(", ") || "—"));
  });
  $("decisions").replaceChildren(...decisionRows);

  const rows = nodes.map((node) => {
    const ok = inSync(node);
    const nacked = !ok && Object.values(node.types || {}).some((t) => !t.in_sync && t.last_nack);
    const state = ok ? ["ok", "in-sync", "in sync"] : nacked ? ["bad", "nacked", "rejected"] : ["warn", "behind", "syncing"];
    const types = el("td", { class: "types mono" });
    for (const [type, state] of Object.entries(node.types || {})) {
      const version = state.acked_version ? state.acked_version.slice(0, 8) : "—";
      types.append(el("span", { title: state.in_sync ? "in sync" : "behind" },
        (state.in_sync ? "✓ " : "✗ ") + type + " " + version));
    }
    const labels = Object.entries(node.labels || {}).map(([k, v]) => k + "=" + v).join(", ");
    return el("tr", { "data-node": node.id || "" },
      el("td", { class: "mono" }, node.id || "?"),
      el("td", {}, (node.cluster || "") + (labels ? " · " + labels : "")),
      el("td", {}, (node.gateways || []).join(", ") || "—"),
      el("td", {}, el("span", { class: "badge " + state[0], "data-sync": state[1] }, state[2])),
      types,
      el("td", {}, node.connected_since ? ago(node.connected_since, now) : "—"));
  });
  $("nodes").replaceChildren(...(rows.length ? rows
    : [el("tr", {}, el("td", { colspan: "6", class: "empty" }, "no Envoy connected"))]));

  const nackRows = nacks.map(({ node, type, nack }) => el("tr", {},
    el("td", { class: "mono" }, node.id || "?"), el("td", {}, type),
    el("td", { class: "mono" }, (nack.version || "").slice(0, 12)),
    el("td", { class: "mono" }, nack.error || ""), el("td", {}, ago(nack.at, now))));
  $("nacks").replaceChildren(...(nackRows.length ? nackRows
    : [el("tr", {}, el("td", { colspan: "5", class: "empty" }, "no rejected pushes"))]));

  drawChart(data.series || [], now);
}

function drawChart(series, now) {
  const svg = $("chart"), W = 1000, H = 160, pad = 22, left = 40;
  const ns = "http://www.w3.org/2000/svg";
  const mk = (tag, attrs) => { const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v); return n; };
  svg.replaceChildren();
  const span = 600, t0 = now - span;
  const max = Math.max(1, ...series.flatMap((p) => [p.decisions, p.denied, p.limited, p.pushes]));
  const x = (t) => left + ((t - t0) / span) * (W - left - 8);
  const y = (v) => H - pad - (v / max) * (H - pad - 8);
  for (const frac of [0, 0.5, 1]) {
    svg.append(mk("line", { x1: left, x2: W - 8, y1: y(max * frac), y2: y(max * frac), stroke: "#e3e7ed" }));
    const label = mk("text", { x: 4, y: y(max * frac) + 4 }); label.textContent = fmt(max * frac); svg.append(label);
  }
  for (const m of [10, 5, 0]) {
    const label = mk("text", { x: x(now - m * 60) - (m ? 14 : 24), y: H - 5 });
    label.textContent = m ? "-" + m + "m" : "now"; svg.append(label);
  }
  const lines = [["pushes", "var(--c4)"], ["limited", "var(--c3)"], ["denied", "var(--c2)"], ["decisions", "var(--c1)"]];
  for (const [key, color] of lines) {
    const pts = series.filter((p) => p.t >= t0).map((p) => x(p.t).toFixed(1) + "," + y(p[key]).toFixed(1));
    if (pts.length) svg.append(mk("polyline", { points: pts.join(" "), fill: "none", stroke: color,
      "stroke-width": 2, "vector-effect": "non-scaling-stroke" }));
  }
}

const teamSel = $("team");
const team = new URLSearchParams(location.search).get("team") || "";
teamSel.onchange = () => { location.search = teamSel.value ? "?team=" + encodeURIComponent(teamSel.value) : ""; };
if (team) $("analytics-link").href = "/analytics?team=" + encodeURIComponent(team);

function renderTeam(data) {
  const have = [...teamSel.options].slice(1).map((o) => o.value).join("\n");
  if (have !== (data.teams || []).join("\n")) {
    teamSel.replaceChildren(teamSel.options[0], ...(data.teams || []).map((t) => el("option", { value: t }, t)));
  }
  teamSel.value = team;
  const view = data.team;
  $("team-view").classList.toggle("hidden", !view);
  if (!view) return;
  $("team-name").textContent = view.name;
  $("team-owners").textContent = view.owners.join(", ");
  const rows = view.routes.map((r) => el("tr", { "data-route": r.name },
    el("td", { class: "mono" }, r.name), el("td", {}, r.gateway), el("td", { class: "mono" }, r.hosts.join(", ") || "*")));
  $("team-routes").replaceChildren(...(rows.length ? rows
    : [el("tr", {}, el("td", { colspan: "3", class: "empty" }, "no routes serving"))]));
  $("team-owns").textContent = ["services", "consumers", "apis"]
    .map((k) => k + ": " + (view[k].join(", ") || "—")).join(" · ");
}

async function poll() {
  try {
    const response = await fetch("dashboard.json" + (team ? "?team=" + encodeURIComponent(team) : ""), { cache: "no-store" });
    const data = await response.json();
    if (!response.ok) {
      $("version").textContent = data.error || "error";
      document.body.dataset.error = data.error || "error";
      return;
    }
    render(data);
    renderTeam(data);
    document.body.dataset.loaded = "true";
  } catch (e) {
    $("updated").textContent = "cannot reach waypost: " + e;
  }
}
poll();
setInterval(poll, 2000);
</script>
</body>
</html>
"""
