"""A/B of two strangler source trees under wrk: `python -m bench.ab --old DIR [--new DIR]`.

Starts the bench's upstream nginx (CPU 1), nginx as a reverse proxy and one `strangler serve`
per tree (all on CPU 0, only one under load at a time), then runs `wrk -t1 -c64` (CPU 1) on
nginx, old and new in turn, `--rounds` times, and prints each figure and the medians. The old
tree is e.g. `git archive HEAD | tar -x -C /tmp/old`. Used for the hot-path log in README.md;
`bench.run` is the benchmark of record. `--hold` keeps everything up (pids and URLs printed) for
py-spy or perf until Ctrl-C. `--shadow` runs `bench.run`'s strangler_shadow instead: the small-body
route mirrors every request to a second upstream nginx (CPU 1) that answers the same, and each
figure comes with the proxy's CPU per request (the mirror's cost without nginx's share of CPU 0).
`--tracing RATIO` gives the new tree `tracing:` at that sample_ratio (spans to bench/otlp_sink.py).
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import load, servers
from bench.procs import STRANGLER_MAIN, Procs, free_port

REPO = Path(__file__).resolve().parent.parent


def _start(procs: Procs, work: Path, name: str, tree: Path, up: servers.Upstream,
           big: bool, env: dict[str, str], shadow_url: str | None = None,
           extra: dict | None = None) -> tuple[str, int]:
    port, admin = free_port(), free_port()
    cfg = servers.strangler_config(port=port, admin_port=admin, state_dir=work / f"st-{name}",
                                   up=up, shadow_url=shadow_url)
    cfg.update(extra or {})
    cfg_path = work / f"{name}.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-c", STRANGLER_MAIN,
           "serve", "-c", str(cfg_path)]
    proc = procs.start(name, cmd, "0", env={"PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1",
                                             **env})
    deadline = time.monotonic() + 60
    while servers._readyz(admin) != 200:
        if time.monotonic() > deadline or not proc.alive():
            raise SystemExit(f"{name} did not start:\n{proc.tail()}")
        time.sleep(0.1)
    path = servers.bench_paths(10)[1 if big else 0]
    return f"http://127.0.0.1:{port}{path}", proc.pid


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0])
    p.add_argument("--old", type=Path, required=True)
    p.add_argument("--new", type=Path, default=REPO)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=5)
    p.add_argument("--big", action="store_true", help="the 64 KiB body")
    p.add_argument("--no-nginx", action="store_true")
    p.add_argument("--hold", action="store_true")
    p.add_argument("--env", action="append", default=[], help="NAME=VALUE for the new tree")
    p.add_argument("--shadow", action="store_true",
                   help="every request of the small-body route mirrored (bench.run's "
                   "strangler_shadow)")
    p.add_argument("--tracing", type=float, metavar="RATIO",
                   help="the new tree with `tracing:` at this sample_ratio, exporting to "
                   "bench/otlp_sink.py (CPU 1): what tracing costs, when --new is --old")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    servers.chmod_for_nginx_workers(work)
    procs = Procs(work)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        up = servers.start_upstream(procs, work, "upstream", "1")
        urls: dict[str, str] = {}
        pids: dict[str, list[int]] = {}
        if not args.no_nginx:
            ng = servers.start_nginx_proxy(procs, work, up, "0")
            path = servers.bench_paths(10)[1 if args.big else 0]
            urls["nginx"] = (ng.big_url if args.big else ng.small_url) + path  # type: ignore[operator]
            pids["nginx"] = [ng.proc.pid]  # type: ignore[union-attr]
        env = dict(kv.split("=", 1) for kv in args.env)
        shadow_url = None
        if args.shadow:
            shadow_url = servers.start_upstream(procs, work, "shadow-upstream", "1").small_url
        traced: dict = {}
        if args.tracing is not None:
            sink_port = free_port()
            procs.start("otlp-sink", [sys.executable, "-m", "bench.otlp_sink", str(sink_port)],
                        "1", env={"PYTHONPATH": str(REPO)})
            traced = {"tracing": {"otlp_endpoint": f"http://127.0.0.1:{sink_port}",
                                  "sample_ratio": args.tracing}}
        for name, tree in (("old", args.old), ("new", args.new)):
            urls[name], pid = _start(procs, work, name, tree.resolve(), up, args.big,
                                     env if name == "new" else {}, shadow_url,
                                     traced if name == "new" else None)
            pids[name] = [pid]
        if args.hold:
            for name in urls:
                print(f"{name}: pid {pids[name]} {urls[name]}", flush=True)
            while True:
                time.sleep(3600)
        got: dict[str, list[float]] = {name: [] for name in urls}
        cost: dict[str, list[float]] = {name: [] for name in urls}  # proxy CPU µs per request
        for r in range(args.rounds):
            order = list(urls) if r % 2 == 0 else list(reversed(urls))
            for name in order:
                load.wrk(urls[name], 1, "1", {})  # warm-up
                res = load.wrk(urls[name], args.duration, "1", {name: pids[name]})
                got[name].append(res["rps"])
                us = res["cpu"].get(name, 0.0) / 100 * 1e6 / res["rps"] if res["rps"] else 0.0
                cost[name].append(us)
                print(f"round {r + 1} {name}: {res['rps']:,.0f} req/s errors {res['errors']} "
                      f"cpu {res['cpu']} ({us:.1f} µs/request)", flush=True)
        for name, xs in got.items():
            print(f"{name}: median {statistics.median(xs):,.0f} "
                  f"({', '.join(f'{x:,.0f}' for x in xs)}); CPU µs per request median "
                  f"{statistics.median(cost[name]):.1f}")
        if "nginx" in got:
            for name in ("old", "new"):
                ratios = [a / b for a, b in zip(got[name], got["nginx"], strict=True)]
                print(f"{name} / nginx: median {statistics.median(ratios):.3f}")
        ratios = [a / b for a, b in zip(got["new"], got["old"], strict=True)]
        print(f"new / old: median {statistics.median(ratios):.3f}")
        if all(cost["old"]):
            ratios = [a / b for a, b in zip(cost["new"], cost["old"], strict=True)]
            print(f"new / old CPU per request: median {statistics.median(ratios):.3f}")
    except KeyboardInterrupt:
        pass
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
