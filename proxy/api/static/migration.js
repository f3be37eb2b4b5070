/* strangler dashboard: the Migration page (#/migration), loaded after app.js and using its
 * helpers (h, svg, api, card, lineChart, fmt*). The monolith's endpoints by traffic, each coloured
 * by its share on new services (violet: legacy, green: new), progress per day, the routes ready
 * to retire and the declared endpoints nobody calls. Refreshed every 10 s while shown. */
"use strict";

const MIG_POLL_MS = 10000;
const MIG_WINDOWS = [["24h", "24 h"], ["7d", "7 days"], ["30d", "30 days"]];
const MIG = { since: "7d", limit: 200 };

/* legacy violet (#a78bfa) -> new green (#34d399) by the share served by new services */
function shareColor(share) {
  if (share === null || share === undefined) return "#5b6a89";
  const a = [167, 139, 250], b = [52, 211, 153];
  const c = a.map((x, i) => Math.round(x + (b[i] - x) * Math.max(0, Math.min(1, share))));
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

async function migrationPage(first) {
  const gen = S.gen;
  let inv, prog, ret;
  try {
    [inv, prog, ret] = await Promise.all([
      api("GET", "/admin/inventory?since=" + enc(MIG.since) + "&limit=" + MIG.limit),
      api("GET", "/admin/progress?days=30"),
      api("GET", "/admin/retire-check?days=14")]);
  } catch (e) {
    if (gen !== S.gen) return;
    if (!handleError(e)) schedule(() => migrationPage(false), MIG_POLL_MS);
    return;
  }
  if (gen !== S.gen) return;
  setLive(true);
  renderMigration(inv, prog, ret);
  schedule(() => migrationPage(false), MIG_POLL_MS);
}

function renderMigration(inv, prog, ret) {
  crumbs(h("a", { href: "#/" }, "Routes"), h("span", { class: "here" }, "Migration"));
  markNav();
  const last = prog.last_24h;
  const ready = ret.routes.filter((r) => r.ready);
  const unrouted = inv.endpoints.filter((e) => e.unrouted);
  const unroutedReq = unrouted.reduce((n, e) => n + e.unrouted, 0);
  const cards = h("div", { class: "cards", id: "migration-cards" },
    card("On new services", fmtPct(last.requests.share), "of requests, last 24 h (" +
      fmtInt(last.requests.target) + " of " + fmtInt(last.requests.total) + ")"),
    card("Endpoints migrated", last.endpoints.total ? last.endpoints.migrated + " / " +
      last.endpoints.total : "—", (last.endpoints.partly ? last.endpoints.partly + " partly · " : "") +
      "at least 99% on new, last 24 h"),
    card("Not routed yet", inv.requests ? fmtPct(unroutedReq / inv.requests) : "—",
      unrouted.length + " endpoints, " + windowLabel()),
    card("Ready to retire", ready.length + " / " + ret.routes.length,
      ready.length ? ready.map((r) => r.route).join(", ") : "routes: none yet (14 days)"));
  const notes = [];
  if (inv.enabled === false) notes.push("inventory.enabled is false: nothing new is recorded.");
  if (inv.first && inv.first > inv.since) notes.push("Records begin " +
    new Date(inv.first * 1000).toLocaleString("en-GB", { hour12: false }) + ": the window is shorter.");
  $("main").replaceChildren(...[cards,
    notes.length ? h("div", { class: "mig-note", id: "migration-note" }, notes.join(" ")) : null,
    h("div", { class: "grid two" }, progressPanel(prog), retirePanel(ret)),
    endpointsPanel(inv), noTrafficPanel(inv)].filter(Boolean));
}

function windowLabel() {
  return (MIG_WINDOWS.find((w) => w[0] === MIG.since) || [0, MIG.since])[1];
}

function progressPanel(prog) {
  const panel = h("div", { class: "panel", id: "progress-panel" },
    h("div", { class: "panel-head" }, h("h2", {}, "Progress"),
      h("span", { class: "sub" }, "share on new services per UTC day"),
      h("div", { class: "spacer" }), legendMig()));
  const body = h("div", { class: "panel-body" });
  const days = prog.daily || [];
  if (!days.length) {
    body.append(h("div", { class: "empty" }, "No traffic recorded yet."));
  } else {
    const pts = (k) => days.map((d) => [d.start + 43200, d[k].share === null ? null : d[k].share * 100]);
    const x0 = days[0].start, x1 = days[days.length - 1].start + 86400;
    body.append(lineChart([
      { cls: "mig-req", color: "#34d399", points: pts("requests"), area: true },
      { cls: "mig-ep", color: "#38bdf8", points: pts("endpoints") }],
    { x: [x0, x1], ymax: 100, yticks: [0, 25, 50, 75, 100], fmt: (v) => v + "%",
      width: 560, height: 170, cls: "mig-chart", label: "share on new services per day" }));
    body.lastChild.id = "progress-chart";
  }
  panel.append(body);
  return panel;
}

function legendMig() {
  return h("span", { class: "mig-legend" },
    h("span", { class: "sw", style: "background:#34d399" }), "requests",
    h("span", { class: "sw", style: "background:#38bdf8" }), "endpoints");
}

function retirePanel(ret) {
  const rows = ret.routes.map((r) => {
    const unmet = r.conditions.filter((c) => !c.ok);
    return h("tr", { class: "retire-row", "data-route": r.route, "data-ready": r.ready ? "1" : "0" },
      h("td", {}, h("a", { class: "rname", href: "#/routes/" + enc(r.route) }, r.route)),
      h("td", {}, r.retired ? h("span", { class: "pill info retired", title: "retired by " +
        r.retired.actor + " at " + r.retired.time + (r.retired.forced ? " (forced)" : "") +
        ": " + r.retired.reason }, r.retired.forced ? "retired (forced)" : "retired")
        : r.ready ? h("span", { class: "pill active ready" }, "ready to retire")
          : h("span", { class: "pill hold" }, "not yet")),
      h("td", { class: "mig-why" }, r.ready ? h("span", { class: "faint" },
        "100% for 14 days, no rollback, no legacy traffic")
        : h("span", { title: unmet.map((c) => c.detail).join("\n") },
          unmet[0].detail + (unmet.length > 1 ? " (+" + (unmet.length - 1) + " more)" : ""))));
  });
  return h("div", { class: "panel", id: "retire-panel" },
    h("div", { class: "panel-head" }, h("h2", {}, "Retirement"),
      h("span", { class: "sub" }, "strangler retire-check, last 14 days")),
    h("table", { id: "retire" }, h("tbody", {}, rows.length ? rows
      : h("tr", {}, h("td", { class: "empty" }, "No routes.")))));
}

function endpointsPanel(inv) {
  const max = inv.endpoints.reduce((m, e) => Math.max(m, e.requests), 0) || 1;
  const rows = inv.endpoints.map((e) => {
    const label = e.other ? "* other" : e.method + " " + e.template;
    const bar = h("span", { class: "mig-bar" });
    bar.style.width = Math.max(2, Math.round((e.requests / max) * 100)) + "%";
    bar.style.background = shareColor(e.new_share);
    return h("tr", { class: "ep-row", "data-endpoint": label,
      "data-new-share": e.new_share === null ? "" : String(e.new_share) },
    h("td", { class: "mono ep" }, label, e.other ? h("span", { class: "tag" },
      "beyond inventory.max_templates") : null),
    h("td", { class: "traffic" }, h("div", { class: "mig-track" }, bar)),
    h("td", { class: "num" }, fmtInt(e.requests), h("div", { class: "rsub" }, fmtPct(e.share))),
    h("td", { class: "num" }, errText(e.error_rate)),
    h("td", { class: "num" }, h("span", { class: "mono" }, fmtMs(e.legacy_p50_ms) + " / " +
      fmtMs(e.legacy_p99_ms))),
    h("td", {}, e.route ? h("a", { href: "#/routes/" + enc(e.route) }, e.route)
      : h("span", { class: "faint" }, "not routed")),
    h("td", { class: "num" }, e.route ? fmtW(e.weight) : "—"),
    h("td", { class: "num newshare" }, h("span", { class: "mig-dot" }), fmtPct(e.new_share)));
  });
  for (const r of rows) r.querySelector(".mig-dot").style.background =
    shareColor(r.dataset.newShare === "" ? null : Number(r.dataset.newShare));
  const seg = MIG_WINDOWS.map(([k, label]) => h("button", { class: "btn small seg" +
    (MIG.since === k ? " on" : ""), id: "win-" + k, onclick: () => {
      MIG.since = k; S.gen += 1; migrationPage(true);
    } }, label));
  return h("div", { class: "panel", id: "endpoints-panel" },
    h("div", { class: "panel-head" }, h("h2", {}, "Endpoints by traffic"),
      h("span", { class: "sub" }, fmtInt(inv.requests) + " requests, " + inv.endpoints_total +
        " endpoints, " + windowLabel() + (inv.replicas > 1 ? "" : " · this replica")),
      h("div", { class: "spacer" }), h("span", { class: "mig-scale" }, "legacy",
        h("span", { class: "grad" }), "new"), h("div", {}, seg)),
    h("table", { id: "endpoints" },
      h("thead", {}, h("tr", {}, h("th", {}, "Endpoint"), h("th", {}, "Traffic"),
        h("th", { class: "num" }, "Requests"), h("th", { class: "num" }, "Errors"),
        h("th", { class: "num" }, "Legacy p50 / p99"), h("th", {}, "Route"),
        h("th", { class: "num" }, "Weight"), h("th", { class: "num" }, "On new"))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 8, class: "empty" },
        "No requests in this window.")))),
    inv.truncated ? h("div", { class: "rsub mig-more" }, "… and " + inv.truncated +
      " more (strangler inventory --limit)") : null);
}

function noTrafficPanel(inv) {
  const none = inv.no_traffic || [];
  if (!none.length) return null;
  return h("div", { class: "panel mig-none", id: "no-traffic" },
    h("div", { class: "panel-head" }, h("h2", {}, "Declared, no traffic"),
      h("span", { class: "sub" }, "delete rather than migrate? " + windowLabel())),
    h("div", { class: "panel-body" }, none.map((d) => h("div", { class: "mono none-row" },
      d.method + " " + d.template, h("span", { class: "faint" }, "  " + d.source)))));
}

function markNav() {
  const link = $("nav-migration");
  if (link) link.classList.toggle("on", /^#\/migration\b/.test(location.hash));
}
window.addEventListener("hashchange", markNav);
window.addEventListener("DOMContentLoaded", markNav);
