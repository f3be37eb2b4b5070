"""The Prometheus source's queries and failure modes that need no Prometheus.

The source against a real Prometheus is in test_prometheus_source.py.
"""

from __future__ import annotations

import pytest
from aiohttp import web

from proxy.config.spec import CheckSpec
from shadow.promql import (
    MetricsUnavailable,
    PrometheusSource,
    bucket_counts,
    check_query,
    comparisons_query,
    label_value,
    latency_buckets_query,
    parse_result,
    requests_query,
)
from shadow.stats import LATENCY
from tests.support import free_port


def test_request_queries_sum_every_replica_over_the_window() -> None:
    assert requests_query("balance", "target", 300) == (
        'sum(increase(strangler_requests_total{route="balance",backend="target"}[300s]))'
    )
    assert requests_query("balance", "legacy", 12.2, errors=True) == (
        'sum(increase(strangler_requests_total{route="balance",backend="legacy",code=~"5.."}[13s]))'
    )


def test_latency_is_read_as_the_bucket_counts_summed_by_le() -> None:
    assert latency_buckets_query("balance", "target", 60) == (
        "sum by (le) (increase("
        'strangler_request_duration_seconds_bucket{route="balance",backend="target"}[60s]))'
    )


def test_bucket_counts_rebuild_the_gates_own_histogram() -> None:
    """Prometheus hands back cumulative counts per `le` as the exposition printed them (6
    significant digits); they map back onto the exact buckets, extrapolation kept monotone."""
    i, j = LATENCY.index(0.001), LATENCY.index(0.01)
    series = [({"le": f"{LATENCY.upper[i]:.6g}"}, 2.0), ({"le": f"{LATENCY.upper[j]:.6g}"}, 5.4),
              ({"le": f"{LATENCY.upper[j + 1]:.6g}"}, 5.1), ({"le": "+Inf"}, 7.0)]
    counts = bucket_counts(LATENCY, series)
    assert counts[i] == 2.0 and counts[j] == pytest.approx(3.4) and counts[j + 1] == 0.0
    assert counts[-1] == pytest.approx(1.6) and sum(counts) == pytest.approx(7.0)


def test_comparisons_count_matches_and_mismatches_not_errors() -> None:
    assert 'result=~"match|mismatch"' in comparisons_query("r", 60)
    assert 'result=~"error"' in comparisons_query("r", 60, "error")


def test_route_names_are_escaped_in_label_matchers() -> None:
    assert label_value('we"ird\\name') == '"we\\"ird\\\\name"'


def test_checks_may_use_the_steps_window() -> None:
    q = "sum(increase(cost_total[$window])) / sum(increase(tx_total[$window]))"
    assert check_query(q, 90) == "sum(increase(cost_total[90s])) / sum(increase(tx_total[90s]))"
    assert check_query(q, None) == q


def test_parse_result_reads_one_number_and_treats_empty_or_nan_as_no_data() -> None:
    def vector(*values: str) -> dict:
        result = [{"metric": {}, "value": [1.0, v]} for v in values]
        return {"status": "success", "data": {"resultType": "vector", "result": result}}

    assert parse_result("q", vector("1.5")) == 1.5
    assert parse_result("q", vector()) is None
    assert parse_result("q", vector("NaN")) is None
    scalar = {"status": "success", "data": {"resultType": "scalar", "result": [1.0, "2"]}}
    assert parse_result("q", scalar) == 2.0
    with pytest.raises(MetricsUnavailable, match="returned 2 series; aggregate it"):
        parse_result("q", vector("1", "2"))
    with pytest.raises(MetricsUnavailable, match="parse error"):
        parse_result("q", {"status": "error", "errorType": "bad_data", "error": "parse error"})


async def test_unreachable_prometheus_raises_metrics_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with PrometheusSource(url, timeout=2) as source:
        with pytest.raises(MetricsUnavailable, match="unreachable"):
            await source.query("up")
        with pytest.raises(MetricsUnavailable):
            await source.check(CheckSpec(name="c", query="up", max=1))


async def test_a_url_that_is_not_prometheus_raises_metrics_unavailable() -> None:
    async def not_found(request: web.Request) -> web.Response:
        return web.Response(status=404, text="nope")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", not_found)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with PrometheusSource(f"http://127.0.0.1:{port}") as source:
            with pytest.raises(MetricsUnavailable, match="HTTP 404"):
                await source.query("up")
    finally:
        await runner.cleanup()
