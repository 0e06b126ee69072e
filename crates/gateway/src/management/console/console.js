// The ClusterLink console: reads the management API of the gateway that serves it, every two
// seconds. Everything shown is set as text (never as HTML): names and messages may come from
// peers.
"use strict";

const API = "/apis/clusterlink.net/v1alpha1";
const PERIOD_MS = 2000;
let previous = null; // the last traffic sample, for throughput

async function json(path) {
  const response = await fetch(path, { headers: { accept: "application/json" } });
  if (!response.ok) throw new Error(path + ": " + response.status);
  return response.json();
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null || text === "" ? "-" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
}

function fill(tableId, rows, columns, empty) {
  const body = document.querySelector("#" + tableId + " tbody");
  const fresh = document.createElement("tbody");
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = columns;
    td.className = "empty";
    td.textContent = empty;
    tr.appendChild(td);
    fresh.appendChild(tr);
  }
  for (const cells of rows) {
    const tr = document.createElement("tr");
    for (const [text, className] of cells) cell(tr, text, className);
    fresh.appendChild(tr);
  }
  body.replaceWith(fresh);
}

function bytesPerSecond(n) {
  const units = ["B/s", "KiB/s", "MiB/s", "GiB/s"];
  let unit = 0;
  while (n >= 1024 && unit < units.length - 1) { n /= 1024; unit++; }
  return (unit === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[unit];
}

function rate(kind, name, now, seconds) {
  const before = previous && previous[kind][name];
  const after = now[kind][name];
  if (!before || !after || seconds <= 0) return "-";
  const moved = (after.sent + after.received) - (before.sent + before.received);
  return bytesPerSecond(Math.max(0, moved) / seconds);
}

function condition(object, type) {
  const found = ((object.status || {}).conditions || []).find((c) => c.type === type);
  return found || null;
}

function statusCells(object) {
  // The telling condition, as gwctl picks it (Status::telling): the first False, else the first
  // Unknown, else the kind's own.
  const conditions = (object.status || {}).conditions || [];
  const wrong = conditions.find((c) => c.status === "False") ||
    conditions.find((c) => c.status !== "True");
  const shown = wrong || conditions[0];
  if (!shown) return ["not reported yet", ""];
  return [shown.reason + ": " + shown.message, wrong ? "bad" : "good"];
}

function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return s < 60 ? s + " s ago" : Math.floor(s / 60) + " min ago";
}

const SVG = "http://www.w3.org/2000/svg";

function svg(name, attributes, text) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
}

// The fabric as this gateway sees it: itself in the middle, each peer around it, the line
// between coloured by the peer's health and labelled with the throughput to and from it.
function drawFabric(self, nodes) {
  const width = 720, height = 300, cx = width / 2, cy = height / 2;
  const picture = svg("svg", { viewBox: "0 0 " + width + " " + height, role: "img",
    "aria-label": "This gateway and its peers" });
  nodes.forEach((node, i) => {
    const angle = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(nodes.length, 1);
    node.x = cx + Math.cos(angle) * (width / 2 - 90);
    node.y = cy + Math.sin(angle) * (height / 2 - 45);
  });
  for (const node of nodes) {
    const link = svg("line", { x1: cx, y1: cy, x2: node.x, y2: node.y,
      class: "link " + node.state, "data-peer": node.name, "data-state": node.state });
    link.appendChild(svg("title", {}, node.name + ": " + node.says));
    picture.appendChild(link);
    picture.appendChild(svg("text", { x: (cx + node.x) / 2, y: (cy + node.y) / 2 - 6,
      class: "rate", "text-anchor": "middle" }, node.rate));
  }
  for (const node of [{ name: self, x: cx, y: cy, state: "self", says: "this gateway" }, ...nodes]) {
    const group = svg("g", { class: "node " + node.state, "data-node": node.name });
    group.appendChild(svg("circle", { cx: node.x, cy: node.y, r: node.state === "self" ? 26 : 20 }));
    group.appendChild(svg("text", { x: node.x, y: node.y + (node.state === "self" ? 44 : 38),
      "text-anchor": "middle" }, node.name));
    group.appendChild(svg("title", {}, node.name + ": " + node.says));
    picture.appendChild(group);
  }
  if (nodes.length === 0) {
    picture.appendChild(svg("text", { x: cx, y: cy + 60, "text-anchor": "middle", class: "rate" },
      "No peer yet: apply a Peer (gwctl link on the other site prints one)."));
  }
  document.getElementById("fabric").replaceChildren(picture);
}

