/* strangler dashboard: a small single-page app over the admin JSON API.
 * No framework, no build step: DOM built with h()/svg() (text only, never innerHTML with data),
 * hash routing (#/, #/routes/NAME and #/migration in migration.js), polling every 2 s while the tab is visible.
 * The token lives in sessionStorage (this tab only) and goes out as a bearer header. */
"use strict";

const TOKEN_KEY = "strangler.token";
const ACTOR_KEY = "strangler.actor";
const POLL_MS = 2000;
const RATE_WINDOW_MS = 10000;   // req/s and error rates on the overview: the last 10 s
const RING_MS = 10 * 60 * 1000; // client-side samples kept per route

const S = {
  token: sessionStorage.getItem(TOKEN_KEY),
  actor: sessionStorage.getItem(ACTOR_KEY) || "",
  role: null,           // GET /admin/whoami: "admin", "read" or "open" (no token configured)
  ring: new Map(),      // route -> [{t, lr, le, tr, te, cmp, mis}] polled totals (overview rates)
  series: new Map(),    // route -> [points] from /series (route page charts)
  timer: null,
  gen: 0,               // bumps on every navigation; stale responses are dropped
  lastOk: 0,
  range: null,          // seconds shown by the traffic charts; null: the smallest that fits
  sel: { path: null, sample: 0, hit: null },
  diffsAll: false,      // the diffs panel shows every evidence window, not the current one
  gate: null,
  diffs: null,
  history: null,
  reconcile: null,      // the route page's newest reconcile run ({route, latest})
  recAll: null,         // route -> newest reconcile run (overview), refreshed every 10 s
};

/* ---------- DOM helpers ---------- */
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, kids);
  return el;
}
const SVGNS = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...kids) {
  const el = document.createElementNS(SVGNS, tag);
  setAttrs(el, attrs);
  append(el, kids);
  return el;
}
function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
}
function append(el, kids) {
  for (const k of kids.flat(Infinity)) {
    if (k === null || k === undefined || k === false) continue;
    el.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
}
const $ = (id) => document.getElementById(id);

/* ---------- formatting ---------- */
const fmtPct = (x, d = 1) => (x === null || x === undefined || Number.isNaN(x)) ? "—" : (x * 100).toFixed(d) + "%";
function fmtRate(x) {
  if (x === null || x === undefined) return "—";
  if (x === 0) return "0";
  if (x < 1) return x.toFixed(2);
  if (x < 10) return x.toFixed(1);
  return Math.round(x).toLocaleString("en");
}
function fmtMs(x) {
  if (x === null || x === undefined) return "—";
  if (x === 0) return "0";
  if (x < 1) return (x * 1000).toFixed(0) + "µs";
  if (x < 100) return x.toFixed(1) + "ms";
  if (x < 10000) return Math.round(x) + "ms";
  return (x / 1000).toFixed(1) + "s";
}
const fmtW = (w) => (w === null || w === undefined) ? "—" : (Math.round(w * 100) / 100) + "%";
const fmtInt = (n) => (n === null || n === undefined) ? "—" : Number(n).toLocaleString("en");
function ago(tsSec) {
  if (!tsSec) return "—";
  const s = Math.max(0, Date.now() / 1000 - tsSec);
  if (s < 5) return "just now";
  if (s < 60) return Math.round(s) + "s ago";
  if (s < 3600) return Math.round(s / 60) + "m ago";
  if (s < 86400) return Math.round(s / 3600) + "h ago";
  return Math.round(s / 86400) + "d ago";
}
const clock = (tsSec) => new Date(tsSec * 1000).toLocaleTimeString("en-GB", { hour12: false });
const parseTime = (iso) => Date.parse(iso) / 1000;

/* ---------- API ---------- */
class ApiError extends Error {
  constructor(status, body) {
    const msg = (body && body.error) || ("HTTP " + status);
    super(msg);
    this.status = status;
    this.body = body;
  }
}
async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (S.token) headers.Authorization = "Bearer " + S.token;
  if (S.actor) headers["X-Strangler-Actor"] = S.actor;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, { method, headers, cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, { error: "the proxy's admin listener is unreachable" });
  }
  let data = null;
  try { data = await resp.json(); } catch (e) { /* not JSON */ }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}
const enc = encodeURIComponent;

/* ---------- live indicator, toasts ---------- */
function setLive(ok, err) {
  const el = $("live");
  el.hidden = false;
  if (ok) S.lastOk = Date.now();
  const age = (Date.now() - S.lastOk) / 1000;
  el.className = "live" + (ok ? "" : age > 10 ? " down" : " stale");
  $("live-text").textContent = ok ? "live · " + clock(Date.now() / 1000) : (err || "reconnecting…");
}
function toast(msg, kind) {
  const t = h("div", { class: "toast " + (kind || "") }, msg);
  $("toasts").append(t);
  setTimeout(() => t.remove(), 5000);
}

