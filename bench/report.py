"""Results of a run: per-scenario runs, min/median/max, paired ratios to nginx, the issue's
target checks, and the Markdown and JSON renderings.

A ratio "to nginx" pairs run i of a row with run i of nginx for the same metric and body, so
every ratio compares figures measured moments apart; the reported ratio is the median of those.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

DISTURBED = 30.0  # % of one core used by other work during a run

LABELS = {
    "direct": "direct to upstream (no proxy)",
    "nginx": "nginx reverse proxy, 1 worker, keepalive",
    "bare": "bare httptools + uvloop forwarder (bench/bare_forwarder.py, no features)",
    "aiohttp": "naive aiohttp proxy (pooled ClientSession)",
    "strangler": "strangler, 1 worker, 10 routes",
    "strangler_pure": "strangler, 1 worker, 10 routes, pure-Python data plane",
    "strangler_w2": "strangler, 2 workers (unpinned)",
    "strangler_shadow": "strangler, shadow sample 1.0 (best case: identical answers)",
    "strangler_default_diff": "strangler, default routes.yaml (weight 50, shadow defaults), "
                              "answers differ",
    "strangler_shadow_diff": "strangler, shadow 1.0 unlimited, answers differ",
    "strangler_shadow_diff_pg": "strangler, shadow 1.0 unlimited, answers differ, "
                                "PostgreSQL store",
    "strangler_10k": "strangler, 10,000 routes",
    "strangler_noinv": "strangler, 1 worker, 10 routes, inventory off",
    "strangler_default_noinv": "strangler, default routes.yaml, answers differ, inventory off",
    "strangler_random": "strangler, every request a new unmatched path (inventory on)",
    "strangler_random_noinv": "strangler, every request a new unmatched path, inventory off",
    "stream": "strangler, 1 GiB streamed up and down",
    "nginx_tls_upstream": "nginx, proxy_pass https:// (keepalive, session reuse, verified)",
    "strangler_tls_upstream": "strangler, https upstream (keepalive, session resumption)",
    "nginx_tls_listener": "nginx, TLS listener",
    "strangler_tls_listener": "strangler, TLS listener",
    "strangler_trace_001": "strangler, tracing at sample_ratio 0.01",
    "strangler_trace_1": "strangler, tracing at sample_ratio 1.0",
}


@dataclass
class Row:
    scenario: str
    metric: str  # throughput | p50 | p99 | rss_growth
    body: str  # small | 64KiB | size of the stream
    unit: str
    runs: list[float | None] = field(default_factory=list)  # index = repeat (None: failed)
    details: list[dict] = field(default_factory=list)
    ratio_to_nginx: list[float] = field(default_factory=list)

    @property
    def values(self) -> list[float]:
        return [v for v in self.runs if v is not None]

    def stat(self, fn: str) -> float | None:
        vals = self.values
        if not vals:
            return None
        return {"min": min, "median": statistics.median, "max": max}[fn](vals)


@dataclass(frozen=True)
class Target:
    key: str
    text: str
    row: tuple[str, str, str]
    ref: tuple[str, str, str] | None  # None: absolute value
    op: str  # ">=" | "<="
    goal: float
    limit_hint: str = ""
    # The goal is relative: `goal` added to the ratio of these two rows in the same run (the
    # TLS rows: within 0.05 of strangler's plaintext ratio to nginx).
    base: tuple[tuple[str, str, str], tuple[str, str, str]] | None = None


def _tls_target(key: str, mode: str, body: str) -> Target:
    return Target(
        key,
        f"TLS {mode}, {body} body: throughput vs nginx over TLS (goal: the plaintext ratio "
        "- 0.05)",
        (f"strangler_tls_{mode}", "throughput", body),
        (f"nginx_tls_{mode}", "throughput", body),
        ">=",
        -0.05,
        base=(("strangler", "throughput", body), ("nginx", "throughput", body)),
    )


TARGETS = (
    Target(
        "small_vs_nginx",
        "1 worker, small body: throughput vs nginx",
        ("strangler", "throughput", "small"),
        ("nginx", "throughput", "small"),
        ">=",
        0.5,
    ),
    Target(
        "big_vs_nginx",
        "1 worker, 64 KiB body: throughput vs nginx",
        ("strangler", "throughput", "64KiB"),
        ("nginx", "throughput", "64KiB"),
        ">=",
        0.6,
    ),
    Target(
        "vs_aiohttp",
        "1 worker, small body: throughput vs naive aiohttp proxy",
        ("strangler", "throughput", "small"),
        ("aiohttp", "throughput", "small"),
        ">=",
        5.0,
    ),
    Target(
        "p50",
        "p50 at 1,000 req/s over 16 connections vs nginx",
        ("strangler", "p50", "small"),
        ("nginx", "p50", "small"),
        "<=",
        1.3,
    ),
    Target(
        "p99",
        "p99 at 1,000 req/s over 16 connections vs nginx",
        ("strangler", "p99", "small"),
        ("nginx", "p99", "small"),
        "<=",
        2.0,
    ),
    # issue 29: CPU per request within 1.4x of the bare forwarder's (both saturate their core:
    # throughput is the inverse of CPU per request), and the compiled data plane must pay
    Target(
        "vs_bare",
        "1 worker, small body: proxy CPU per request vs the bare forwarder's",
        ("strangler", "cpu_us", "small"),
        ("bare", "cpu_us", "small"),
        "<=",
        1.4,
    ),
    Target(
        "vs_bare_pairs",
        "the same, from back-to-back pairs of short runs (--cpu-pairs; the ratio within "
        "each pair)",
        ("strangler", "cpu_pair_us", "small"),
        ("bare", "cpu_pair_us", "small"),
        "<=",
        1.4,
    ),
    Target(
        "compiled_vs_pure",
        "1 worker, small body: compiled data plane vs pure Python (throughput)",
        ("strangler", "throughput", "small"),
        ("strangler_pure", "throughput", "small"),
        ">=",
        1.10,
    ),
    Target(
        "shadow",
        "shadow at sample 1.0: primary throughput vs shadow off",
        ("strangler_shadow", "throughput", "small"),
        ("strangler", "throughput", "small"),
        ">=",
        0.65,
    ),
    Target(
        "default_diff_small",
        "default routes.yaml, answers differ, small body: throughput vs nginx",
        ("strangler_default_diff", "throughput", "small"),
        ("nginx", "throughput", "small"),
        ">=",
        0.40,
    ),
    Target(
        "default_diff_big",
        "default routes.yaml, answers differ, 64 KiB body: throughput vs nginx",
        ("strangler_default_diff", "throughput", "64KiB"),
        ("nginx", "throughput", "64KiB"),
        ">=",
        0.50,
    ),
    Target(
        "shadow_diff_p99",
        "p99 at 1,000 req/s, every request shadowed and mismatching, vs nginx",
        ("strangler_shadow_diff", "p99", "small"),
        ("nginx", "p99", "small"),
        "<=",
        2.0,
    ),
    Target(
        "routes_10k",
        "10,000 routes: throughput vs 10 routes",
        ("strangler_10k", "throughput", "small"),
        ("strangler", "throughput", "small"),
        ">=",
        0.9,
    ),
    Target(
        "inventory_plain",
        "traffic inventory on (default) vs off, 10 routes: throughput",
        ("strangler", "throughput", "small"),
        ("strangler_noinv", "throughput", "small"),
        ">=",
        0.97,
    ),
    Target(
        "inventory_default",
        "traffic inventory on vs off, default routes.yaml: throughput",
        ("strangler_default_diff", "throughput", "small"),
        ("strangler_default_noinv", "throughput", "small"),
        ">=",
        0.97,
    ),
    Target(
        "inventory_random",
        "traffic inventory on vs off, every path new and unmatched: throughput",
        ("strangler_random", "throughput", "small"),
        ("strangler_random_noinv", "throughput", "small"),
        ">=",
        0.95,
    ),
    Target(
        "stream_rss",
        "1 GiB streamed request and response: peak RSS growth, MiB (max of runs)",
        ("stream", "rss_growth", "1GiB"),
        None,
        "<=",
        64.0,
    ),
    Target(
        "workers_2",
        "2 workers vs 1 worker (throughput)",
        ("strangler_w2", "throughput", "small"),
        ("strangler", "throughput", "small"),
        ">=",
        1.6,
    ),
    _tls_target("tls_upstream_small", "upstream", "small"),
    _tls_target("tls_upstream_big", "upstream", "64KiB"),
    _tls_target("tls_listener_small", "listener", "small"),
    _tls_target("tls_listener_big", "listener", "64KiB"),
    Target(
        "trace_001",
        "tracing at sample_ratio 0.01: throughput vs tracing off",
        ("strangler_trace_001", "throughput", "small"),
        ("strangler", "throughput", "small"),
        ">=",
        0.97,
    ),
    Target(
        "trace_1",
        "tracing at sample_ratio 1.0: throughput vs tracing off (measured, no goal)",
        ("strangler_trace_1", "throughput", "small"),
        ("strangler", "throughput", "small"),
        ">=",
        0.0,
    ),
)


@dataclass
class Results:
    meta: dict
    rows: dict[tuple[str, str, str], Row] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(
        self,
        scenario: str,
        metric: str,
        body: str,
        unit: str,
        repeat: int,
        value: float | None,
        detail: dict | None = None,
    ) -> None:
        row = self.rows.setdefault((scenario, metric, body), Row(scenario, metric, body, unit))
        while len(row.runs) < repeat:
            row.runs.append(None)
            row.details.append({})
        row.runs.append(value)
        row.details.append(detail or {})

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def paired(self, row: Row, ref: Row) -> list[float]:
        return [
            a / b
            for a, b in zip(row.runs, ref.runs, strict=False)
            if a is not None and b is not None and b > 0
        ]

    def finish(self) -> None:
        for (_, metric, body), row in self.rows.items():
            ref = self.rows.get(("nginx", metric, body))
            row.ratio_to_nginx = self.paired(row, ref) if ref else []

    def ratio(self, row: Row) -> float | None:
        return statistics.median(row.ratio_to_nginx) if row.ratio_to_nginx else None

    def checks(self) -> list[dict]:
        out = []
        for t in TARGETS:
            row = self.rows.get(t.row)
            ref = self.rows.get(t.ref) if t.ref else None
            value: float | None = None
            pairs: list[float] = []
            if row is not None and row.values:
                if t.ref is None:
                    value = max(row.values)
                elif ref is not None and (pairs := self.paired(row, ref)):
                    value = statistics.median(pairs)
            goal: float | None = t.goal
            if t.base is not None:
                base_row, base_ref = self.rows.get(t.base[0]), self.rows.get(t.base[1])
                pairs = self.paired(base_row, base_ref) if base_row and base_ref else []
                goal = statistics.median(pairs) + t.goal if pairs else None
            if value is None or goal is None:
                status = "SKIP"
            else:
                ok = value >= goal if t.op == ">=" else value <= goal
                status = "PASS" if ok else "MISS"
            out.append(
                {
                    "key": t.key,
                    "target": t.text,
                    "op": t.op,
                    "goal": goal,
                    "value": value,
                    "status": status,
                    "runs": pairs,  # the ratio in each run (the value is their median)
                    "limited_by": self.limit(t),
                }
            )
        return out

    def limit(self, t: Target) -> str:
        """What the CPU figures say limited the measured row (median over runs)."""
        row = self.rows.get(t.row)
        if row is None or not row.values:
            return ""
        if t.row[1] != "throughput":
            return ""
        cpu = median_cpu(row)
        if not cpu:
            return ""
        order = ("proxy", "loadgen", "upstream", "softirq", "other")
        parts = [f"{k} {cpu[k]:.0f}%" for k in order if k in cpu]
        text = "CPU (% of one core): " + ", ".join(parts)
        proxy, gen, other = cpu.get("proxy", 0), cpu.get("loadgen", 0), cpu.get("other", 0)
        cores = self.meta.get("cores_per_proxy", {}).get(row.scenario, 1)
        if proxy >= 90 * cores:
            text += "; the proxy saturates its core(s)"
        elif gen >= 90:
            text += "; the load generator saturates its core"
        if other >= 30:
            text += f"; other work on the machine took {other:.0f}% of a core (noise)"
        busy = [v for k, v in cpu.items() if k.startswith("cpu") and k[3:].isdigit()]
        if busy and min(busy) >= 90:
            text += "; every CPU was busy (bounded by the machine)"
        if row.scenario == "strangler_w2" and self.meta.get("nproc", 0) <= 2:
            text += (
                "; on 2 cores the two workers share the CPU with wrk and the upstream, "
                "so this is bounded by the machine, not the proxy"
            )
        return text

    # --- rendering ----------------------------------------------------------------------

    def to_json(self) -> dict:
        return {
            "meta": self.meta,
            "rows": [
                {
                    **asdict(r),
                    "label": LABELS.get(r.scenario, r.scenario),
                    "min": r.stat("min"),
                    "median": r.stat("median"),
                    "max": r.stat("max"),
                    "median_ratio_to_nginx": self.ratio(r),
                }
                for r in self.rows.values()
            ],
            "targets": self.checks(),
            "notes": self.notes,
        }

    def write(self, out_dir: Path, stem: str = "latest") -> tuple[Path, Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        js, md = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
        js.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        md.write_text(self.markdown())
        return js, md

    def markdown(self) -> str:
        m = self.meta
        lines = [
            f"# strangler benchmark, {m['date']}",
            "",
            f"- machine: {m['cpu_model']}, {m['nproc']} cores, Linux {m['kernel']}, "
            f"Python {m['python']}, {m['nginx']}, {m['wrk']}",
            f"- command: `{m['command']}`",
            f"- {m['repeat']} run(s) of each measurement; throughput: `wrk -t1 -c64 "
            f"-d{m['duration']}s`; latency: {m['latency_rate']:.0f} req/s evenly spaced over "
            f"{m['latency_connections']} connections for {m['latency_duration']}s after a 1 s "
            "warm-up (bench/fixedrate.py)",
            f"- pinning: {m['pinning']}",
            "- ratios are medians of per-run ratios to nginx measured in the same run",
            f"- CPU pairs (issue 29's ratio to the bare forwarder, measured again): "
            f"{m.get('cpu_pairs', 0)} pairs of `wrk -d{m.get('pair_duration', 0):g}s` runs, "
            "bare forwarder then strangler back to back (the order alternating), the ratio "
            "taken within each pair",
            f"- each measurement waited up to {m.get('quiet_wait', 0):g} s for other work on the "
            f"machine to drop below a third of a core; a run is counted as disturbed when other "
            f"work used more than {DISTURBED:.0f}% of a core during it",
            "- CPU columns: median % of one core used during the run by the proxy (all its "
            "processes), wrk, the upstream, the kernel's softirq (network) work, everything "
            "else on the machine (other jobs: noise), and how busy each CPU was; load average "
            f"{m.get('loadavg_start', '?')} at the start, {m.get('loadavg_end', '?')} at the end",
            "",
            "## Throughput (requests/s)",
            "",
            "| server | body | min | median | max | x nginx | proxy CPU % | wrk CPU % "
            "| upstream CPU % | softirq % | other % | busy % per CPU | disturbed runs | errors "
            "| proxy CPU µs per request |",
            "|---|---|" + "---:|" * 13,
        ]
        for r in self._rows("throughput"):
            cpu = median_cpu(r)
            errors = sum(d.get("errors", 0) for d in r.details)
            per = self.rows.get((r.scenario, "cpu_us", r.body))
            lines.append(
                f"| {LABELS.get(r.scenario, r.scenario)} | {r.body} | {_n(r.stat('min'))} | "
                f"{_n(r.stat('median'))} | {_n(r.stat('max'))} | {_x(self.ratio(r))} | "
                f"{_n(cpu.get('proxy'))} | {_n(cpu.get('loadgen'))} | "
                f"{_n(cpu.get('upstream'))} | {_n(cpu.get('softirq'))} | "
                f"{_n(cpu.get('other'))} | {_per_cpu(cpu)} | {self.disturbed(r)} | {errors} | "
                f"{_span(per) if per else '-'} |"
            )
        for key in (("strangler_shadow", "throughput", "small"),
                    ("strangler_default_diff", "throughput", "small"),
                    ("strangler_default_diff", "throughput", "64KiB"),
                    ("strangler_shadow_diff", "throughput", "small"),
                    ("strangler_shadow_diff", "throughput", "64KiB"),
                    ("strangler_shadow_diff_pg", "throughput", "small"),
                    ("strangler_shadow_diff_pg", "throughput", "64KiB"),
                    ("strangler_default_diff", "p50", "small"),
                    ("strangler_shadow_diff", "p50", "small"),
                    ("strangler_shadow_diff_pg", "p50", "small")):
            shadow = self.rows.get(key)
            if shadow is not None:
                lines += ["", self.shadow_line(shadow)]
        lat = self._rows("p50")
        if lat:
            lines += [
                "",
                f"## Latency at {m['latency_rate']:.0f} req/s over "
                f"{m['latency_connections']} connections (µs, small body)",
                "",
                "| server | p50 min / median / max | p50 x nginx | p99 min / median / max "
                "| p99 x nginx | achieved req/s | errors |",
                "|---|---:|---:|---:|---:|---:|---:|",
            ]
            for r in lat:
                p99 = self.rows.get((r.scenario, "p99", r.body))
                rates = [d.get("achieved_rps", 0) for d in r.details if d]
                errors = sum(d.get("errors", 0) for d in r.details)
                lines.append(
                    f"| {LABELS.get(r.scenario, r.scenario)} | {_span(r)} | {_x(self.ratio(r))} | "
                    f"{_span(p99)} | {_x(self.ratio(p99) if p99 else None)} | "
                    f"{_n(statistics.median(rates) if rates else None)} | {errors} |"
                )
        stream = self.rows.get(("stream", "rss_growth", "1GiB"))
        if stream:
            lines += [
                "",
                f"## {m.get('stream_bytes', 0) / 2**30:g} GiB streamed through strangler "
                "(PUT up, then GET down, one connection)",
                "",
                "| run | peak RSS growth, MiB | baseline RSS, MiB | upload MiB/s "
                "| download MiB/s | ok |",
                "|---:|---:|---:|---:|---:|---|",
            ]
            for i, (v, d) in enumerate(zip(stream.runs, stream.details, strict=False), 1):
                lines.append(
                    f"| {i} | {_n(v, 1)} | {_n(d.get('baseline_mib'), 1)} | "
                    f"{_n(d.get('upload_mib_s'))} | {_n(d.get('download_mib_s'))} | "
                    f"{d.get('ok', False)} |"
                )
        lines += [
            "",
            "## Targets (issue 9)",
            "",
            "| target | measured | each run | goal | status | what limited it |",
            "|---|---:|---:|---:|---|---|",
        ]
        for c in self.checks():
            value = "-" if c["value"] is None else f"{c['value']:.2f}"
            runs = " / ".join(f"{r:.2f}" for r in sorted(c["runs"])) or "-"
            goal = "-" if c["goal"] is None else f"{c['op']} {c['goal']:.2f}"
            lines.append(
                f"| {c['target']} | {value} | {runs} | {goal} | {c['status']} "
                f"| {c['limited_by']} |"
            )
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def disturbed(self, row: Row) -> str:
        """Runs during which other work on the machine used more than DISTURBED % of a core."""
        runs = [d for d in row.details if d.get("cpu")]
        bad = sum(1 for d in runs if d["cpu"].get("other", 0) > DISTURBED)
        return f"{bad}/{len(runs)}"

    def shadow_line(self, row: Row) -> str:
        """How much mirroring the shadow row really did (from strangler's /metrics)."""
        shares = [d["shadow_compared_share"] for d in row.details if "shadow_compared_share" in d]
        if not shares:
            return (
                "Shadow row: strangler's /metrics did not report shadow counters, so it is "
                "not shown that mirroring happened."
            )
        totals: dict[str, float] = {}
        for d in row.details:
            for k, v in d.get("shadow", {}).items():
                totals[k] = totals.get(k, 0.0) + v
        counts = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(totals.items()) if v)
        rates = [(d["shadow_compared_per_s"], d["shadow_shed_per_s"]) for d in row.details
                 if "shadow_compared_per_s" in d]
        per_s = ""
        if rates:
            per_s = (f"; comparisons completed {statistics.median(c for c, _ in rates):,.0f}/s, "
                     f"shed {statistics.median(x for _, x in rates):,.0f}/s (medians)")
        what = "latency runs" if row.metric != "throughput" else f"{row.body} throughput"
        return (
            f"Shadow, {LABELS.get(row.scenario, row.scenario)} ({what}): comparisons per "
            f"primary request {statistics.median(shares):.2f} (1.00 = every request mirrored "
            f"and compared){per_s}; counters over all runs: {counts or 'none'}."
        )

    def _rows(self, metric: str) -> list[Row]:
        order = list(LABELS)
        rows = [r for r in self.rows.values() if r.metric == metric]
        return sorted(
            rows,
            key=lambda r: (
                r.body != "small",
                order.index(r.scenario) if r.scenario in order else 99,
            ),
        )


def median_cpu(row: Row) -> dict[str, float]:
    keys = {k for d in row.details for k in d.get("cpu", {})}
    out = {}
    for k in sorted(keys):
        vals = [d["cpu"][k] for d in row.details if k in d.get("cpu", {})]
        if vals:
            out[k] = statistics.median(vals)
    return out


def _per_cpu(cpu: dict[str, float]) -> str:
    cores = sorted(
        (int(k[3:]), v) for k, v in cpu.items() if k.startswith("cpu") and k[3:].isdigit()
    )
    return " / ".join(f"{v:.0f}" for _, v in cores) or "-"


def _n(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _span(r: Row | None) -> str:
    if r is None or not r.values:
        return "-"
    return f"{_n(r.stat('min'))} / {_n(r.stat('median'))} / {_n(r.stat('max'))}"
