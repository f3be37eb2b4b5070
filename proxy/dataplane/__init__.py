"""The request path: accept, route, split, forward, answer; mirror to the shadow side.

Per worker process, on one event loop: `server` (connections and the exchange's phases),
`table` and `split` (compiled routes, sticky buckets), `upstream` (pooled connections),
`headers`, `overrides`, `mirror`/`pipeline`/`comparer_link` (shadow traffic and the hand-off to
the comparer process), `recorder` (counters), `inventory` (each request's endpoint, for the
traffic inventory), `access_log`. Depends only on `proxy.config`
(and `shadow`'s frame codec).
"""