/* ---------- routing ---------- */
function currentView() {
  if (/^#\/migration\b/.test(location.hash)) return { kind: "migration" }; // migration.js
  const m = location.hash.match(/^#\/routes\/([^/?]+)/);
  return m ? { kind: "route", name: decodeURIComponent(m[1]) } : { kind: "overview" };
}
function crumbs(...parts) {
  const c = $("crumbs");
  c.replaceChildren();
  parts.forEach((p, i) => {
    if (i) c.append(h("span", { class: "sep" }, "/"));
    c.append(p);
  });
}
function stopPolling() {
  if (S.timer) clearTimeout(S.timer);
  S.timer = null;
}
function schedule(fn, ms) {
  stopPolling();
  const gen = S.gen;
  S.timer = setTimeout(() => { if (gen === S.gen) fn(); }, ms);
}

async function navigate() {
  S.gen += 1;
  stopPolling();
  closeModal();
  if (S.role === null && !(await learnRole())) return;
  $("logout").hidden = S.role === "open";
  const v = currentView();
  if (v.kind === "route") {
    S.sel = { path: null, sample: 0, hit: null };
    S.diffsAll = false;
    S.gate = S.diffs = S.history = null;
    S.series.delete(v.name);
    await routePage(v.name, true);
  } else if (v.kind === "migration") {
    await migrationPage(true);
  } else {
    await overview(true);
  }
}

/* ---------- who is signed in ---------- */
/* The caller's role, from GET /admin/whoami with the stored token (or none): a proxy with no
 * token configured answers "open" and the sign-in form is never shown. False: sign in first. */
async function learnRole() {
  try {
    S.role = (await api("GET", "/admin/whoami")).role;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {  // a token is needed (or ours expired)
      const had = Boolean(S.token);
      sessionStorage.removeItem(TOKEN_KEY);
      S.token = null;
      showLogin(had ? e.message : undefined);
      return false;
    }
    setLive(false, e.message);
    return false;
  }
  if (S.role === "open") S.token = "";
  return true;
}
function canWrite() { return S.role !== "read"; }
/* Attributes of a button that changes something: greyed out, with the reason, for a read token. */
function writeAttrs(attrs) {
  if (canWrite()) return attrs;
  return { ...attrs, disabled: true, class: (attrs.class || "btn") + " readonly",
    title: "read-only token: changes need the admin token (STRANGLER_ADMIN_TOKEN)" };
}

function handleError(e) {
  if (e instanceof ApiError && e.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    S.token = null;
    S.role = null;
    showLogin(e.message);
    return true;
  }
  setLive(false, e.message);
  return false;
}

/* ---------- login ---------- */
function showLogin(message) {
  stopPolling();
  $("logout").hidden = true;
  $("live").hidden = true;
  crumbs();
  const token = h("input", { id: "token", type: "password", autocomplete: "off",
    placeholder: "STRANGLER_READ_TOKEN or STRANGLER_ADMIN_TOKEN" });
  const actor = h("input", { id: "actor", type: "text", autocomplete: "off", value: S.actor,
    placeholder: "e.g. alice" });
  const err = h("div", { class: "error", id: "login-error", hidden: !message }, message || "");
  const form = h("form", { class: "login", id: "login", onsubmit: async (ev) => {
    ev.preventDefault();
    S.token = token.value.trim();
    S.actor = actor.value.trim();
    try {
      S.role = (await api("GET", "/admin/whoami")).role;
    } catch (e) {
      S.token = null;
      S.role = null;
      err.hidden = false;
      err.textContent = e.status === 401 ? "That token was refused: " + e.message : e.message;
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, S.token);
    sessionStorage.setItem(ACTOR_KEY, S.actor);
    navigate();
  } },
    h("h1", {}, "strangler"),
    h("p", {}, "Sign in with the proxy's admin API token."),
    h("label", { for: "token" }, "Token"), token,
    h("div", { class: "hint" }, "The read token shows everything; changes need the admin token. " +
      "Kept in this tab only (sessionStorage). Leave empty if the proxy has no token."),
    h("label", { for: "actor" }, "Your name (for the audit log, optional)"), actor,
    h("button", { class: "btn primary", type: "submit", id: "login-submit" }, "Sign in"),
    err);
  $("main").replaceChildren(form);
  token.focus();
}

/* ---------- client-side ring of polled totals ---------- */
function recordTotals(routes) {
  const now = Date.now();
  for (const r of routes) {
    const t = r.stats.total;
    let ring = S.ring.get(r.name);
    if (!ring) S.ring.set(r.name, ring = []);
    ring.push({ t: now, lr: t.legacy.requests, le: t.legacy.errors, tr: t.target.requests,
      te: t.target.errors, cmp: t.shadow.compared, mis: t.shadow.mismatched });
    while (ring.length > 2 && ring[0].t < now - RING_MS) ring.shift();
  }
}
/* Rates over the last RATE_WINDOW_MS from the ring: null until there are two samples. */
function recent(name) {
  const ring = S.ring.get(name) || [];
  if (ring.length < 2) return null;
  const last = ring[ring.length - 1];
  let first = ring[0];
  for (const s of ring) { if (s.t >= last.t - RATE_WINDOW_MS) { first = s; break; } }
  if (first === last) first = ring[ring.length - 2];
  const dt = (last.t - first.t) / 1000;
  const d = (k) => Math.max(0, last[k] - first[k]);
  return {
    lrps: d("lr") / dt, trps: d("tr") / dt,
    lerr: d("lr") ? d("le") / d("lr") : null, terr: d("tr") ? d("te") / d("tr") : null,
    lreq: d("lr"), treq: d("tr"), le: d("le"), te: d("te"),
    series: ring.map((s, i) => i ? [s.t, ((s.lr + s.tr) - (ring[i - 1].lr + ring[i - 1].tr)) /
      Math.max(0.001, (s.t - ring[i - 1].t) / 1000)] : null).filter(Boolean),
  };
}

/* ---------- overview ---------- */
async function overview(first) {
  const gen = S.gen;
  let data;
  try {
    const recDue = first || !S.recAll || (Date.now() - S.recAll._at) > 10000;
    const [routes, rec] = await Promise.all([api("GET", "/admin/routes"),
      recDue ? api("GET", "/admin/reconcile").catch(() => null) : Promise.resolve(null)]);
    data = routes;
    if (rec) S.recAll = { runs: rec.routes || {}, _at: Date.now() };
  } catch (e) {
    if (gen !== S.gen) return;
    if (!handleError(e)) schedule(() => overview(false), POLL_MS);
    return;
  }
  if (gen !== S.gen) return;
  recordTotals(data.routes);
  setLive(true);
  renderOverview(data);
  // A quick second sample so the live rates show up within a second of opening the page.
  schedule(() => overview(false), first ? 700 : POLL_MS);
}

function weightBar(r) {
  const frozen = r.state === "rolled_back";
  const track = h("div", { class: "track" });
  const fill = h("div", { class: "fill" });
  fill.style.width = Math.max(0, Math.min(100, r.weight)) + "%";
  track.append(fill);
  for (const s of (r.promotion && r.promotion.steps) || []) {
    if (s <= 0 || s >= 100) continue;
    const t = h("div", { class: "tick", title: "step " + s + "%" });
    t.style.left = s + "%";
    track.append(t);
  }
  return h("div", { class: "wbar" + (frozen ? " frozen" : ""), title: "percent of traffic to target" },
    track, h("span", { class: "val" }, fmtW(r.weight)));
}

function pair(lv, tv, cls) {
  return h("div", { class: "pair " + (cls || "") },
    h("span", { class: "lab" }, "legacy"), h("span", { class: "l" }, lv),
    h("span", { class: "lab" }, "target"), h("span", { class: "t" }, tv));
}

function errText(rate) {
  if (rate === null || rate === undefined) return "—";
  const s = fmtPct(rate, rate && rate < 0.01 ? 2 : 1);
  return rate > 0 ? h("span", { class: "bad" }, s) : s;
}

function sparkline(points, w = 90, hgt = 22) {
  if (!points || points.length < 2) return h("span", { class: "faint" }, "");
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), ymax = Math.max(1e-9, ...ys);
  const pts = points.map((p) => [((p[0] - x0) / Math.max(1, x1 - x0)) * w,
    hgt - 2 - (p[1] / ymax) * (hgt - 4)]);
  const d = pts.map((p, i) => (i ? "L" : "M") + p[0].toFixed(1) + " " + p[1].toFixed(1)).join("");
  return svg("svg", { width: w, height: hgt, viewBox: `0 0 ${w} ${hgt}`, class: "spark" },
    svg("path", { d: d + `L${w} ${hgt}L0 ${hgt}Z`, fill: "rgba(56,189,248,.12)", stroke: "none" }),
    svg("path", { d, fill: "none", stroke: "#38bdf8", "stroke-width": 1.5 }));
}

function gateTags(r) {
  const tags = [];
  if (r.approval) tags.push(h("span", { class: "pill awaiting", title: approvalText(r.approval) },
    "awaiting approval"));
  if (r.promotion && r.promotion.auto_paused) tags.push(h("span", { class: "tag",
    title: "the gate answered inconclusive at this step" }, "auto paused"));
  return tags.length ? h("div", { class: "rsub" }, ...tags) : null;
}
function approvalText(a) {
  return `${a.kind.replace("_", " ")} ${fmtW(a.from_weight)} → ${fmtW(a.to_weight)} asked by ` +
    `${a.requested_by}; another named admin may approve it until ${new Date(a.expires_at * 1000).toLocaleString()}`;
}
function evidenceSince(r) {
  const es = r.evidence_since || {};
  return h("div", { class: "evidence-since", id: "evidence-since" }, "Evidence since ",
    h("b", {}, es.time ? new Date(es.time * 1000).toLocaleString() : "—"),
    ` (${ago(es.time)}, step ${r.step.id}): `, es.reason || "");
}
function approvalBanner(r) {
  if (!r.approval) return null;
  return h("div", { class: "banner approval", id: "approval-banner" },
    h("span", {}, "Awaiting approval: ", approvalText(r.approval), "."),
    h("button", writeAttrs({ class: "btn small", id: "btn-approve", onclick: () => approveModal(r) }), "Approve"));
}

function decisionPill(ld) {
  if (!ld) return h("span", { class: "faint" }, "not evaluated");
  const label = ld.decision + (ld.decision === "promote" ? " → " + fmtW(ld.to_weight) : "");
  return h("div", {},
    h("span", { class: "pill " + ld.decision, title: (ld.reasons || []).join("\n") }, label),
    h("div", { class: "rsub" }, (ld.acted ? "acted · " : "") + ago(ld.evaluated_at)));
}

function renderOverview(data) {
  crumbs(h("span", { class: "here" }, "Routes"));
  const routes = data.routes;
  let lrps = 0, trps = 0, req = 0, errs = 0, cmp = 0, mis = 0, rolled = 0, haveRates = false;
  for (const r of routes) {
    const rc = recent(r.name);
    if (rc) {
      haveRates = true;
      lrps += rc.lrps; trps += rc.trps; req += rc.lreq + rc.treq; errs += rc.le + rc.te;
    }
    cmp += r.stats.step.shadow.compared; mis += r.stats.step.shadow.mismatched;
    if (r.state === "rolled_back") rolled += 1;
  }
  const cards = h("div", { class: "cards", id: "summary" },
    card("Routes", routes.length, rolled ? h("span", { class: "bad" }, rolled + " rolled back")
      : "all active"),
    card("Traffic", haveRates ? fmtRate(lrps + trps) : "—", "req/s, last 10 s", "req/s"),
    card("To target", haveRates ? fmtRate(trps) : "—",
      haveRates && lrps + trps ? fmtPct(trps / (lrps + trps)) + " of requests" : "req/s", "req/s"),
    card("Errors (5xx)", haveRates ? fmtPct(req ? errs / req : 0, 2) : "—", "last 10 s, both backends"),
    card("Shadow mismatch", cmp ? fmtPct(mis / cmp, 2) : "—", fmtInt(cmp) + " compared this step"));

  const head = h("div", { class: "panel-head" }, h("h2", {}, "Routes"),
    h("span", { class: "sub" }, "generation " + data.generation + (data.durable ? "" : " · NOT DURABLE")),
    h("div", { class: "spacer" }),
    h("button", writeAttrs({ class: "btn danger small", id: "rollback-all",
      onclick: () => rollbackModal(null) }), "Roll back all"));
  const rows = routes.map((r) => {
    const rc = recent(r.name);
    const st = r.stats.step;
    const sh = r.shadow && r.shadow.enabled;
    const href = "#/routes/" + enc(r.name);
    const match = r.match.path_prefix || r.match.path || r.match.path_regex || "";
    return h("tr", { class: "click route-row", "data-route": r.name,
      onclick: (ev) => { if (!ev.target.closest("a")) location.hash = href; } },
      h("td", {}, h("a", { class: "rname", href }, r.name),
        h("div", { class: "rsub mono" }, (r.match.methods ? r.match.methods.join(",") + " " : "") + match),
        h("div", { class: "rsub" }, r.legacy + " → " + r.target)),
      h("td", {}, h("span", { class: "pill " + r.state }, r.state.replace("_", " ")),
        r.promotion && r.promotion.auto ? h("span", { class: "tag" }, "auto") : null),
      h("td", {}, weightBar(r)),
      h("td", { class: "num rps" }, pair(rc ? fmtRate(rc.lrps) : "—", rc ? fmtRate(rc.trps) : "—")),
      h("td", {}, sparkline(rc && rc.series.slice(-60))),
      h("td", { class: "num err" }, pair(errText(rc && rc.lreq ? rc.lerr : st.legacy.error_rate),
        errText(rc && rc.treq ? rc.terr : st.target.error_rate))),
      h("td", { class: "num p99" }, pair(fmtMs(st.legacy.p99_ms), fmtMs(st.target.p99_ms))),
      h("td", { class: "num shadow" }, sh ? h("div", {},
        h("div", { class: st.shadow.mismatched ? "bad mono" : "mono" }, fmtPct(st.shadow.mismatch_rate, 2)),
        h("div", { class: "rsub" }, fmtInt(st.shadow.compared) + " compared"))
        : h("span", { class: "faint" }, "off"),
        recLine(S.recAll && S.recAll.runs[r.name])),
      h("td", { class: "gate" }, decisionPill(r.last_decision), gateTags(r)));
  });
  const table = h("table", { class: "routes", id: "routes" },
    h("thead", {}, h("tr", {},
      h("th", {}, "Route"), h("th", {}, "State"), h("th", {}, "Weight to target"),
      h("th", { class: "num" }, "Req/s"), h("th", {}, "Trend"), h("th", { class: "num" }, "Error rate"),
      h("th", { class: "num" }, "p99 (step)"), h("th", { class: "num" }, "Shadow mismatch"),
      h("th", {}, "Last gate decision"))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 9, class: "empty" },
      "No routes in routes.yaml: unmatched traffic goes to the default upstream."))));
  $("main").replaceChildren(cards, h("div", { class: "panel" }, head, table));
}