// Refusals alike (side, who refused, reason, policy, import, export, peer) are one row with
// how many and which clients; a connection whose every source was refused is not counted
// again under AllSourcesFailed when its sources' own refusals are there.
function groupRefusals(events) {
  const explained = new Set(events.filter((e) => e.reason !== "AllSourcesFailed" && e.client)
    .map((e) => e.client));
  const groups = new Map();
  for (const e of events) {
    if (e.reason === "AllSourcesFailed" && explained.has(e.client)) continue;
    const key = [e.side, e.refusedBy, e.reason || e.outcome, e.policy, e.import, e.export, e.peer].join("|");
    const group = groups.get(key) || { latest: e, count: 0, clients: new Set() };
    group.count += 1;
    if (e.client) group.clients.add(e.client.replace(/:\d+$/, ""));
    groups.set(key, group);
  }
  return [...groups.values()];
}

async function refresh() {
  // Refusals are asked for on their own: the gateway keeps them apart from clean tunnels, so
  // a busy gateway's traffic never pushes them out of the answer.
  const [version, traffic, peers, exports, imports, events, problems, offers, policies, privileged] =
    await Promise.all([
      json("/version"),
      json("/api/v1/traffic"),
      json(API + "/peers"),
      json(API + "/exports"),
      json(API + "/imports"),
      json("/api/v1/events?limit=256"),
      json("/api/v1/events?problems=true&limit=256"),
      json("/api/v1/offers"),
      json(API + "/accesspolicies"),
      json(API + "/privilegedaccesspolicies"),
    ]);
  const denials = problems.filter((e) => e.outcome !== "DryRun");
  const now = { at: Date.now(), imports: traffic.imports, exports: traffic.exports, peers: traffic.peers };
  const seconds = previous ? (now.at - previous.at) / 1000 : 0;
  document.getElementById("gateway").textContent = version.peer;
  // The gateway's own judgement of its certificate (the CertificateValid condition).
  const certificate = (version.conditions || []).find((c) => c.type === "CertificateValid");
  const expires = certificate
    ? "; certificate " + (certificate.reason === "CertificateCurrent" ? "" : certificate.reason + ": ") +
      certificate.message
    : "";
  document.getElementById("summary").textContent =
    "version " + version.version + expires + "; " + peers.items.length + " peers, " +
    exports.items.length + " exports, " + imports.items.length + " imports";

  // Peers that reached this gateway lately without a Peer here (an exporting site need not
  // define its clients' sites): seen in its recent tunnels.
  const defined = new Set(peers.items.map((p) => p.metadata.name));
  const inbound = [...new Set(events.filter((e) => e.side === "ingress" && e.peer && !defined.has(e.peer))
    .map((e) => e.peer))].sort();
  const nodes = peers.items.map((p) => {
    const seen = traffic.peers[p.metadata.name] || {};
    const state = seen.reachable === true ? "good" : seen.reachable === false ? "bad" : "unknown";
    const says = state === "good" ? "reachable" : state === "bad" ? "UNREACHABLE" : "not probed yet";
    return { name: p.metadata.name, state, says, rate: rate("peers", p.metadata.name, now, seconds), seen, peer: p };
  });
  for (const name of inbound) {
    nodes.push({ name, state: "inbound", says: "connects to this gateway (no Peer defined here)", rate: "" });
  }
  drawFabric(version.peer, nodes);

  fill("peers", nodes.map((n) => n.peer ? [
    [n.name],
    [n.peer.spec.gateways.map((g) => g.host + ":" + g.port).join(", ")],
    [n.says, n.state === "unknown" ? "" : n.state],
    [n.seen.latencyMs !== undefined ? n.seen.latencyMs.toFixed(1) + " ms" : "-"],
    [n.rate],
    [n.seen.lastError || "-"],
  ] : [[n.name], ["-"], [n.says], ["-"], ["-"], ["-"]]), 6, "No peers defined, and none has connected lately.");

  fill("exports", exports.items.map((e) => {
    const name = e.metadata.namespace + "/" + e.metadata.name;
    const t = traffic.exports[name] || { activeTunnels: 0 };
    return [
      [name],
      [(e.spec.host || e.metadata.name) + ":" + (e.spec.port || "-")],
      statusCells(e),
      [t.activeTunnels],
      [rate("exports", name, now, seconds)],
    ];
  }), 5, "No exports.");

  fill("imports", imports.items.map((i) => {
    const name = i.metadata.namespace + "/" + i.metadata.name;
    const t = traffic.imports[name] || { activeTunnels: 0 };
    return [
      [name],
      [i.spec.port],
      [i.spec.sources.map((s) => s.peer + "/" + s.exportNamespace + "/" + s.exportName).join(", ")],
      statusCells(i),
      [t.activeTunnels],
      [rate("imports", name, now, seconds)],
    ];
  }), 6, "No imports.");

  fill("offers", Object.entries(offers).flatMap(([peer, listed]) => listed.map((s) => {
    const state = s.state;
    const here = state.imported ? ["imported as " + state.imported, "good"]
      : state.notImported ? ["not imported: " + state.notImported, "bad"]
      : ["not imported (no mirror rule selects it)", ""];
    const labels = Object.entries(s.offer.labels || {}).map(([k, v]) => k + "=" + v).join(", ");
    return [[peer], [s.offer.namespace + "/" + s.offer.name], [s.offer.port], [labels || "-"], here];
  })), 5, "No offers: no peer offers anything this site may reach, or none answered yet.");

  const groups = groupRefusals(denials);
  fill("denials", groups.map((g) => [
    [ago(g.latest.timeMs)],
    ["×" + g.count],
    [g.latest.side],
    [g.latest.refusedBy, "bad"],
    [g.latest.reason || g.latest.outcome],
    [g.latest.policy],
    [g.latest.import],
    [g.latest.export],
    [g.latest.peer],
    [[...g.clients].slice(0, 5).join(", ") + (g.clients.size > 5 ? " and " + (g.clients.size - 5) + " more" : "")],
    [g.latest.message],
  ]), 11, "No refusals.");

  const decided = (reference) => denials.filter((e) => e.policy === reference).length;
  const selectors = (entries) => entries.map((e) => {
    const s = e.workloadSelector || {};
    const parts = Object.entries(s.matchLabels || {}).map(([k, v]) => k + "=" + v)
      .concat((s.matchExpressions || []).map((r) => r.key + " " + r.operator + " (" + (r.values || []).join(",") + ")"));
    return parts.length ? parts.join(", ") : "*";
  }).join(" | ");
  // As events name them (PolicyRef): `namespace/name`, or `privileged:name`.
  fill("policies", policies.items.map((p) => ["AccessPolicy " + p.metadata.namespace + "/" + p.metadata.name,
    p.metadata.namespace + "/" + p.metadata.name, p])
    .concat(privileged.items.map((p) => ["PrivilegedAccessPolicy " + p.metadata.name, "privileged:" + p.metadata.name, p]))
    .map(([title, name, p]) => [
      [title],
      [p.spec.action, p.spec.action === "deny" ? "bad" : "good"],
      [selectors(p.spec.from || [])],
      [selectors(p.spec.to || [])],
      [decided(name)],
    ]), 5, "No policies: every connection is denied by default.");

  previous = now;
  document.getElementById("updated").textContent = "Last update: " + new Date().toLocaleTimeString();
}

async function loop() {
  try {
    await refresh();
  } catch (error) {
    document.getElementById("summary").textContent = "Cannot read the gateway: " + error.message;
  }
  setTimeout(loop, PERIOD_MS);
}

loop();
