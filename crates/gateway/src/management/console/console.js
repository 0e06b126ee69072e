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
  // The first condition that is not True says what is wrong; else the kind's own.
  const conditions = (object.status || {}).conditions || [];
  const wrong = conditions.find((c) => c.status !== "True");
  const shown = wrong || conditions[0];
  if (!shown) return ["not reported yet", ""];
  return [shown.reason + ": " + shown.message, wrong ? "bad" : "good"];
}

function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return s < 60 ? s + " s ago" : Math.floor(s / 60) + " min ago";
}

async function refresh() {
  const [version, traffic, peers, exports, imports, denials, offers] = await Promise.all([
    json("/version"),
    json("/api/v1/traffic"),
    json(API + "/peers"),
    json(API + "/exports"),
    json(API + "/imports"),
    json("/api/v1/events?problems=true&limit=25"),
    json("/api/v1/offers"),
  ]);
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

  fill("peers", peers.items.map((p) => {
    const seen = traffic.peers[p.metadata.name] || {};
    const reachable = seen.reachable === true ? ["reachable", "good"]
      : seen.reachable === false ? ["UNREACHABLE", "bad"] : ["not probed yet", ""];
    return [
      [p.metadata.name],
      [p.spec.gateways.map((g) => g.host + ":" + g.port).join(", ")],
      reachable,
      [seen.latencyMs !== undefined ? seen.latencyMs.toFixed(1) + " ms" : "-"],
      [rate("peers", p.metadata.name, now, seconds)],
      [seen.lastError || "-"],
    ];
  }), 6, "No peers defined.");

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

  fill("denials", denials.map((e) => [
    [ago(e.timeMs)],
    [e.side],
    [e.refusedBy, "bad"],
    [e.reason || e.outcome],
    [e.policy],
    [e.import],
    [e.export],
    [e.peer],
    [e.message],
  ]), 9, "No refusals.");

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