/* ---------- reconcile (strangler reconcile runs, from the diff store) ---------- */
function recSummary(run) {
  if (!run.finished) return "running or interrupted";
  if (run.mismatched) return fmtInt(run.mismatched) + " of " + fmtInt(run.compared) + " differ";
  if (run.errors) return fmtInt(run.errors) + " errors";
  return "clean · " + fmtInt(run.compared) + " compared";
}
function recLine(run) {
  if (!run) return null;
  return h("div", { class: "rsub rec" + (run.mismatched || run.errors ? " bad" : ""),
    title: "latest strangler reconcile run #" + run.run_id + " (" + run.source + ")" },
  "reconcile: " + recSummary(run) + " · " + ago(run.finished || run.started));
}
function reconcilePanel(r) {
  const run = S.reconcile && S.reconcile.latest;
  const head = h("div", { class: "panel-head" }, h("h2", {}, "Latest reconcile run"),
    h("span", { class: "sub" }, run ? `run #${run.run_id} · ${run.source} · ${ago(run.finished || run.started)}` : ""));
  const panel = h("div", { class: "panel", id: "reconcile" }, head);
  if (!run) {
    panel.append(h("div", { class: "empty" }, "No reconcile run yet: ",
      h("code", {}, `strangler reconcile ${r.name} --from-store`), " replays recorded reads against both sides."));
    return h("div", { class: "grid" }, panel);
  }
  panel.append(h("div", { class: "panel-body", id: "reconcile-summary" },
    h("span", { class: run.mismatched || run.errors ? "bad" : "" }, recSummary(run)),
    ` · ${fmtInt(run.requests)} replayed, ${fmtInt(run.errors)} errors, ${fmtInt(run.skipped)} skipped` +
    (run.noise ? `, ${fmtInt(run.noise)} noise cancelled` : "")));
  if (run.fields && run.fields.length) {
    panel.append(h("table", { id: "reconcile-table" }, h("thead", {}, h("tr", {}, h("th", {}, "Field path"),
      h("th", {}, "Kind"), h("th", { class: "num" }, "Count"), h("th", { class: "num" }, "Rate"))),
    h("tbody", {}, run.fields.map((f) => h("tr", { class: "rec-row", "data-path": f.path },
      h("td", { class: "path" }, f.path), h("td", {}, h("span", { class: "pill kind" }, f.kind)),
      h("td", { class: "num" }, fmtInt(f.count)), h("td", { class: "num" }, fmtPct(f.rate, 2)))))));
  }
  return h("div", { class: "grid" }, panel);
}

function card(k, v, s, unit) {
  return h("div", { class: "card" }, h("div", { class: "k" }, k),
    h("div", { class: "v" }, v, unit && v !== "—" ? h("span", { class: "unit" }, unit) : null),
    h("div", { class: "s" }, s));
}

/* ---------- charts (inline SVG) ---------- */
/* lines: [{cls, color, points: [[tSec, value|null], ...], step, area}] */
function lineChart(lines, opts) {
  const W = opts.width || 560, H = opts.height || 170;
  const m = { l: 46, r: 10, t: 10, b: 22 };
  const iw = W - m.l - m.r, ih = H - m.t - m.b;
  const [x0, x1] = opts.x;
  let ymax = opts.ymax;
  if (ymax === undefined) {
    ymax = 0;
    for (const l of lines) for (const p of l.points) if (p[1] !== null && p[1] > ymax) ymax = p[1];
    ymax = niceMax(ymax || (opts.yfloor || 1));
  }
  const X = (t) => m.l + ((t - x0) / Math.max(1e-9, x1 - x0)) * iw;
  const Y = (v) => m.t + ih - (v / ymax) * ih;
  const root = svg("svg", { class: "chart " + (opts.cls || ""), width: W, height: H,
    viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": opts.label || "chart" });
  const grid = svg("g", { class: "grid" });
  const yt = opts.yticks || [0, ymax / 4, ymax / 2, (3 * ymax) / 4, ymax];
  for (const v of yt) {
    grid.append(svg("line", { x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v) }));
    root.append(svg("text", { x: m.l - 6, y: Y(v) + 3.5, "text-anchor": "end" }, opts.fmt(v)));
  }
  root.prepend(grid);
  const span = x1 - x0;
  const nt = Math.max(2, Math.floor(iw / 110));
  for (let i = 0; i <= nt; i++) {
    const t = x0 + (span * i) / nt;
    root.append(svg("text", { x: X(t), y: H - 6, "text-anchor": i === 0 ? "start" : i === nt ? "end" : "middle" },
      span > 3 * 3600 ? new Date(t * 1000).toLocaleString("en-GB", { hour12: false, month: "short",
        day: "numeric", hour: "2-digit", minute: "2-digit" }) : clock(t)));
  }
  for (const l of lines) {
    const segs = [];
    let cur = [];
    for (const p of l.points) {
      if (p[1] === null) { if (cur.length) segs.push(cur); cur = []; continue; }
      cur.push(p);
    }
    if (cur.length) segs.push(cur);
    for (const seg of segs) {
      let d = "";
      seg.forEach((p, i) => {
        const x = X(p[0]).toFixed(1), y = Y(p[1]).toFixed(1);
        if (i === 0) d += `M${x} ${y}`;
        else if (l.step) d += `H${x}V${y}`;
        else d += `L${x} ${y}`;
      });
      if (l.area) {
        const first = X(seg[0][0]).toFixed(1);
        root.append(svg("path", { d: d + `V${Y(0)}H${first}Z`, fill: l.color, "fill-opacity": 0.12,
          stroke: "none" }));
      }
      root.append(svg("path", { d, fill: "none", stroke: l.color, "stroke-width": 1.8,
        "stroke-linejoin": "round", class: "line " + (l.cls || "") }));
      if (seg.length === 1) {
        root.append(svg("circle", { cx: X(seg[0][0]), cy: Y(seg[0][1]), r: 2.2, fill: l.color }));
      }
    }
  }
  for (const mk of opts.markers || []) {
    const c = svg("circle", { cx: X(mk.t), cy: Y(mk.v), r: 4.5, fill: mk.color, stroke: "#0b1120",
      "stroke-width": 1.5, class: "marker " + mk.cls });
    c.append(svg("title", {}, mk.title));
    root.append(c);
  }
  return root;
}
function autoRange(points, now) {
  const span = points.length ? now - points[0].t : 0;
  return span <= 60 ? 60 : span <= 300 ? 300 : 600;
}
function niceMax(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const f of [1, 2, 4, 6, 8, 10]) if (v <= f * p) return f * p; // quarters stay round
  return 10 * p;
}
function chartWidth(id) {
  const el = $(id);
  return Math.max(300, (el && el.clientWidth) || 560) - 28;
}

