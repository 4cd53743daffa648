// The status page: a static shell that reads /v1 with the caller's credential and refreshes
// itself. Every value is put in the page with textContent (never as HTML), so nothing a watch,
// a webhook or a quarantined message carries can run here.
"use strict";

const KEY = "lrobridge.apiKey";
const REFRESH_MS = 5000;
let timer = null;

const $ = (id) => document.getElementById(id);

class AuthError extends Error {}

async function api(path, options = {}) {
  const headers = { Accept: "application/json" };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const key = sessionStorage.getItem(KEY);
  if (key) headers.Authorization = "Bearer " + key;
  const response = await fetch(path, { ...options, headers, credentials: "omit" });
  const text = await response.text();
  const body = text ? JSON.parse(text) : null;
  if (response.status === 401 || response.status === 403) {
    throw new AuthError((body && body.error && body.error.message) || response.statusText);
  }
  if (!response.ok) {
    throw new Error((body && body.error && body.error.message) || `HTTP ${response.status}`);
  }
  return body;
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function badge(text, kind) {
  return el("span", { class: "badge " + kind }, text);
}

// rows: list of objects; columns: [heading, (row) => cell content, optional td class]
function table(target, rows, columns, empty) {
  const holder = $(target);
  holder.replaceChildren();
  if (!rows || rows.length === 0) {
    holder.append(el("div", { class: "empty" }, empty));
    return;
  }
  const head = el("tr", {}, ...columns.map(([heading]) => el("th", {}, heading)));
  const body = rows.map((row) =>
    el("tr", {}, ...columns.map(([, cell, cls]) => el("td", cls ? { class: cls } : {}, cell(row)))),
  );
  holder.append(el("table", {}, el("thead", {}, head), el("tbody", {}, ...body)));
}

function age(seconds) {
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  if (seconds < 3600) return `${(seconds / 60).toFixed(1)} min`;
  if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} d`;
}

function when(text) {
  return text ? text.replace("T", " ").replace(/\.\d+Z$/, "Z") : "";
}

function id(name) {
  return name.slice(name.indexOf("/") + 1);
}

function stateBadge(state) {
  const kind = { SUCCEEDED: "ok", COMPLETED: "ok", ENABLED: "ok", PENDING: "warn",
    ACTIVE: "warn", PUBLISHING: "warn", DEAD: "bad", FAILED: "bad", DISABLED: "bad" }[state];
  return badge(state, kind || "");
}

function renderStates(status) {
  const tiles = $("states");
  tiles.replaceChildren();
  const byState = status.watches.byState;
  const tile = (label, value, kind = "") =>
    el("div", { class: "tile " + kind }, el("div", { class: "n" }, value), el("div", { class: "l" }, label));
  for (const state of Object.keys(byState)) {
    tiles.append(tile(state.toLowerCase() + " watches", byState[state], state === "FAILED" && byState[state] ? "bad" : ""));
  }
  const outbox = status.outbox;
  tiles.append(tile("unacknowledged", outbox.backlog, outbox.backlog ? "warn" : ""));
  tiles.append(tile("oldest unacked", outbox.backlog ? age(outbox.oldestAgeSeconds) : "–",
    outbox.oldestAgeSeconds > 600 ? "bad" : ""));
}

function renderWatches(target, watches, empty) {
  table(target, watches, [
    ["watch", (w) => w.name, "mono"],
    ["operation", (w) => w.operation, "mono wrap"],
    ["source", (w) => w.source, "mono wrap"],
    ["state", (w) => stateBadge(w.state)],
    ["running for", (w) => age(w.ageSeconds)],
    ["polls", (w) => w.polls || 0],
    ["last error", (w) => (w.lastError ? `${w.lastError.code}: ${w.lastError.message}` : "")],
  ], empty);
}

function health(webhook) {
  if (webhook.state === "DISABLED") return badge("disabled: " + (webhook.disabledReason || ""), "bad");
  if (webhook.failingSince) return badge("failing since " + when(webhook.failingSince), "warn");
  return badge("healthy", "ok");
}

function lastAttempt(delivery) {
  const attempts = delivery.attempts || [];
  const last = attempts[attempts.length - 1];
  if (last) return `${last.statusCode || "no answer"} in ${last.latency}${last.error ? " – " + last.error : ""}`;
  return delivery.lastStatusCode ? String(delivery.lastStatusCode) : "";
}

const deliveryColumns = [
  ["delivery", (d) => id(d.name), "mono"],
  ["webhook", (d) => id(d.webhook), "mono"],
  ["operation", (d) => d.operation, "mono wrap"],
  ["event", (d) => d.eventType],
  ["state", (d) => stateBadge(d.state)],
  ["attempts", (d) => d.attemptCount],
  ["last attempt", lastAttempt],
  ["updated", (d) => when(d.updateTime)],
];

async function replay(delivery, button) {
  button.disabled = true;
  button.textContent = "Replaying…";
  try {
    await api(`/v1/${delivery.name}:retry`, { method: "POST", body: "{}" });
    button.textContent = "Replayed";
    await refresh();
  } catch (error) {
    button.disabled = false;
    button.textContent = "Replay";
    showError(error);
  }
}

function showError(error) {
  $("error").hidden = false;
  $("error").textContent = String(error.message || error);
}

async function refresh() {
  clearTimeout(timer);
  try {
    const [status, webhooks, deliveries, dead, quarantine] = await Promise.all([
      api("/v1/status"),
      api("/v1/webhooks?pageSize=100"),
      api("/v1/deliveries?pageSize=20"),
      api("/v1/deliveries?pageSize=50&state=DEAD"),
      api("/v1/quarantine?pageSize=20"),
    ]);
    $("login").hidden = true;
    $("error").hidden = true;
    $("content").hidden = false;
    $("signout").hidden = !sessionStorage.getItem(KEY);
    renderStates(status);
    renderWatches("slowest", status.watches.slowest, "no watch is running");
    renderWatches("failing", status.watches.failing, "no watch is failing");
    table("completions", status.recentCompletions, [
      ["received", (c) => when(c.time)],
      ["operation", (c) => c.operation, "mono wrap"],
      ["outcome", (c) => badge(c.outcome, c.outcome === "succeeded" ? "ok" : "warn")],
      ["push", (c) => c.push],
      ["event id", (c) => c.eventId, "mono"],
      ["trace", (c) => c.traceId || "–", "mono"],
    ], "no completion received since this instance started");
    table("webhooks", webhooks.webhooks, [
      ["webhook", (w) => id(w.name), "mono"],
      ["url", (w) => w.url, "mono wrap"],
      ["filter", (w) => [w.operation, (w.outcomes || []).join(", ")].filter(Boolean).join(" · ") || "everything"],
      ["health", health],
    ], "no webhook registered");
    table("deliveries", deliveries.deliveries, deliveryColumns, "no delivery yet");
    table("dead", dead.deliveries, [
      ...deliveryColumns,
      ["", (d) => {
        const button = el("button", { type: "button", "data-delivery": d.name }, "Replay");
        button.addEventListener("click", () => replay(d, button));
        return button;
      }],
    ], "no dead letter");
    table("quarantine", quarantine.messages, [
      ["id", (m) => m.id, "mono"],
      ["received", (m) => when(m.receiveTime)],
      ["reason", (m) => m.reason],
      ["size", (m) => `${Math.round((m.body.length * 3) / 4)} bytes`],
    ], "nothing quarantined");
    $("meta").textContent = `updated ${when(status.time)} · refreshes every ${REFRESH_MS / 1000} s`;
  } catch (error) {
    if (error instanceof AuthError) {
      $("content").hidden = true;
      $("login").hidden = false;
      $("login-why").textContent = sessionStorage.getItem(KEY)
        ? "That credential was refused: " + error.message
        : "This bridge's API needs a credential (" + error.message + "). It is kept in this tab " +
          "only (sessionStorage) and sent as an Authorization header to /v1.";
      $("meta").textContent = "signed out";
      return;
    }
    showError(error);
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("key").value.trim());
    $("key").value = "";
    refresh();
  });
  $("signout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    refresh();
  });
  refresh();
});
