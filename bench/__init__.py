"""Side-by-side benchmark of strangler against nginx and a naive aiohttp proxy.

Entry point: `python -m bench.run` (see bench/README.md). Modules:
procs (start, pin, sample and stop processes), servers (nginx, aiohttp and strangler set-ups),
load (wrk and the fixed-rate latency client), fixedrate (that client), stream (1 GiB streaming
upstream and client), report (statistics, target checks, Markdown and JSON).
"""