/* ---------- route page ---------- */
async function routePage(name, first) {
  const gen = S.gen;
  const since = lastSeriesT(name);
  const calls = [
    api("GET", "/admin/routes/" + enc(name)),
    api("GET", `/admin/routes/${enc(name)}/series?since=${since}`),
  ];
  const slow = first || !S.diffs || (Date.now() - (S.diffs._at || 0)) > 5000;
  if (slow) {
    calls.push(api("GET", diffsUrl(name)));
    calls.push(api("GET", `/admin/history?route=${enc(name)}&limit=200`));
    calls.push(api("GET", `/admin/routes/${enc(name)}/reconcile`).catch(() => null));
  }
  if (first) calls.push(api("GET", `/admin/routes/${enc(name)}/gate`).catch((e) => ({ _error: e })));
  const gateAt = slow ? 5 : 2;
  let res;
  try {
    res = await Promise.all(calls);
  } catch (e) {
    if (gen !== S.gen) return;
    if (e instanceof ApiError && e.status === 404 && first) {
      $("main").replaceChildren(h("div", { class: "panel empty" }, e.message + " ",
        h("a", { href: "#/" }, "Back to routes")));
      return;
    }
    if (!handleError(e)) schedule(() => routePage(name, false), POLL_MS);
    return;
  }
  if (gen !== S.gen) return;
  const [route, series] = res;
  mergeSeries(name, series);
  if (slow) {
    S.diffs = res[2]; S.diffs._at = Date.now();
    S.history = res[3];
    S.reconcile = res[4];
  }
  if (first) S.gate = res[gateAt];
  recordTotals([route]);
  setLive(true);
  renderRoute(route);
  keepHit();
  schedule(() => routePage(name, false), POLL_MS);
}

function lastSeriesT(name) {
  const pts = S.series.get(name);
  return pts && pts.length ? pts[pts.length - 1].t : 0;
}
function mergeSeries(name, data) {
  let pts = S.series.get(name);
  if (!pts) S.series.set(name, pts = []);
  for (const p of data.points) pts.push(p);
  const cutoff = data.now - 600;
  while (pts.length && pts[0].t < cutoff) pts.shift();
  S.seriesNow = data.now;
  S.seriesInterval = data.interval;
}

function renderRoute(r) {
  const focus = document.activeElement && document.activeElement.id;
  crumbs(h("a", { href: "#/" }, "Routes"), h("span", { class: "here" }, r.name));
  const rolled = r.state === "rolled_back";
  const match = Object.entries(r.match).map(([k, v]) => k + ": " + (Array.isArray(v) ? v.join(",") :
    typeof v === "object" ? JSON.stringify(v) : v)).join(" · ");
  const head = h("div", { class: "rhead" },
    h("div", {},
      h("h1", {}, r.name, h("span", { class: "pill " + r.state, id: "route-state" }, r.state.replace("_", " "))),
      h("div", { class: "meta" },
        h("span", {}, "legacy ", h("b", {}, r.legacy)),
        h("span", {}, "target ", h("b", {}, r.target)),
        h("span", { class: "mono" }, match),
        h("span", {}, "sticky ", h("b", {}, r.sticky ? (r.sticky.header ? "header " + r.sticky.header
          : "cookie " + r.sticky.cookie) : "none")),
        h("span", {}, "steps ", h("b", {}, r.promotion.steps.join(" → "))),
        h("span", {}, "file weight ", h("b", {}, fmtW(r.file_weight))),
        r.promotion.auto ? h("span", { class: "tag" }, "auto-promotion") : null)),
    h("div", { class: "actions" },
      h("button", writeAttrs({ class: "btn", id: "btn-weight", disabled: rolled,
        title: rolled ? "resume first" : null, onclick: () => weightModal(r) }), "Set weight"),
      h("button", writeAttrs({ class: "btn", id: "btn-promote", disabled: rolled,
        onclick: () => promoteModal(r) }), "Promote"),
      h("button", writeAttrs({ class: "btn", id: "btn-reset-evidence", disabled: rolled,
        title: rolled ? "resume first (a resume starts new evidence)" : "judge the route afresh from now on",
        onclick: () => resetEvidenceModal(r) }), "Reset evidence"),
      rolled ? h("button", writeAttrs({ class: "btn primary", id: "btn-resume",
        onclick: () => resumeModal(r) }), "Resume")
        : h("button", writeAttrs({ class: "btn danger", id: "btn-rollback",
          onclick: () => rollbackModal(r) }), "Roll back")));

  const banner = rolled ? h("div", { class: "banner", id: "rolled-banner" },
    "Rolled back: 100% of this route's traffic goes to ", h("b", {}, r.legacy),
    " and the weight is frozen until someone resumes it.") : null;

  const st = r.stats.step, rc = recent(r.name);
  const cards = h("div", { class: "cards" },
    card("Weight to target", fmtW(r.weight), rolled ? "frozen at 0 (rolled back)" :
      "step " + r.step.id + " since " + ago(r.step.started)),
    card("Req/s", rc ? fmtRate(rc.lrps + rc.trps) : "—", rc ? h("span", {},
      h("span", { class: "l-c" }, "legacy " + fmtRate(rc.lrps)), " · ", "target " + fmtRate(rc.trps)) : "last 10 s"),
    card("Error rate (step)", fmtPct(combined(st, "error_rate"), 2),
      "legacy " + fmtPct(st.legacy.error_rate, 2) + " · target " + fmtPct(st.target.error_rate, 2)),
    card("p99 (step)", fmtMs(st.target.p99_ms), "target · legacy " + fmtMs(st.legacy.p99_ms)),
    card("Shadow mismatch (step)", r.shadow.enabled ? fmtPct(st.shadow.mismatch_rate, 2) : "off",
      r.shadow.enabled ? fmtInt(st.shadow.mismatched) + " of " + fmtInt(st.shadow.compared) + " compared" +
        (st.shadow.errors ? " · " + fmtInt(st.shadow.errors) + " errors (no answer)" : "") : "shadow disabled"),
    card("Reconcile (latest)", S.reconcile && S.reconcile.latest ? recSummary(S.reconcile.latest) : "—",
      S.reconcile && S.reconcile.latest ? "run #" + S.reconcile.latest.run_id + " · " +
        ago(S.reconcile.latest.finished || S.reconcile.latest.started) : "no run yet"),
    card("Requests (step)", fmtInt(st.legacy.requests + st.target.requests),
      fmtInt(st.legacy.requests) + " legacy · " + fmtInt(st.target.requests) + " target"));

  const grid1 = h("div", { class: "grid two" }, weightPanel(r), trafficPanel("rps"));
  const grid2 = h("div", { class: "grid two" }, trafficPanel("p99"), trafficPanel("err"));
  const grid3 = h("div", { class: "grid two" }, gatePanel(r), historyPanel());
  $("main").replaceChildren(head, evidenceSince(r), banner || "", approvalBanner(r) || "", cards, grid1, grid2,
    diffPanel(r), reconcilePanel(r), grid3);
  // draw charts now that panels have their widths
  drawWeight(r);
  for (const k of ["rps", "p99", "err"]) drawTraffic(r, k);
  if (focus && $(focus)) $(focus).focus();
}
function combined(st, _k) {
  const req = st.legacy.requests + st.target.requests;
  return req ? (st.legacy.errors + st.target.errors) / req : null;
}

function legend() {
  return h("div", { class: "legend" }, h("span", { class: "l" }, h("i"), "legacy"),
    h("span", { class: "t" }, h("i"), "target"));
}

function weightPanel() {
  return h("div", { class: "panel" }, h("div", { class: "panel-head" }, h("h2", {}, "Weight over time"),
    h("span", { class: "sub" }, "from the audit log"), h("div", { class: "legend" },
      h("span", { class: "t" }, h("i"), "to target"))),
  h("div", { class: "panel-body", id: "chart-weight" }));
}
function drawWeight(r) {
  const box = $("chart-weight");
  if (!box) return;
  const entries = ((S.history && S.history.entries) || []).filter((e) => e.route === r.name).slice().reverse();
  const now = Date.now() / 1000;
  const pts = [];
  const markers = [];
  const numeric = (v) => typeof v === "number";
  // From a little before the first change (or the current step) to now, at least a minute.
  const start = entries.length ? parseTime(entries[0].time) : (r.step.started || now);
  const span = Math.max(60, now - start);
  const x0 = start - 0.12 * span;
  let w = entries.length && numeric(entries[0].from) ? entries[0].from : r.weight;
  pts.push([x0, w]);
  const colors = { rollback: "#f87171", resume: "#60a5fa", promote: "#34d399", set_weight: "#38bdf8" };
  for (const e of entries) {
    const t = parseTime(e.time);
    if (e.action === "rollback") w = 0;
    else if (e.action === "resume") w = 0;
    else if (numeric(e.to)) w = e.to;
    else continue;
    pts.push([t, w]);
    markers.push({ t, v: w, color: colors[e.action] || "#94a3b8", cls: e.action,
      title: `${clock(t)} ${e.action} by ${e.actor}: ${e.reason || ""}` });
  }
  pts.push([now, r.weight]);
  box.replaceChildren(lineChart([{ cls: "weight", color: "#34d399", points: pts, step: true, area: true }],
    { x: [x0, now], ymax: 100, yticks: [0, 25, 50, 75, 100], fmt: (v) => v + "%",
      width: chartWidth("chart-weight"), markers, label: "weight over time", cls: "weight-chart" }));
}

