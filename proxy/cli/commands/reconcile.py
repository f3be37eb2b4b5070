"""replay reads against legacy and target, report drift per field

Replay safe (GET/HEAD) requests against ROUTE's legacy and target upstreams directly, compare the
answers with the route's compare rules (ignore, redact, array_keys, numeric_tolerance, noise twin)
and record the run in the diff store. Exits 0 clean, 1 drift (or requests that could not be
compared), 2 usage or config error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sqlite3
import sys
import time
from pathlib import Path

from proxy.cli import output
from proxy.cli.commands._common import add_config_option, load_or_report, report_problems
from proxy.cli.exitcodes import FAILED, OK, USAGE
from proxy.control.reconcile import DEFAULT_RATE, Replayer
from shadow.reconcile import RunResult, Tally
from shadow.reconcile_store import ReconcileStore
from shadow.redact import Redactor
from shadow.requestset import ReplayRequest, RequestSetError, from_samples, parse

MAX_CONCURRENCY = 64
_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

USES_ADMIN_API = False  # no --admin/--token/--json/--actor options


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("route", metavar="ROUTE")
    add_config_option(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--requests", metavar="FILE",
                     help="requests to replay: a `diffs --export jsonl` or `hurl` file, or "
                     "plain lines ('GET /path', '/path', '#' comments)")
    src.add_argument("--from-store", action="store_true",
                     help="replay the requests recorded in the diff store for ROUTE")
    p.add_argument("--rate", type=float, default=DEFAULT_RATE, metavar="N",
                   help="requests per second, each sent to every side "
                   "(default: %(default)g)")
    p.add_argument("--concurrency", type=int, default=4, metavar="K",
                   help=f"requests in flight (1-{MAX_CONCURRENCY}, default: %(default)s)")
    p.add_argument("--header", action="append", default=[], metavar="NAME=ENV_VAR",
                   help="add header NAME to every replayed request, its value read from "
                   "environment variable ENV_VAR (never stored); repeatable")
    p.add_argument("--json", action="store_true", help="print the run as one JSON object")


def _usage(msg: str) -> int:
    print(f"strangler reconcile: {msg}", file=sys.stderr)
    return USAGE


def _extra_headers(specs: list[str]) -> list[tuple[str, str]] | str:
    out = []
    for item in specs:
        name, sep, env = item.partition("=")
        if not sep or not _NAME.fullmatch(name) or not env:
            return f"--header {item!r}: expected NAME=ENV_VAR"
        value = os.environ.get(env)
        if value is None:
            return f"--header {name}: environment variable {env} is not set"
        out.append((name, value))
    return out


def run(args: argparse.Namespace) -> int:
    if not args.rate > 0:
        return _usage("--rate must be above 0")
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        return _usage(f"--concurrency must be between 1 and {MAX_CONCURRENCY}")
    extra = _extra_headers(args.header)
    if isinstance(extra, str):
        return _usage(extra)
    try:
        config = load_or_report(args.config)
    except OSError as exc:
        return _usage(f"cannot read {args.config}: {exc.strerror}")
    if isinstance(config, int):
        return config
    spec = next((r for r in config.routes if r.name == args.route), None)
    if spec is None:
        names = ", ".join(r.name for r in config.routes) or "none"
        return _usage(f"unknown route {args.route!r} in {args.config} (routes: {names})")
    if not getattr(spec, "target", None):
        return _usage(f"route {spec.name!r} has no target to compare legacy with")
    compare = spec.shadow.compare
    redacted = [p[len("header:"):] for p in compare.redact if p.lower().startswith("header:")]
    from shadow.sqldb import locator

    store_path = locator(config)  # the SQLite file, or the shared store (store.backend)
    shown = "(the shared store)" if isinstance(store_path, dict) else str(store_path)

    if args.from_store:
        source = "store"
        try:
            requests = _from_store(store_path, spec.name, redacted)
        except (sqlite3.Error, OSError, ValueError) as exc:
            return _usage(f"cannot read the diff store {shown}: {exc}")
    else:
        source = f"file:{Path(args.requests).name}"
        try:
            text = Path(args.requests).read_text(encoding="utf-8")
        except OSError as exc:
            return _usage(f"cannot read {args.requests}: {exc.strerror}")
        except UnicodeDecodeError:
            return _usage(f"{args.requests}: not UTF-8 text")
        try:
            requests = parse(text, args.requests, redacted)
        except RequestSetError as exc:
            return report_problems(exc.problems)
        if not requests:
            return _usage(f"{args.requests}: no requests in it")

    progress = _Progress() if sys.stderr.isatty() and not args.json else None
    replayer = Replayer(config, spec, rate=args.rate, concurrency=args.concurrency,
                        extra_headers=extra, progress=progress)
    started = time.time()
    tally = Tally(spec.name, source, started, Redactor(compare.redact),
                  noise=compare.noise_upstream is not None)
    try:
        store = ReconcileStore(store_path)
        run_id = store.begin(spec.name, source, started)
    except (sqlite3.Error, OSError, ValueError) as exc:
        return _usage(f"cannot write the diff store {shown}: {exc}")
    with store:
        asyncio.run(replayer.run(requests, tally))
        if progress:
            progress.end()
        result = tally.result(time.time())
        try:
            store.finish(run_id, result)
        except (sqlite3.Error, OSError) as exc:
            unrecorded = exc
        else:
            unrecorded = None

    if args.json:
        print(json.dumps(_json(result, run_id, args.rate), ensure_ascii=False, default=str))
    else:
        print(_text(result, run_id))
    if unrecorded is not None:  # the result above stands; the exit code says it is not kept
        return _usage(f"the run's result was not recorded in the diff store {shown}: "
                      f"{unrecorded}")
    if result.requests == 0 and source != "store":
        print(f"strangler reconcile: nothing replayed from {args.requests}: every request was "
              "skipped", file=sys.stderr)
        return USAGE
    return OK if result.clean else FAILED


def _from_store(path: Path | str | dict, route: str, redacted: list[str]
                ) -> list[ReplayRequest]:
    if not isinstance(path, dict) and not Path(path).exists():
        return []
    from shadow.store import DiffStore

    store = DiffStore(path)
    try:
        return from_samples(store.samples_for_export(route), redacted)
    finally:
        store.close()


class _Progress:
    """A one-line progress bar on stderr (a terminal only), redrawn at most 10 times a second."""

    WIDTH = 30

    def __init__(self) -> None:
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        filled = self.WIDTH * done // total if total else self.WIDTH
        bar = "#" * filled + "." * (self.WIDTH - filled)
        sys.stderr.write(f"\r[{bar}] {done}/{total} requests")
        sys.stderr.flush()

    def end(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


def _json(r: RunResult, run_id: int, rate: float) -> dict[str, object]:
    return {
        "route": r.route, "run_id": run_id, "source": r.source, "started": r.started,
        "finished": r.finished, "rate": rate, "requests": r.requests, "compared": r.compared,
        "mismatched": r.mismatched, "errors": r.errors, "error_kinds": r.error_kinds,
        "skipped": sum(r.skipped.values()), "skipped_by_reason": r.skipped, "noise": r.noise,
        "clean": r.clean, "fields": r.field_rows(), "fields_dropped": r.fields_dropped,
        "samples": list(r.samples),
    }


def _text(r: RunResult, run_id: int) -> str:
    skipped = sum(r.skipped.values())
    rate = output.pct(r.mismatched / r.compared) if r.compared else "-"
    lines = [f"{r.route}: reconcile run #{run_id} ({r.source}, {r.finished - r.started:.1f}s): "
             f"{r.requests} replayed, {r.compared} compared, {r.mismatched} mismatched ({rate}), "
             f"{r.errors} errors, {skipped} skipped"]
    if skipped:
        lines.append("  skipped: " + ", ".join(f"{k} {n}" for k, n in sorted(r.skipped.items())))
    if r.errors:
        lines.append("  errors: " + ", ".join(f"{k} {n}" for k, n in
                                                sorted(r.error_kinds.items())))
    if r.noise:
        lines.append(f"  {r.noise} difference(s) cancelled as noise (legacy twin differed too)")
    if r.fields_dropped:
        lines.append(f"  {r.fields_dropped} difference(s) on fields past the first "
                     f"{len(r.fields)} not counted per field")
    if r.fields:
        lines.append("")
        lines.append(output.table(["FIELD", "KIND", "COUNT", "RATE"],
                                  [[f["path"], f["kind"], f["count"], output.pct(f["rate"])]
                                   for f in r.field_rows()]))
    if r.samples:
        lines.append("")
        lines.append("samples (redacted):")
        for s in r.samples[:10]:
            lines.append(f"  {s['method']} {s['path']}  legacy {s['legacy_status']} / target "
                         f"{s['target_status']}")
            for d in s["differences"]:  # type: ignore[attr-defined]
                lines.append(f"      {d['path']}: {d['kind']}  legacy={output._short(d['legacy'])}"
                             f" target={output._short(d['target'])}")
    if r.requests == 0:
        lines.append("nothing replayed" + (" (the diff store holds no recorded requests for "
                                           "this route)" if r.source == "store" else ""))
    elif r.clean:
        lines.append("clean: legacy and target agree on every replayed request")
    return "\n".join(lines)
