"""bench.report: a target's figure is the median of its per-run ratios, and every run's ratio is
shown beside it (the host's noise is visible, not hidden behind one number)."""

from __future__ import annotations

from bench.report import Results

META = {"date": "2026-12-06", "cpu_model": "test", "nproc": 2, "kernel": "6", "python": "3.11",
        "nginx": "nginx", "wrk": "wrk", "command": "python -m bench.run", "repeat": 3,
        "duration": 5.0, "latency_rate": 1000.0, "latency_connections": 16,
        "latency_duration": 5.0, "pinning": "none"}


def _results() -> Results:
    res = Results(dict(META))
    for rep, (bare, strangler) in enumerate([(17.0, 21.0), (18.0, 30.0), (20.0, 25.0)]):
        res.add("bare", "cpu_us", "small", "µs", rep, bare)
        res.add("strangler", "cpu_us", "small", "µs", rep, strangler)
    res.finish()
    return res


def test_the_cpu_target_is_the_median_of_the_per_run_ratios_and_lists_them() -> None:
    check = next(c for c in _results().checks() if c["key"] == "vs_bare")
    assert check["runs"] == [21 / 17, 30 / 18, 25 / 20]
    assert check["value"] == 25 / 20  # the median run, not the ratio of the medians (25/18)
    assert check["status"] == "PASS"
    row = next(line for line in _results().markdown().splitlines()
               if line.startswith("| 1 worker, small body: proxy CPU per request vs the bare"))
    assert "| 1.25 | 1.24 / 1.25 / 1.67 | <= 1.40 | PASS |" in row


def test_a_run_missing_on_one_side_is_left_out_of_the_pairs() -> None:
    res = Results(dict(META, repeat=2))
    res.add("bare", "cpu_us", "small", "µs", 0, 17.0)
    res.add("strangler", "cpu_us", "small", "µs", 0, None)
    res.add("bare", "cpu_us", "small", "µs", 1, 20.0)
    res.add("strangler", "cpu_us", "small", "µs", 1, 24.0)
    res.finish()
    check = next(c for c in res.checks() if c["key"] == "vs_bare")
    assert check["runs"] == [1.2] and check["value"] == 1.2


def test_the_pairs_target_takes_the_ratio_within_each_pair() -> None:
    res = Results(dict(META, cpu_pairs=3, pair_duration=2.0))
    for k, (bare, strangler) in enumerate([(16.0, 20.0), (22.0, 28.6), (17.0, 20.4)]):
        res.add("bare", "cpu_pair_us", "small", "µs", k, bare)
        res.add("strangler", "cpu_pair_us", "small", "µs", k, strangler)
    res.finish()
    check = next(c for c in res.checks() if c["key"] == "vs_bare_pairs")
    assert check["runs"] == [20 / 16, 28.6 / 22, 20.4 / 17]
    assert check["value"] == 20 / 16 and check["status"] == "PASS"
    assert "- CPU pairs (issue 29's ratio to the bare forwarder, measured again): 3 pairs of " \
        "`wrk -d2s` runs" in res.markdown()


def test_cpu_pairs_run_back_to_back_in_alternating_order(monkeypatch) -> None:
    """bench.run's pairs: bare then strangler, then strangler then bare, each pair's figures
    under one index; a failed run leaves its pair out rather than shifting the others."""
    import argparse

    from bench import load
    from bench.run import Bench, Target

    calls: list[str] = []
    answers = iter([(16.0, 1000), (20.0, 1000), (30.0, 1000), None, (17.0, 1000), (20.4, 1000)])

    def wrk(url: str, seconds: float, cpus: str, watched: dict, script=None) -> dict:
        calls.append(url)
        got = next(answers)
        if got is None:
            raise load.LoadError("wrk failed")
        cpu, rps = got
        return {"rps": rps, "errors": 0, "requests": rps * 2, "cpu": {"proxy": cpu / 10}}

    monkeypatch.setattr(load, "wrk", wrk)
    res = Results(dict(META))
    args = argparse.Namespace(cpu_pairs=3, pair_duration=2.0, quiet_wait=0)
    bench = Bench.__new__(Bench)
    bench.args, bench.results, bench.cpus = args, res, argparse.Namespace(gen="1")
    bench.targets = [Target("bare", {"small": "B"}), Target("strangler", {"small": "S"})]
    bench.log = lambda text: None  # type: ignore[method-assign]
    bench.cpu_pairs()
    assert calls == ["B", "S", "S", "B", "B", "S"]
    assert res.rows[("bare", "cpu_pair_us", "small")].runs == [16.0, None, 17.0]
    assert res.rows[("strangler", "cpu_pair_us", "small")].runs == [20.0, 30.0, 20.4]
    res.finish()
    check = next(c for c in res.checks() if c["key"] == "vs_bare_pairs")
    assert check["runs"] == [20 / 16, 20.4 / 17]