const TRAFFIC = {
  rps: { title: "Requests per second", sub: "per backend", fmt: (v) => fmtRate(v),
    val: (p, side, dt) => p[side].requests / dt },
  p99: { title: "p99 latency", sub: "per backend, per second", fmt: (v) => fmtMs(v),
    val: (p, side) => p[side].p99_ms },
  err: { title: "Error rate (5xx)", sub: "per backend", fmt: (v) => v ? fmtPct(v, v < 0.01 ? 2 : v < 0.1 ? 1 : 0) : "0",
    val: (p, side) => p[side].requests ? p[side].errors / p[side].requests : null },
};
function trafficPanel(kind) {
  const spec = TRAFFIC[kind];
  const ranges = [[60, "1m"], [300, "5m"], [600, "10m"]].map(([s, l]) => h("button", {
    class: "btn small seg" + ((S.range || autoRange(S.series.get(currentView().name) || [],
      S.seriesNow || Date.now() / 1000)) === s ? " on" : ""), onclick: () => {
      S.range = s;
      const v = currentView();
      if (v.kind === "route") { S.gen += 1; routePage(v.name, false); }
    } }, l));
  return h("div", { class: "panel" }, h("div", { class: "panel-head" }, h("h2", {}, spec.title),
    h("span", { class: "sub" }, spec.sub), legend(), kind === "rps" ? h("div", {}, ranges) : null),
  h("div", { class: "panel-body", id: "chart-" + kind }));
}
function drawTraffic(r, kind) {
  const box = $("chart-" + kind);
  if (!box) return;
  const spec = TRAFFIC[kind];
  const now = S.seriesNow || Date.now() / 1000;
  const all = S.series.get(r.name) || [];
  const range = S.range || autoRange(all, now);
  const x0 = now - range;
  const pts = all.filter((p) => p.t >= x0);
  const gapAfter = 2.5 * (S.seriesInterval || 1);
  const lines = ["legacy", "target"].map((side) => {
    const out = [];
    let prev = null;
    for (const p of pts) {
      if (kind === "rps" && prev !== null && p.t - prev > gapAfter) {
        out.push([prev + 1, 0], [p.t - p.dt, 0]); // no traffic in between: the rate was 0
      } else if (kind !== "rps" && prev !== null && p.t - prev > gapAfter) {
        out.push([prev + 1, null]);
      }
      out.push([p.t, spec.val(p, side, Math.max(0.001, p.dt))]);
      prev = p.t;
    }
    return { cls: side, color: side === "legacy" ? "#a78bfa" : "#34d399", points: out };
  });
  if (!pts.length) {
    box.replaceChildren(h("div", { class: "chart-empty" }, "No traffic on this route in the last " +
      Math.round(range / 60) + " min."));
    return;
  }
  box.replaceChildren(lineChart(lines, { x: [x0, now], fmt: spec.fmt, width: chartWidth("chart-" + kind),
    yfloor: kind === "err" ? 0.01 : 1,
    label: spec.title, cls: kind + "-chart" }));
}

/* ---------- gate ---------- */
function gatePanel(r) {
  const g = S.gate;
  const btn = h("button", { class: "btn small", id: "btn-gate", onclick: async (ev) => {
    ev.target.disabled = true;
    try { S.gate = await api("GET", `/admin/routes/${enc(r.name)}/gate`); }
    catch (e) { S.gate = { _error: e }; }
    const v = currentView();
    if (v.kind === "route") { S.gen += 1; routePage(v.name, false); }
  } }, "Evaluate now");
  const head = h("div", { class: "panel-head" }, h("h2", {}, "Promotion gate"),
    h("span", { class: "sub" }, g && g.evaluated_at ? "evaluated " + ago(g.evaluated_at) : ""),
    h("div", { class: "spacer" }), btn);
  const body = h("div", { class: "panel-body", id: "gate" });
  if (!g) body.append(h("div", { class: "muted" }, "Not evaluated yet."));
  else if (g._error) body.append(h("div", { class: "error" }, g._error.message));
  else {
    const label = g.decision + (g.decision === "promote" ? ` ${fmtW(g.from_weight)} → ${fmtW(g.to_weight)}`
      : ` at ${fmtW(g.from_weight)}`);
    body.append(h("div", { class: "decision" }, h("span", { class: "pill big " + g.decision, id: "gate-decision" }, label),
      g.acted ? h("span", { class: "tag" }, "acted") : null,
      g.approval && !g.acted ? h("span", { class: "pill awaiting" }, "awaiting approval") : null,
      h("span", { class: "muted" }, "evaluating here is a read: nothing changes and no decision is counted; Promote acts")));
    body.append(h("ul", { class: "reasons", id: "gate-reasons" }, (g.reasons || []).map((x) => h("li", {}, x))));
    for (const n of g.notes || []) body.append(h("div", { class: "hint" }, n));
    body.append(evidenceTable(g.evidence || {}));
  }
  return h("div", { class: "panel" }, head, body);
}

function fmtX(v) { return v === null || v === undefined ? "∞" : v.toFixed(2); }
function fmtDms(v) { return v === null || v === undefined ? "—" : (v >= 0 ? "+" : "") + (v * 1000).toFixed(2) + " ms"; }

function evidenceTable(ev) {
  const th = ev.thresholds || {};
  const sh = ev.shadow || {};
  const L = ev.legacy || {}, T = ev.target || {};
  const mark = (state) => state === null ? h("td", { class: "chk faint" }, "·") :
    state === "ok" ? h("td", { class: "chk good", title: "within the limit" }, "✓") :
    state === "bad" ? h("td", { class: "chk bad", title: "over the limit" }, "✗") :
    h("td", { class: "chk warn", title: "not enough evidence yet, or inconclusive" }, "…");
  const bounds = (v, lo, hi, max) => v === null || v === undefined || max === undefined ? null :
    hi !== undefined && hi !== null && hi <= max ? "ok" : lo !== undefined && lo !== null && lo > max ? "bad" : "wait";
  const rows = [
    ["Requests (target / legacy)", `${fmtInt(T.requests)} / ${fmtInt(L.requests)}`, "≥ " + fmtInt(th.min_requests),
      T.requests >= th.min_requests ? "ok" : "wait"],
    ["Error rate (target / legacy)", `${fmtPct(T.error_rate, 2)} / ${fmtPct(L.error_rate, 2)}`, "", null],
    ["Error rate increase (95% CI)", ev.error_rate_increase === undefined || ev.error_rate_increase === null ? "—" :
      `${fmtPct(ev.error_rate_increase, 2)} [${fmtPct(ev.error_rate_increase_lower_95, 2)}, ${fmtPct(ev.error_rate_increase_upper_95, 2)}]`,
      "≤ " + fmtPct(th.max_error_rate_increase, 2),
      bounds(ev.error_rate_increase, ev.error_rate_increase_lower_95, ev.error_rate_increase_upper_95, th.max_error_rate_increase)],
    ["p99 (target / legacy)", `${fmtMs(T.p99_seconds === null || T.p99_seconds === undefined ? null : T.p99_seconds * 1000)} / ` +
      `${fmtMs(L.p99_seconds === null || L.p99_seconds === undefined ? null : L.p99_seconds * 1000)}`,
      `samples ≥ ${fmtInt(th.min_latency_samples)}`,
      (T.latency_samples || 0) >= (th.min_latency_samples || 0) && (L.latency_samples || 0) >= (th.min_latency_samples || 0) ? "ok" : "wait"],
    ["p99 ratio target / legacy (95% CI)", ev.p99_ratio === null || ev.p99_ratio === undefined ? "—" :
      `${ev.p99_ratio.toFixed(2)} [${fmtX(ev.p99_ratio_lower_95)}, ${fmtX(ev.p99_ratio_upper_95)}]`,
      th.max_p99_ratio === null || th.max_p99_ratio === undefined ? "not judged" : "≤ " + th.max_p99_ratio,
      th.max_p99_ratio === null || th.max_p99_ratio === undefined ? null :
        bounds(ev.p99_ratio, ev.p99_ratio_lower_95, ev.p99_ratio_upper_95 ?? Infinity, th.max_p99_ratio)],
  ];
  if (ev.fallbacks) rows.push(["Target failures answered by legacy", fmtInt(ev.fallbacks), "", null]);
  const pl = ev.paired_latency || {};
  if (pl.pairs) {
    const lim = th.max_paired_latency_increase;
    rows.push(["Paired latency target − legacy (median, 95% CI)",
      `${fmtDms(pl.median_difference_seconds)} [${fmtDms(pl.lower_95)}, ${fmtDms(pl.upper_95)}] on ${fmtInt(pl.pairs)}`,
      lim === null || lim === undefined ? "not judged" : "≤ " + fmtDms(lim),
      lim === null || lim === undefined ? null : bounds(pl.median_difference_seconds, pl.lower_95, pl.upper_95 ?? Infinity, lim)]);
  }
  if (sh.enabled) {
    rows.push(["Shadow comparisons", `${fmtInt(sh.compared)} (${fmtInt(sh.mismatched)} mismatched)`,
      "≥ " + fmtInt(th.min_comparisons), sh.compared >= th.min_comparisons ? "ok" : "wait"]);
    rows.push(["Mismatch rate (95% Wilson)", sh.mismatch_rate === null || sh.mismatch_rate === undefined ? "—" :
      `${fmtPct(sh.mismatch_rate, 2)} [${fmtPct(sh.mismatch_rate_lower_95, 2)}, ${fmtPct(sh.mismatch_rate_upper_95, 2)}]`,
      "≤ " + fmtPct(th.max_mismatch_rate, 2), bounds(sh.mismatch_rate, sh.mismatch_rate_lower_95, sh.mismatch_rate_upper_95, th.max_mismatch_rate)]);
    if (sh.errors) rows.push(["Shadow errors (no answer; not differences)",
      `${fmtInt(sh.target_errors)} from target of ${fmtInt(sh.compared + sh.errors)} · ` +
        Object.entries(sh.error_kinds || {}).map(([k, n]) => k + " " + n).join(", "),
      "≤ " + fmtPct(th.max_shadow_error_rate, 2),
      bounds(sh.target_error_rate, sh.target_error_rate_lower_95, sh.target_error_rate_upper_95, th.max_shadow_error_rate)]);
  } else {
    rows.push(["Shadow comparisons", "shadowing off", "", null]);
  }
  for (const c of ev.checks || []) {
    const lim = [c.min !== undefined && c.min !== null ? "≥ " + c.min : "", c.max !== undefined && c.max !== null ? "≤ " + c.max : ""].filter(Boolean).join(", ");
    rows.push(["check " + c.name + (c.dry_run ? " (dry run)" : ""),
      c.value === null || c.value === undefined ? "no data" : String(c.value), lim,
      c.dry_run ? null : c.ok === true ? "ok" : c.ok === false ? "bad" : "wait"]);
  }
  return h("table", { class: "ev", id: "gate-evidence" },
    h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", {}, "Evidence (this step)"), h("th", {}, "Value"), h("th", {}, "Limit"))),
    h("tbody", {}, rows.map(([k, v, lim, state]) => h("tr", {}, mark(state), h("td", {}, k),
      h("td", { class: "mono" }, v), h("td", { class: "muted mono" }, lim)))));
}

