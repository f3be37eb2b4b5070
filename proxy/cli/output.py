"""Human-readable output of the control commands: tables, gate decisions, diffs, history.

Every function takes the admin API's JSON and returns text; `--json` bypasses all of this.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    return "\n".join(lines)


def pct(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value * 100:.{digits}f}%"


def weight(value: Any) -> str:
    if not isinstance(value, int | float):
        return str(value)
    return f"{value:g}%"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}ms"


def _backend(stats: dict, side: str) -> tuple[str, str, str]:
    b = stats.get(side) or {}
    n = b.get("requests", 0)
    return str(n), pct(b.get("error_rate")), ms(b.get("p99_ms"))


def status_table(routes: list[dict]) -> str:
    rows = []
    notes = []
    for r in routes:
        step = (r.get("stats") or {}).get("step") or {}
        leg_n, leg_err, leg_p99 = _backend(step, "legacy")
        tgt_n, tgt_err, tgt_p99 = _backend(step, "target")
        shadow = step.get("shadow") or {}
        compared = shadow.get("compared", 0)
        mism = (f"{pct(shadow.get('mismatch_rate'))} of {compared}" if compared else "-")
        errors = shadow.get("errors") or 0
        last = r.get("last_decision") or {}
        gate = last.get("decision", "-")
        if last.get("decision") == "promote":
            gate += f" -> {weight(last.get('to_weight'))}"
        if last.get("age_seconds") is not None:
            gate += f" ({age(last['age_seconds'])} ago)"
        weight_txt = weight(r.get("weight"))
        if r.get("file_weight") is not None and r.get("file_weight") != r.get("weight"):
            weight_txt += f" (file {weight(r.get('file_weight'))})"
        since = r.get("evidence_since") or {}
        rows.append([
            r.get("name"), weight_txt, r.get("state"),
            f"{leg_n} / {leg_err}", f"{tgt_n} / {tgt_err}",
            f"{leg_p99} / {tgt_p99}", mism, str(errors) if errors else "-", gate,
            age(since.get("seconds")),
        ])
        notes += route_notes(r)
    head = ["ROUTE", "WEIGHT", "STATE", "LEGACY REQ/ERR", "TARGET REQ/ERR",
            "P99 LEGACY/TARGET", "SHADOW MISMATCH", "SHADOW ERRORS", "LAST GATE", "EVIDENCE"]
    text = table(head, rows) + "\n(requests, errors, p99 and shadow since each route's " \
        "evidence began: EVIDENCE is its age; shadow errors are mirrors that got no answer, " \
        "not differences)"
    return text + ("\n" + "\n".join(notes) if notes else "")


def route_notes(r: dict) -> list[str]:
    """What a route's row cannot say: since when and why its evidence, pending approvals,
    a paused auto-promotion."""
    name = r.get("name")
    since = r.get("evidence_since") or {}
    out = []
    if since.get("time"):
        out.append(f"{name}: evidence since {stamp(since['time'])} "
                   f"({since.get('reason') or 'unknown'})")
    approval = r.get("approval")
    if approval:
        out.append(f"{name}: {approval_line(approval)}")
    if (r.get("promotion") or {}).get("auto_paused"):
        out.append(f"{name}: auto-promotion paused: the gate answered inconclusive at this step "
                   f"(`strangler reset-evidence {name}` starts it afresh)")
    return out


def approval_line(a: dict) -> str:
    return (f"awaiting approval: {a.get('kind')} {weight(a.get('from_weight'))} -> "
            f"{weight(a.get('to_weight'))} asked by {a.get('requested_by')}; another named "
            f"admin may `strangler approve {a.get('route')} --reason ...` until "
            f"{stamp(a.get('expires_at'))} (in {age(a.get('expires_in_seconds'))})")


def awaiting_approval(body: dict) -> str:
    name = body.get("name") or body.get("route")
    return f"{name}: {approval_line(body.get('approval') or {})}"


def stamp(epoch: Any) -> str:
    if not isinstance(epoch, int | float):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def age(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f}m"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def mutation(body: dict, verb: str) -> str:
    name = body.get("name") or body.get("route")
    lines = [f"{name}: {verb}: weight {weight(body.get('weight'))}, state {body.get('state')}"]
    if body.get("already_rolled_back"):
        lines.append(f"{name} was already rolled back; the freeze holds")
    audit = body.get("audit")
    if audit:
        lines.append(f"recorded in the audit log (#{audit.get('seq')}) as {audit.get('actor')}")
    return "\n".join(lines)


def warning(body: dict) -> str | None:
    if body.get("durable", True) and not body.get("warning"):
        return None
    return "WARNING: " + str(body.get("warning") or "NOT DURABLE: the change is in memory only")


def decision(body: dict) -> str:
    d = body.get("decision")
    head = f"{body.get('route')}: {d}"
    if d == "promote":
        head += f" {weight(body.get('from_weight'))} -> {weight(body.get('to_weight'))}"
    elif d == "fail":
        head += f" at {weight(body.get('from_weight'))}"
        if body.get("acted"):
            head += " (rolled back to 0%)"
    elif d in ("hold", "complete", "inconclusive"):
        head += f" at {weight(body.get('from_weight'))}"
    if d == "promote" and body.get("acted"):
        head += " (done)"
    elif d == "promote" and body.get("approval"):
        head += " (awaiting approval)"
    lines = [head]
    lines += [f"  - {r}" for r in body.get("reasons") or []]
    if body.get("approval") and not body.get("acted"):
        lines.append(f"  {approval_line(body['approval'])}")
    lines += [f"  note: {n}" for n in body.get("notes") or []]
    ev = body.get("evidence") or {}
    if ev:
        lines.append("  evidence:")
        for side in ("legacy", "target"):
            b = ev.get(side)
            if isinstance(b, dict):
                p99 = b.get("p99_seconds")
                lines.append(
                    f"    {side}: {b.get('requests')} requests, {b.get('errors')} errors "
                    f"({pct(b.get('error_rate'))}), p99 "
                    f"{'-' if p99 is None else f'{p99 * 1000:.1f}ms'}"
                    f" ({b.get('latency_samples', 0)} samples)"
                )
        if ev.get("fallbacks"):
            lines.append(f"    fallbacks: {ev['fallbacks']} target failures answered by legacy")
        sh = ev.get("shadow") or {}
        if sh.get("enabled"):
            lines.append(
                f"    shadow: {sh.get('compared')} compared, {sh.get('mismatched')} mismatched "
                f"(rate {pct(sh.get('mismatch_rate'), 3)}, 95% upper bound "
                f"{pct(sh.get('mismatch_rate_upper_95'), 3)}); {sh.get('errors', 0)} errors "
                "(no answer, not differences)"
            )
        if ev.get("p99_ratio") is not None:
            lines.append(f"    p99 ratio target/legacy: {ev['p99_ratio']:.3g} (95%: "
                         f"{_num(ev.get('p99_ratio_lower_95'))} to "
                         f"{_num(ev.get('p99_ratio_upper_95'))})")
        paired = ev.get("paired_latency") or {}
        if paired.get("pairs"):
            lines.append(f"    paired latency (target - legacy, median of {paired['pairs']}): "
                         f"{_dms(paired.get('median_difference_seconds'))} (95%: "
                         f"{_dms(paired.get('lower_95'))} to {_dms(paired.get('upper_95'))})")
    return "\n".join(lines)


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.3g}"


def _dms(v: Any) -> str:
    return "-" if v is None else f"{v * 1000:+.2f}ms"


def diffs(body: dict, sample_lines: int = 8, now: float | None = None) -> str:
    compared = body.get("compared", 0)
    mism = body.get("mismatched", 0)
    errors = body.get("errors", 0)
    rate = pct(mism / compared) if compared else "-"
    head = f"{body.get('route')}: {compared} compared, {mism} mismatched ({rate})"
    if errors:
        head += f"; {errors} errors in this window (a side did not answer: not differences)"
    lines = [head, _window_line(body.get("window") or {}, now)]
    lines += shadow_errors_lines(body.get("shadow_errors"))
    fields = body.get("fields") or []
    live = [f for f in fields if not f.get("ignored")]
    ignored = [f for f in fields if f.get("ignored")]
    if live:
        lines += ["", _fields_table(live)]
    if ignored:
        lines += ["", "ignored now (the current ignore rules cover these; not live differences):",
                  _fields_table(ignored)]
    hidden = int(body.get("fields_total", len(fields))) - len(fields)
    if hidden > 0:
        lines.append(f"... {hidden} more field rows (--limit)")
    samples = body.get("samples") or []
    if samples:
        lines.append("")
        lines.append("recent samples (redacted):")
        for s in samples:
            lines += _sample_lines(s, sample_lines, now)
    if not fields and not samples:
        lines.append("no differences recorded")
    return "\n".join(lines)


def _window_line(w: dict, now: float | None) -> str:
    if w.get("all"):
        return ("(all evidence the store has, every step and rule set" +
                (", every replica" if w.get("fleet") else "") + "; --all)")
    if w.get("fleet"):
        text = ("(current evidence of every replica: recorded since this replica's step "
                f"{w.get('step')} began")
        if w.get("step_started"):
            text += f" {age_of(w['step_started'], now)} ago"
        text += f", compare rules {w.get('rules')}"
    else:
        text = f"(current evidence: step {w.get('step')}, compare rules {w.get('rules')}"
    if w.get("first"):
        text += f", first comparison {age_of(w['first'], now)} ago"
    return text + "; --all for everything)"


def _fields_table(fields: list[dict]) -> str:
    rows = []
    for f in fields:
        notes = []
        if f.get("likely_noise"):
            notes.append("likely noise")
        if f.get("renamed_to"):
            notes.append(f"likely renamed to {f['renamed_to']}")
        if f.get("renamed_from"):
            notes.append(f"likely renamed from {f['renamed_from']}")
        share = f.get("share")
        elements = "" if share is None else f"{pct(share, 1)} of {_per(f)}"
        rows.append([f.get("path"), f.get("kind"), f.get("count"), pct(f.get("rate")),
                     elements, ", ".join(notes)])
    return table(["FIELD", "KIND", "COUNT", "RATE", "ELEMENTS", "NOTE"], rows)


def _per(f: dict) -> str:
    count = f.get("count") or 1
    of = f.get("of") or 0
    return f"{of // count} elements" if of % count == 0 else f"~{of / count:.0f} elements"


def age_of(t: float, now: float | None = None) -> str:
    """How long ago epoch `t` was, as `age` writes it."""
    return age(max(0.0, (time.time() if now is None else now) - float(t)))


def _sample_lines(s: dict, limit: int, now: float | None) -> list[str]:
    req = s.get("request") or {}
    leg = s.get("legacy") or {}
    tgt = s.get("target") or {}
    head = (f"  #{s.get('id')} {req.get('method')} {req.get('path')}  legacy {leg.get('status')}"
            f" / target {tgt.get('status')}  (step {s.get('step')}"
            + (f", {age_of(s['time'], now)} ago" if s.get("time") else "") + ")")
    body = []
    for d in s.get("differences") or []:
        if not isinstance(d, dict):
            continue
        where = d.get("path")
        if d.get("at"):
            of = d.get("of") or 0
            where = (f"{d['path']} in {d.get('elements')} of {of} elements, e.g. {d['at']}"
                     if of else f"{d['path']} e.g. {d['at']}")
        body.append(f"      {where}: {d.get('kind')}" + _diff_values(d))
    more = int(s.get("more_differences") or 0)
    if len(body) > limit:
        more += len(body) - limit
        body = body[:limit]
    if more:
        body.append(f"      ... {more} more difference(s) (--sample-lines)")
    return [head, *body]


def shadow_errors_lines(errors: Any) -> list[str]:
    """Mirrors that got no answer: errors, counted apart from the differences."""
    if not isinstance(errors, dict):
        return []
    out = []
    for label, key in (("at this step", "step"), ("since start", "total")):
        part = errors.get(key) or {}
        if part.get("errors"):
            kinds = ", ".join(f"{k} {n}" for k, n in (part.get("kinds") or {}).items())
            out.append(f"  {part['errors']} mirrored requests got no answer {label} (errors, not "
                       f"differences{': ' + kinds if kinds else ''})")
    return out


def _diff_values(d: dict) -> str:
    if "legacy" in d or "target" in d:
        return f"  legacy={_short(d.get('legacy'))} target={_short(d.get('target'))}"
    return ""


def _short(v: Any, n: int = 60) -> str:
    # JSON spelling, so a type difference shows: 97 vs "97".
    s = json.dumps(v, ensure_ascii=False, default=str)
    return s if len(s) <= n else s[: n - 3] + "..."


def history(entries: list[dict]) -> str:
    if not entries:
        return "no audit entries"
    rows = []
    for e in entries:
        change = ""
        if e.get("from") is not None or e.get("to") is not None:
            change = f"{_val(e.get('from'))} -> {_val(e.get('to'))}"
        reason = e.get("reason") or ""
        ev = e.get("evidence")
        if e.get("action") == "reload" and isinstance(ev, dict) and ev.get("summary"):
            reason = f"{reason}: {ev['summary']}"
        actor = e.get("actor")
        if e.get("replica"):  # a shared trail: who, and through which replica
            actor = f"{actor} @{e['replica']}"
        seq = "pending" if e.get("pending") else e.get("seq")
        rows.append([seq, e.get("time"), actor, e.get("action"),
                     e.get("route") or "*", change, _short(reason, 70),
                     _cut(evidence_brief(ev), 120)])
    return table(["#", "TIME (UTC)", "ACTOR", "ACTION", "ROUTE", "CHANGE", "REASON",
                  "EVIDENCE"], rows)


def _cut(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def evidence_brief(ev: Any) -> str:
    """An audit entry's evidence in one line: what the decision stood on (requests, error
    rates, p99, shadow differences), the steps a reset moved between, the toggle or approval
    it concerns; anything else as compact JSON. `--json` has all of it."""
    if not ev:
        return ""
    if not isinstance(ev, dict):
        return json.dumps(ev, ensure_ascii=False, default=str)
    if isinstance(ev.get("evidence"), dict):  # a gate decision: its verdict and its numbers
        inner = _numbers(ev["evidence"])
        return f"{ev.get('decision', '?')}: {inner}" if inner else str(ev.get("decision", ""))
    if "legacy" in ev or "target" in ev:  # numbers themselves (the guardrail's window)
        return _numbers(ev)
    if "previous_step" in ev:  # reset-evidence: from which step to which
        members = ev.get("members")
        pairs = members.items() if isinstance(members, dict) else [(None, ev)]
        return "; ".join(
            (f"{name}: " if name else "")
            + f"step {(m.get('previous_step') or {}).get('step')} -> "
            f"{(m.get('step') or {}).get('id')}" for name, m in pairs)
    if "toggle" in ev:
        return f"toggle {ev['toggle']}"
    if isinstance(ev.get("request"), dict):
        r = ev["request"]
        return (f"approval {r.get('id')}: {weight(r.get('from_weight'))} -> "
                f"{weight(r.get('to_weight'))} asked by {r.get('requested_by')}")
    if isinstance(ev.get("config_hash"), dict):
        h = ev["config_hash"]
        return f"config {str(h.get('from'))[:12]} -> {str(h.get('to'))[:12]}"
    return json.dumps(ev, ensure_ascii=False, default=str, separators=(",", ":"))


def _numbers(ev: dict) -> str:
    """Requests, error rate and p99 of each side, the p99 ratio and shadow differences."""
    parts = []
    for side in ("target", "legacy"):
        b = ev.get(side)
        if isinstance(b, dict) and b.get("requests") is not None:
            p99 = b.get("p99_seconds")
            parts.append(f"{side} {b['requests']} req {pct(b.get('error_rate'))} err"
                         + (f" p99 {ms(p99 * 1000)}" if isinstance(p99, int | float) else ""))
    if ev.get("fallbacks"):
        parts.append(f"{ev['fallbacks']} fell back to legacy")
    ratio = ev.get("p99_ratio")
    if isinstance(ratio, int | float):
        parts.append(f"p99 x{ratio:.2f}")
    sh = ev.get("shadow")
    if isinstance(sh, dict) and sh.get("enabled"):
        parts.append(f"shadow {sh.get('mismatched', 0)}/{sh.get('compared', 0)} differ"
                     + (f", {sh['errors']} errors" if sh.get("errors") else ""))
    return "; ".join(parts)


def _val(v: Any) -> str:
    if isinstance(v, int | float):
        return weight(v)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_val(x)}" for k, x in v.items()) + "}"
    return str(v)


__all__ = ["age", "age_of", "awaiting_approval", "decision", "diffs", "evidence_brief",
           "history", "mutation", "status_table", "table", "warning"]
