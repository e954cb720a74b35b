// The portal's pages call the portal's JSON API (see /api/docs); nothing here builds HTML from
// strings: data goes in with textContent only.
"use strict";
const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

function say(text, ok) {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = ok ? "ok" : "error";
}

async function call(method, url, body) {
  const options = { method, headers: { "x-csrf-token": csrf() }, credentials: "same-origin" };
  if (body !== undefined) {
    options.headers["content-type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const answer = await fetch(url, options);
  const data = await answer.json().catch(() => ({}));
  if (!answer.ok) {
    const detail = data.detail ? ": " + data.detail.map((d) => d.loc.slice(-1) + " " + d.msg).join("; ") : "";
    throw new Error((data.error || answer.statusText) + detail);
  }
  return data;
}

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function actionButton(label, method, url, then, id) {
  const button = el("button", label, { "data-api": url, "data-method": method, "data-then": then || "reload" });
  if (id) button.id = id;
  wire(button);
  return button;
}

async function after(then, data) {
  if (then === "showkey") {
    document.getElementById("new-key").hidden = false;
    document.getElementById("new-key-value").textContent = data.key;
    say(data.status === "pending" ? "Signed up: an admin approves your account." : "Done.", true);
  } else if (then === "console") {
    document.getElementById("console-output").textContent =
      data.status + "\n" + Object.entries(data.headers).map(([k, v]) => k + ": " + v).join("\n") + "\n\n" + data.body;
  } else if (then === "reload") {
    location.reload();
  } else if (then) {
    location.href = then;
  }
}

function wire(node) {
  const run = async (body) => {
    try {
      const data = await call(node.dataset.method || "POST", node.dataset.api, body);
      await after(node.dataset.then, data);
    } catch (error) {
      say(error.message, false);
    }
  };
  if (node.tagName === "FORM") {
    node.addEventListener("submit", (event) => {
      event.preventDefault();
      const body = {};
      for (const [k, v] of new FormData(node).entries()) if (v !== "") body[k] = v;
      run(body);
    });
  } else {
    node.addEventListener("click", () => run(undefined));
  }
}

function table(headers, rows) {
  const t = el("table");
  const head = el("tr");
  headers.forEach((h) => head.appendChild(el("th", h)));
  t.appendChild(head);
  rows.forEach((cells) => {
    const tr = el("tr");
    cells.forEach((c) => { const td = el("td"); td.append(c instanceof Node ? c : document.createTextNode(c ?? "")); tr.appendChild(td); });
    t.appendChild(tr);
  });
  return t;
}

function usageText(routes) {
  const parts = [];
  for (const r of routes) {
    if (r.limits === null) { parts.push(r.route + ": usage not available here"); continue; }
    for (const l of r.limits) parts.push(`${r.route}: ${l.used} used, ${l.remaining} of ${l.limit} left this ${l.per}`);
    if (!r.limits.length) parts.push(r.route + ": no limit");
  }
  return parts.join("; ");
}

const renderers = {
  account(root, me) {
    root.appendChild(el("p", "Status: " + me.status, { id: "account-status" }));
    root.appendChild(el("h2", "Keys"));
    root.appendChild(table(["Prefix", "Created", ""], me.keys.map((k) => {
      const cell = el("span");
      cell.append(actionButton("Rotate", "POST", `/api/keys/${k.id}/rotate`, "showkey"), " ",
                  actionButton("Revoke", "DELETE", `/api/keys/${k.id}`));
      return [k.prefix || "(unknown)", k.created || "", cell];
    })));
    root.appendChild(el("h2", "Subscriptions"));
    const subs = me.subscriptions.map((s) => [s.api || s.route, s.plan || "", s.status, usageText(s.routes)]);
    me.pending.forEach((p) => subs.push([p.subject, "", "pending approval", ""]));
    me.failed.forEach((f) => subs.push([f.action, "", "failed: " + f.error, ""]));
    const t = table(["API", "Plan", "Status", "Usage"], subs);
    t.id = "subscriptions";
    root.appendChild(t);
  },
  requests(root, data) {
    root.appendChild(table(["Request", "By", "When", ""], data.pending.map((r) => {
      const cell = el("span");
      cell.append(actionButton("Approve", "POST", `/api/admin/requests/${r.id}/approve`, "reload", "approve-" + r.id), " ",
                  actionButton("Reject", "POST", `/api/admin/requests/${r.id}/reject`, "reload", "reject-" + r.id));
      return [r.subject, r.author, r.date, cell];
    })));
    if (data.failed.length) {
      root.appendChild(el("h3", "Failed"));
      root.appendChild(table(["Action", "By", "Error"], data.failed.map((f) => [f.action, f.by, f.error])));
    }
  },
  consumers(root, list) {
    root.appendChild(table(["Consumer", "Keys", "Subscriptions"], list.map((c) => {
      const keys = el("span");
      c.keys.forEach((k) => keys.append(k.prefix || k.id.slice(0, 8), " ",
        actionButton("Revoke", "DELETE", `/api/admin/consumers/${c.name}/keys/${k.id}`), " "));
      const subs = el("span");
      c.subscriptions.forEach((s) => {
        subs.append(`${s.api || s.route} ${s.plan || ""} ${s.status} `);
        if (s.api && s.status !== "revoked") subs.append(actionButton("Revoke", "DELETE", `/api/admin/consumers/${c.name}/subscriptions/${s.api}`), " ");
      });
      return [c.name, keys, subs];
    })));
  },
  log(root, entries) {
    root.appendChild(table(["Commit", "Author", "Date", "Change"], entries.map((e) => [e.commit, e.author, e.date, e.subject])));
  },
};

document.querySelectorAll("[data-api]").forEach(wire);
document.querySelectorAll("[data-load]").forEach(async (root) => {
  try {
    const data = await call("GET", root.dataset.load);
    renderers[root.id](root, data);
    root.dataset.loaded = "true";
  } catch (error) {
    say(error.message, false);
  }
});

// The catalog's team selector shows that team's APIs as soon as one is picked (the Show button
// does the same without script).
const teamFilter = document.getElementById("team-filter");
if (teamFilter) teamFilter.querySelector("select").addEventListener("change", () => teamFilter.submit());