/* ---------- history ---------- */
function historyPanel() {
  const entries = (S.history && S.history.entries) || [];
  const rows = entries.slice(0, 30).map((e) => h("tr", {},
    h("td", { class: "mono muted", title: e.time }, ago(parseTime(e.time))),
    h("td", {}, h("span", { class: "pill plain " + (e.action === "rollback" ? "rollback" : e.action === "resume" ? "resume" :
      e.action === "promote" ? "promote" : "kind") }, e.action.replace("_", " "))),
    h("td", { class: "mono" }, histChange(e)),
    h("td", {}, e.actor),
    h("td", { class: "reason" }, e.reason || "")));
  return h("div", { class: "panel" }, h("div", { class: "panel-head" }, h("h2", {}, "Audit log"),
    h("span", { class: "sub" }, "newest first")),
  entries.length ? h("table", { id: "history" }, h("thead", {}, h("tr", {}, h("th", {}, "When"), h("th", {}, "Action"),
    h("th", {}, "Change"), h("th", {}, "Actor"), h("th", {}, "Reason"))), h("tbody", {}, rows))
    : h("div", { class: "empty" }, "No changes recorded for this route yet."));
}
function histChange(e) {
  const f = (v) => typeof v === "number" ? fmtW(v) : v === null || v === undefined ? "—" : String(v);
  if (typeof e.from === "object" && e.from !== null) return "";
  return f(e.from) + " → " + f(e.to);
}

/* ---------- diffs ---------- */
/* The route's current evidence window by default (its step under the current compare rules);
   "all time" shows every window, with rows the current ignore rules cover marked. Rows are
   canonical paths ($[*].owner); a row opens to its examples and an ignore snippet; samples
   highlight the differing nodes by JSON path, with "next difference" to jump between them. */
function diffsUrl(name) {
  return `/admin/routes/${enc(name)}/diffs?limit=20` + (S.diffsAll ? "&all=1" : "");
}
function windowText(d) {
  const w = d.window || {};
  if (w.all) return "all evidence in the store (every step and rule set)";
  let t = `current evidence: step ${w.step ?? "—"}, rules ${w.rules ?? "—"}`;
  if (w.first) t += `, since ${ago(w.first)}`;
  return t;
}
function diffPanel(r) {
  const d = S.diffs;
  const toggle = h("span", { id: "diff-window" },
    h("button", { class: "btn small seg" + (S.diffsAll ? "" : " on"), id: "diff-current",
      onclick: () => setDiffWindow(r, false) }, "current"),
    h("button", { class: "btn small seg" + (S.diffsAll ? " on" : ""), id: "diff-all",
      onclick: () => setDiffWindow(r, true) }, "all time"));
  const sub = d ? `${fmtInt(d.compared)} compared · ${fmtInt(d.mismatched)} mismatched` +
    (d.compared ? ` (${fmtPct(d.mismatched / d.compared, 2)})` : "") +
    (d.errors ? ` · ${fmtInt(d.errors)} errors` : "") : "";
  const head = h("div", { class: "panel-head" }, h("h2", {}, "Shadow differences"),
    h("span", { class: "sub" }, sub), h("div", { class: "spacer" }), toggle);
  const panel = h("div", { class: "panel", id: "diffs" }, head);
  if (!r.shadow.enabled) {
    panel.append(h("div", { class: "empty" }, "Shadowing is off for this route."));
    return h("div", { class: "grid" }, panel);
  }
  if (d) panel.append(h("div", { class: "window muted", id: "diff-window-text" }, windowText(d)));
  if (!d || !d.fields.length) {
    panel.append(h("div", { class: "empty" }, d && d.note ? d.note : d && d.compared ?
      "No differences: every compared response matched." : "No comparisons yet."));
    return h("div", { class: "grid" }, panel);
  }
  const maxRate = Math.max(...d.fields.map((f) => f.rate), 1e-9);
  const rows = [];
  for (const f of d.fields) {
    const bar = h("span", { class: "rate-bar" }, h("span"));
    bar.firstChild.style.width = Math.max(2, (f.rate / maxRate) * 100) + "%";
    const open = S.sel.path === f.path;
    const notes = [];
    if (f.ignored) notes.push(h("span", { class: "pill ignored", title:
      "the route's current ignore rules cover this path: recorded before them, not a live difference" }, "ignored now"));
    if (f.likely_noise) notes.push(h("span", { class: "pill noise", title:
      "differs in nearly every comparison: often a timestamp, id or ordering; check before trusting it" },
    "likely nondeterministic"));
    if (f.renamed_to) notes.push(h("span", { class: "pill rename" }, "likely renamed to " + f.renamed_to));
    if (f.renamed_from) notes.push(h("span", { class: "pill rename" }, "likely renamed from " + f.renamed_from));
    rows.push(h("tr", { class: "click diff-row" + (open ? " sel" : "") + (f.ignored ? " ignored" : ""),
      "data-path": f.path, "data-kind": f.kind,
      onclick: () => { S.sel = { path: open ? null : f.path, sample: 0, hit: null }; refreshDiffs(r); } },
    h("td", { class: "path" }, h("span", { class: "caret" }, open ? "▾" : "▸"), " ", f.path),
    h("td", {}, h("span", { class: "pill kind" }, f.kind)),
    h("td", { class: "num" }, fmtInt(f.count)),
    h("td", { class: "num" }, bar, fmtPct(f.rate, 2)),
    h("td", { class: "num elements" }, f.share === null || f.share === undefined ? "" :
      `${fmtPct(f.share, 1)} of ${fmtInt(Math.round((f.of || 0) / Math.max(1, f.count)))}`),
    h("td", {}, ...notes)));
    if (open) rows.push(h("tr", { class: "expand" }, h("td", { colspan: 6 }, rowDetail(r, d, f))));
  }
  panel.append(h("table", { id: "diff-table" }, h("thead", {}, h("tr", {}, h("th", {}, "Field path"),
    h("th", {}, "Kind"), h("th", { class: "num" }, "Count"), h("th", { class: "num" }, "Rate"),
    h("th", { class: "num" }, "Elements"), h("th", {}, ""))),
  h("tbody", {}, rows)));
  if ((d.fields_total || 0) > d.fields.length) {
    panel.append(h("div", { class: "muted more" }, `${fmtInt(d.fields_total - d.fields.length)} more field rows`));
  }
  panel.append(samplePanel(d));
  return h("div", { class: "grid" }, panel);
}
function setDiffWindow(r, all) {
  if (S.diffsAll === all) return;
  S.diffsAll = all;
  S.sel = { path: null, sample: 0, hit: null };
  api("GET", diffsUrl(r.name)).then((d) => { S.diffs = d; S.diffs._at = Date.now(); refreshDiffs(r); })
    .catch(handleError);
}
function refreshDiffs(r) {
  const old = $("diffs");
  if (old) old.parentElement.replaceWith(diffPanel(r));
  keepHit();
}
/* The routes.yaml lines that would leave a row out of the comparison. */
function ignoreSnippet(r, path) {
  const entry = path === "status" ? "status" : path;
  return `routes:\n  - name: ${r.name}\n    shadow:\n      compare:\n        ignore: [${JSON.stringify(entry)}]`;
}
function rowDetail(r, d, f) {
  const examples = [];
  for (const s of d.samples || []) {
    for (const x of s.differences || []) {
      if (x.path !== f.path || x.kind !== f.kind) continue;
      for (const e of x.examples || [x.at || x.path]) if (!examples.includes(e)) examples.push(e);
    }
  }
  const box = h("div", { class: "row-detail" });
  box.append(h("div", { class: "muted" }, examples.length ?
    "Examples in recent samples:" : "No recent sample shows this row."),
  h("ul", { class: "examples" }, ...examples.slice(0, 12).map((e) => h("li", { class: "mono" }, e))));
  if (f.path !== "other" && !f.ignored) {
    const text = ignoreSnippet(r, f.path);
    const pre = h("pre", { class: "snippet", id: "ignore-snippet" }, text);
    const copy = h("button", { class: "btn small", id: "copy-snippet", onclick: (ev) => {
      ev.stopPropagation();
      const done = () => toast("Copied: add it to routes.yaml and reload", "good");
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, () => selectText(pre));
      } else { selectText(pre); toast("Selected: copy it with Ctrl+C", "good"); }
    } }, "Copy");
    box.append(h("div", { class: "snippet-head" }, h("span", {}, "To ignore this field, add to routes.yaml:"), copy), pre);
  }
  return box;
}
function selectText(el) {
  const range = document.createRange();
  range.selectNodeContents(el);
  const sel = window.getSelection();
  sel.removeAllRanges();
  sel.addRange(range);
}

function samplePanel(d) {
  const all = d.samples || [];
  const list = S.sel.path ? all.filter((s) => (s.differences || []).some((x) => x.path === S.sel.path)) : all;
  const box = h("div", { id: "sample" });
  if (!list.length) {
    box.append(h("div", { class: "sample-head muted" }, S.sel.path ? "No recent sample shows " + S.sel.path + "." : "No samples recorded."));
    return box;
  }
  const i = Math.min(S.sel.sample, list.length - 1);
  const s = list[i];
  const req = s.request || {};
  const nav = (delta) => () => {
    S.sel.sample = Math.max(0, Math.min(list.length - 1, i + delta)); S.sel.hit = null;
    $("sample").replaceWith(samplePanel(d));
  };
  const diffs = (s.differences || []).filter((x) => !S.sel.path || x.path === S.sel.path);
  box.append(h("div", { class: "sample-head" },
    h("b", {}, "Sample"), h("span", { class: "mono" }, (req.method || "") + " " + (req.path || "")),
    h("span", { class: "muted" }, `step ${s.step ?? "—"} · ${ago(s.time)}`),
    S.sel.path ? h("span", { class: "tag" }, "showing " + S.sel.path) : null,
    h("div", { class: "spacer" }),
    h("button", { class: "btn small", id: "next-diff", onclick: nextHit }, "next difference ↓"),
    h("span", { class: "muted" }, `${i + 1} of ${list.length}`),
    h("button", { class: "btn small", disabled: i === 0, onclick: nav(-1) }, "‹ newer"),
    h("button", { class: "btn small", disabled: i >= list.length - 1, onclick: nav(1) }, "older ›")));
  if (diffs.length) {
    const dl = h("div", { class: "dlist" }, h("span", { class: "h" }, "path"), h("span", { class: "h" }, "legacy"),
      h("span", { class: "h" }, "target"));
    for (const x of diffs) {
      const where = x.at ? `${x.at}  (${fmtInt(x.elements)} of ${fmtInt(x.of)} elements)` : x.path;
      dl.append(h("span", { class: "path" }, where), h("span", { class: "l-c" }, show(x.legacy)),
        h("span", {}, show(x.target)));
    }
    if (s.more_differences) dl.append(h("span", { class: "muted" }, `… ${fmtInt(s.more_differences)} more`), h("span"), h("span"));
    box.append(dl);
  }
  box.append(h("div", { class: "side" },
    sideView("legacy", s.legacy, diffs), sideView("target", s.target, diffs)));
  return box;
}
function show(v) { return v === undefined ? "(absent)" : JSON.stringify(v); }

/* `$.a[3]['b c'][id=25]` -> ["a", 3, "b c", {key: "id", value: 25}] (null when not a $ path). */
function parsePath(path) {
  if (!path || path[0] !== "$") return null;
  const out = [];
  let i = 1;
  while (i < path.length) {
    if (path[i] === ".") {
      const m = /^[^.[\]]+/.exec(path.slice(i + 1));
      if (!m) return null;
      out.push(m[0]); i += 1 + m[0].length;
    } else if (path[i] === "[") {
      if (path[i + 1] === "'" || path[i + 1] === '"') {
        const q = path[i + 1]; let j = i + 2, key = "";
        while (j < path.length && path[j] !== q) { if (path[j] === "\\") j += 1; key += path[j]; j += 1; }
        out.push(key); i = j + 2;
      } else {
        let j = i + 1, q = null;
        while (j < path.length && (q || path[j] !== "]")) {
          if (q && path[j] === "\\") j += 1; else if (path[j] === "'") q = q ? null : "'";
          j += 1;
        }
        const inner = path.slice(i + 1, j);
        if (/^\d+$/.test(inner)) out.push(Number(inner));
        else if (inner === "*") out.push("*");
        else {
          const eq = inner.indexOf("=");
          if (eq < 0) return null;
          let v = inner.slice(eq + 1);
          if (v[0] === "'") v = v.slice(1, -1).replace(/\\(.)/g, "$1");
          else v = JSON.parse(v);
          out.push({ key: inner.slice(0, eq), value: v });
        }
        i = j + 1;
      }
    } else return null;
  }
  return out;
}
/* Keyed segments resolved to indices in `doc`: the concrete path of a node, or null. */
function resolvePath(doc, segs) {
  const out = [];
  let cur = doc;
  for (const seg of segs) {
    if (seg !== null && typeof seg === "object") {
      if (!Array.isArray(cur)) return null;
      const i = cur.findIndex((el) => el && typeof el === "object" && el[seg.key] === seg.value);
      if (i < 0) return null;
      out.push(i); cur = cur[i];
    } else if (seg === "*") {
      return null;
    } else {
      if (cur === null || typeof cur !== "object" || !(seg in cur)) return null;  // not on this side
      out.push(seg); cur = cur[seg];
    }
  }
  return out;
}
/* Pretty-printed JSON as lines, each with the path of the node it belongs to. */
function jsonLines(v, path, indent, prefix, comma, out) {
  const pad = "  ".repeat(indent);
  if (v !== null && typeof v === "object") {
    const arr = Array.isArray(v);
    const entries = arr ? v.map((x, i) => [i, x]) : Object.entries(v);
    if (!entries.length) { out.push({ text: pad + prefix + (arr ? "[]" : "{}") + comma, path }); return; }
    out.push({ text: pad + prefix + (arr ? "[" : "{"), path });
    entries.forEach(([k, x], n) => jsonLines(x, [...path, k], indent + 1,
      arr ? "" : JSON.stringify(k) + ": ", n < entries.length - 1 ? "," : "", out));
    out.push({ text: pad + (arr ? "]" : "}") + comma, path });
    return;
  }
  out.push({ text: pad + prefix + JSON.stringify(v) + comma, path });
}
const within = (path, target) => target.length <= path.length && target.every((s, i) => s === path[i]);
function sideView(side, resp, diffs) {
  resp = resp || {};
  const pre = h("pre", { class: "body", "data-side": side });
  const hdrs = (resp.headers || []).map(([k, v]) => [k, k + ": " + v]);
  const hdrHits = new Set(diffs.filter((x) => x.path.startsWith("header:")).map((x) => x.path.slice(7).toLowerCase()));
  let doc, lines;
  try { doc = JSON.parse(resp.body || ""); } catch (e) { doc = undefined; }
  if (doc !== undefined) {
    lines = []; jsonLines(doc, [], 0, "", "", lines);
  } else {
    lines = (resp.body || "").split("\n").map((text) => ({ text, path: null }));
  }
  // The nodes that differ, by JSON path (the first occurrence and its examples), on this side.
  const targets = [];
  if (doc !== undefined) {
    for (const x of diffs) {
      if (x.path === "$" && x.kind === "body") continue;
      for (const p of (x.examples && x.examples.length ? x.examples : [x.at || x.path])) {
        const segs = parsePath(p);
        const at = segs && resolvePath(doc, segs);
        if (at) targets.push(at);
      }
    }
  }
  let hits = 0;
  const emit = (text, hit) => {
    const span = h("span", { class: hit ? "hl" : "" });
    const parts = text.split("[REDACTED]");
    parts.forEach((p, j) => { if (j) span.append(h("span", { class: "red", title: "redacted before storage" }, "[REDACTED]")); span.append(p); });
    if (hit) { pre.append(span); hits += 1; } else pre.append(span, "\n");
    return span;
  };
  for (const [k, line] of hdrs) emit(line, hdrHits.has(k.toLowerCase()));
  if (hdrs.length) emit("", false);
  let prevHit = false;
  for (const line of lines) {
    const hit = line.path !== null && targets.some((t) => within(line.path, t));
    const span = emit(line.text, hit);
    if (hit && !prevHit) span.classList.add("hl-start");
    prevHit = hit;
  }
  return h("div", {}, h("h3", { class: side === "legacy" ? "l" : "t" }, side,
    h("span", { class: "pill plain kind" }, String(resp.status ?? "—")),
    resp.truncated ? h("span", { class: "tag" }, "truncated") : null,
    resp.decoded ? h("span", { class: "tag", title: "stored decoded" }, "decoded " + resp.decoded.join(", ")) : null,
    hits ? h("span", { class: "muted" }, `${hits} highlighted`) : null),
  pre);
}
/* "next difference": the next highlighted block in either pane, scrolled into view. */
function hitStarts() { return [...document.querySelectorAll("#sample pre.body .hl-start")]; }
function nextHit() {
  const all = hitStarts();
  if (!all.length) return;
  S.sel.hit = S.sel.hit === null || S.sel.hit === undefined ? 0 : (S.sel.hit + 1) % all.length;
  keepHit();
}
function keepHit() {
  const all = hitStarts();
  if (S.sel.hit === null || S.sel.hit === undefined || !all.length) return;
  const el = all[Math.min(S.sel.hit, all.length - 1)];
  for (const x of all) x.classList.remove("current");
  el.classList.add("current");
  const pre = el.closest("pre");
  pre.scrollTop = Math.max(0, el.offsetTop - pre.offsetTop - 40);
  el.scrollIntoView({ block: "nearest" });
}

/* ---------- modals and mutations ---------- */
function closeModal() {
  const m = $("modal");
  m.hidden = true;
  m.replaceChildren();
}
function modal({ title, text, fields, confirm, danger, submit }) {
  const m = $("modal");
  const err = h("div", { class: "error", id: "modal-error", hidden: true });
  const go = h("button", { class: "btn " + (danger ? "danger" : "primary"), type: "submit", id: "modal-confirm" }, confirm);
  const form = h("form", { class: "modal", role: "dialog", "aria-modal": "true", onsubmit: async (ev) => {
    ev.preventDefault();
    const values = {};
    for (const f of fields) values[f.name] = form.elements[f.name].value.trim();
    const missing = fields.find((f) => f.required && !values[f.name]);
    if (missing) { err.hidden = false; err.textContent = missing.label + " is required."; return; }
    go.disabled = true;
    try {
      const res = await submit(values);
      closeModal();
      if (res && res.warning) toast(res.warning, "bad");
      const v = currentView();
      S.gen += 1;
      if (v.kind === "route") { S.diffs = null; await routePage(v.name, false); } else await overview(false);
    } catch (e) {
      go.disabled = false;
      err.hidden = false;
      err.textContent = e.message + (e.status ? ` (HTTP ${e.status})` : "");
      if (e.status === 401) { /* the token expired or changed: sign in again */ }
    }
  } },
  h("h2", {}, title),
  h("div", { class: "mbody" }, h("p", {}, text),
    fields.map((f) => [h("label", { for: "f-" + f.name }, f.label),
      f.type === "textarea" ? h("textarea", { id: "f-" + f.name, name: f.name, placeholder: f.placeholder || "" })
        : h("input", { id: "f-" + f.name, name: f.name, type: f.type || "text", value: f.value ?? "",
          placeholder: f.placeholder || "", step: f.step, min: f.min, max: f.max })]),
    err),
  h("div", { class: "mfoot" }, h("button", { class: "btn ghost", type: "button", id: "modal-cancel", onclick: closeModal }, "Cancel"), go));
  m.replaceChildren(form);
  m.hidden = false;
  const firstField = form.querySelector("textarea, input");
  if (firstField) firstField.focus();
  m.onclick = (ev) => { if (ev.target === m) closeModal(); };
}

function rollbackModal(r) {
  const all = r === null;
  modal({
    title: all ? "Roll back every route" : `Roll back ${r.name}`,
    text: all ? "Sends 100% of every route's traffic to legacy now and freezes the weights until each is resumed."
      : `Sends 100% of ${r.name}'s traffic to ${r.legacy} now and freezes the weight until someone resumes it.`,
    fields: [{ name: "reason", label: "Reason (kept in the audit log)", type: "textarea", required: true,
      placeholder: "e.g. p99 spike on target, investigating" }],
    confirm: all ? "Roll back all routes" : "Roll back now",
    danger: true,
    submit: (v) => api("POST", all ? "/admin/rollback" : `/admin/routes/${enc(r.name)}/rollback`, { reason: v.reason })
      .then((res) => { toast(all ? "Every route rolled back" : `${r.name} rolled back to legacy`, "good"); return res; }),
  });
}
function resumeModal(r) {
  modal({
    title: `Resume ${r.name}`,
    text: "Lifts the rollback freeze. The weight stays at 0% until it is set or promoted.",
    fields: [{ name: "reason", label: "Reason", type: "textarea", required: true, placeholder: "e.g. fix deployed" }],
    confirm: "Resume",
    submit: (v) => api("POST", `/admin/routes/${enc(r.name)}/resume`, { reason: v.reason })
      .then((res) => { toast(`${r.name} resumed at 0%`, "good"); return res; }),
  });
}
function weightModal(r) {
  modal({
    title: `Set the weight of ${r.name}`,
    text: `Percent of matching traffic sent to ${r.target} (0-100, up to two decimals). Now at ${fmtW(r.weight)}.`,
    fields: [{ name: "weight", label: "Weight (%)", type: "number", value: r.weight, step: "0.01", min: 0, max: 100, required: true },
      { name: "reason", label: "Reason", type: "textarea", required: true }],
    confirm: "Set weight",
    submit: (v) => api("PUT", `/admin/routes/${enc(r.name)}/weight`, { weight: Number(v.weight), reason: v.reason })
      .then((res) => { toast(`${r.name}: ${fmtW(res.from)} → ${fmtW(res.to)}`, "good"); return res; }),
  });
}
function promoteModal(r) {
  modal({
    title: `Promote ${r.name}`,
    text: "Evaluates the gate and acts on it: steps the weight up, holds, or (with auto_rollback) rolls back.",
    fields: [],
    confirm: "Evaluate and act",
    submit: (v) => api("POST", `/admin/routes/${enc(r.name)}/promote`, {}).then((res) => {
      S.gate = res;
      toast(`gate: ${res.decision}` + (res.acted ? " (acted)" : res.approval ? " (awaiting approval)" : ""),
        res.decision === "fail" || res.decision === "inconclusive" ? "bad" : "good");
      return res;
    }),
  });
}

function approveModal(r) {
  modal({
    title: `Approve ${r.name}`,
    text: approvalText(r.approval) + ". Approving makes the change now (a promotion is judged again " +
      "first). You cannot approve what you asked for yourself.",
    fields: [{ name: "reason", label: "Reason (kept in the audit log)", type: "textarea", required: true }],
    confirm: "Approve",
    submit: (v) => api("POST", `/admin/routes/${enc(r.name)}/approve`, { reason: v.reason }).then((res) => {
      S.gate = res;
      toast(`${r.name}: approved, now ${fmtW(res.weight)}`, "good");
      return res;
    }),
  });
}
function resetEvidenceModal(r) {
  modal({
    title: `Reset the evidence of ${r.name}`,
    text: "Starts a new step at the same weight: the gate, the numbers and the diffs count only what " +
      "happens from now on (e.g. after a fix of the new service).",
    fields: [{ name: "reason", label: "Reason (kept in the audit log)", type: "textarea", required: true,
      placeholder: "e.g. fixed the currency field in 1.4.3" }],
    confirm: "Reset evidence",
    submit: (v) => api("POST", `/admin/routes/${enc(r.name)}/reset-evidence`, { reason: v.reason })
      .then((res) => { S.gate = null; toast(`${r.name}: new evidence from now on`, "good"); return res; }),
  });
}

/* ---------- start ---------- */
document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") closeModal(); });
window.addEventListener("hashchange", navigate);
document.addEventListener("visibilitychange", () => { if (!document.hidden && S.role !== null) navigate(); });
window.addEventListener("DOMContentLoaded", () => {
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    S.token = null;
    S.role = null;
    S.ring.clear();
    S.series.clear();
    showLogin();
  });
  navigate();
});
