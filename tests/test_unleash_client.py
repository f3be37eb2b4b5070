"""The Unleash flag client against a real Unleash 8 server (scripts/unleash-dev).

What users rely on: a weight or rollback written anywhere (strangler, Unleash's UI or API)
reaches every replica within about two refresh intervals; an Unleash outage never changes
routing; a replica restarted during an outage routes on its cached state, and one with no cache
says it is degraded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs
from yggdrasil_engine.engine import UnleashEngine

from proxy.config.spec import UnleashSpec
from proxy.control.unleash import (
    WEIGHT_PARAM,
    FlagState,
    UnleashConfigError,
    UnleashFlags,
    UnleashWriteError,
    client_headers,
    parse_features,
    registration,
)
from tests.unleash_server import UnleashServer, feature_path

REFRESH = 1.0  # the clients' refresh_interval in these tests
# A change normally reaches the other replica in one or two seconds: its next poll (every
# REFRESH) after Unleash's revision tick (every 1 s). FOLLOW_TIMEOUT only says "it arrives": a
# CI host running three test tiers at once has stalled Unleash or PostgreSQL for over 4 s. How
# fast it arrives is asserted on the quickest of several changes (one stall cannot fail that).
FOLLOW_TIMEOUT = 10.0
TWO_INTERVALS = 2 * REFRESH + 0.5  # two refresh intervals, with slack for the poll itself

Factory = Callable[..., Awaitable[UnleashFlags]]


async def wait_for(predicate: Callable[[], bool], within: float = FOLLOW_TIMEOUT) -> float:
    """Seconds until `predicate()` held; fails the test after `within` seconds."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > within:
            pytest.fail(f"condition not met within {within}s")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture
async def make_flags(unleash_server: UnleashServer, tmp_path: Path) -> AsyncIterator[Factory]:
    """Start UnleashFlags clients (refresh 1 s) against the server; stops them all after."""
    started: list[UnleashFlags] = []

    async def make(
        *flags: str,
        cache: str = "cache",
        url: str | None = None,
        env: dict[str, str] | None = None,
    ) -> UnleashFlags:
        spec = UnleashSpec(url=url or unleash_server.url, refresh_interval=REFRESH)
        client = UnleashFlags(spec, tmp_path / cache, flags=flags, env=env or unleash_server.env())
        started.append(client)
        await client.start()
        return client

    yield make
    for client in started:
        await client.stop()


async def rollout_strategy(admin: aiohttp.ClientSession, flag: str) -> dict:
    async with admin.get(feature_path(flag)) as resp:
        feature = await resp.json()
    (env,) = [e for e in feature["environments"] if e["name"] == "development"]
    return env["strategies"][0]


# -- against the real server ------------------------------------------------------------------


@pytest.mark.unleash
async def test_writes_reach_another_replica_within_two_refresh_intervals(
    unleash_server: UnleashServer, make_flags: Factory
) -> None:
    flag = unleash_server.flag_name()
    writer = await make_flags(flag, cache="writer")
    reader = await make_flags(flag, cache="reader")
    assert reader.missing() == [flag]
    seen: list[FlagState] = []
    reader.on_change(lambda snap: seen.append(snap[flag]))

    assert await writer.ensure_flag(flag, 10) is True
    assert writer.snapshot()[flag] == FlagState(enabled=True, rollout=10.0)  # local at once
    took = [await wait_for(lambda: reader.snapshot()[flag] == FlagState(True, 10.0))]

    await writer.set_rollout(flag, 25)
    assert writer.snapshot()[flag].weight == 25.0
    took.append(await wait_for(lambda: reader.snapshot()[flag].rollout == 25.0))

    await writer.set_rollout(flag, 33.33)
    took.append(await wait_for(lambda: reader.snapshot()[flag].rollout == 33.33))
    print("changes reached the other replica in", ", ".join(f"{t:.2f}s" for t in took))
    assert min(took) <= TWO_INTERVALS
    assert seen[-3:] == [FlagState(True, 10.0), FlagState(True, 25.0), FlagState(True, 33.33)]
    assert reader.degraded is False and reader.connected is True


@pytest.mark.unleash
async def test_disabled_toggle_means_weight_zero_everywhere(
    unleash_server: UnleashServer, make_flags: Factory
) -> None:
    flag = unleash_server.flag_name()
    writer = await make_flags(flag, cache="writer")
    reader = await make_flags(flag, cache="reader")
    await writer.ensure_flag(flag, 50)
    await wait_for(lambda: reader.snapshot()[flag].weight == 50.0)

    await writer.set_enabled(flag, False)
    assert writer.snapshot()[flag] == FlagState(enabled=False, rollout=50.0)
    took = await wait_for(lambda: reader.snapshot()[flag].enabled is False)
    print(f"disable reached the other replica in {took:.2f}s")
    assert reader.snapshot()[flag].weight == 0.0

    # A rolled-back toggle stays off when its weight is set; turning it on restores the weight.
    await writer.set_rollout(flag, 5)
    await wait_for(lambda: reader.snapshot()[flag] == FlagState(False, 5.0))
    await writer.set_enabled(flag, True)
    await wait_for(lambda: reader.snapshot()[flag].weight == 5.0)


@pytest.mark.unleash
async def test_changes_made_in_unleash_itself_are_followed(
    unleash_server: UnleashServer, make_flags: Factory, unleash_admin: aiohttp.ClientSession
) -> None:
    flag = unleash_server.flag_name()
    flags = await make_flags(flag)
    await flags.ensure_flag(flag, 12.5)
    strategy = await rollout_strategy(unleash_admin, flag)
    # Unleash keeps an integer rollout (what its UI and SDKs understand) and the exact weight.
    assert strategy["parameters"]["rollout"] == "13"
    assert strategy["parameters"][WEIGHT_PARAM] == "12.50"
    assert strategy["parameters"]["groupId"] == flag

    # As a user moving the slider in the UI: rollout changes, our parameter is left behind.
    params = {**strategy["parameters"], "rollout": "60"}
    body = {"name": "flexibleRollout", "constraints": [], "parameters": params}
    env_path = f"{feature_path(flag)}/environments/development"
    async with unleash_admin.put(f"{env_path}/strategies/{strategy['id']}", json=body):
        pass
    await wait_for(lambda: flags.snapshot()[flag] == FlagState(True, 60.0))

    async with unleash_admin.post(f"{env_path}/off"):
        pass
    await wait_for(lambda: flags.snapshot()[flag].weight == 0.0)


@pytest.mark.unleash
async def test_integer_rollout_written_for_other_sdks_evaluates_at_the_weight(
    unleash_server: UnleashServer, make_flags: Factory
) -> None:
    """Services that read the same toggle with an Unleash SDK see the (rounded) percentage."""
    flag = unleash_server.flag_name()
    flags = await make_flags(flag)
    await flags.ensure_flag(flag, 29.6)
    # Unleash's client API lags a write by its revision tick: what a poll would see, once
    # our own poller has seen the toggle too.
    await wait_for(lambda: flags.snapshot()[flag] == FlagState(True, 29.6)
                   and not flags.unconfirmed)
    url = f"{unleash_server.url}/client/features"
    async with (
        aiohttp.ClientSession(headers={"Authorization": unleash_server.client_token}) as s,
        s.get(url) as resp,
    ):
        body = await resp.json()
    engine = UnleashEngine()
    engine.take_state(json.dumps(body))
    on = sum(engine.is_enabled(flag, {"userId": str(i)}).is_enabled for i in range(4000))
    assert 0.27 < on / 4000 < 0.33  # rollout "30"; a decimal rollout would evaluate as 0


@pytest.mark.unleash
async def test_existing_toggle_is_not_touched_and_unknown_toggle_is_an_error(
    unleash_server: UnleashServer, make_flags: Factory
) -> None:
    flag = unleash_server.flag_name()
    flags = await make_flags(flag)
    assert flags.snapshot()[flag] == FlagState(enabled=False, rollout=None)
    assert flags.snapshot()[flag].weight == 0.0
    assert await flags.ensure_flag(flag, 20) is True
    assert await flags.ensure_flag(flag, 80) is False
    await wait_for(
        lambda: flags.snapshot()[flag] == FlagState(True, 20.0) and not flags.unconfirmed
    )
    assert flags.missing() == []

    with pytest.raises(UnleashWriteError) as err:
        await flags.set_rollout(unleash_server.flag_name("absent"), 10)
    assert err.value.status == 404
    with pytest.raises(ValueError):
        await flags.set_rollout(flag, 100.5)


@pytest.mark.unleash
async def test_tokens_come_from_the_env_vars_named_in_the_spec(
    unleash_server: UnleashServer, make_flags: Factory, tmp_path: Path
) -> None:
    with pytest.raises(UnleashConfigError, match="UNLEASH_API_TOKEN"):
        UnleashFlags(UnleashSpec(url=unleash_server.url), tmp_path, env={})
    read_only = await make_flags(env={"UNLEASH_API_TOKEN": unleash_server.client_token})
    with pytest.raises(UnleashWriteError, match="UNLEASH_ADMIN_TOKEN"):
        await read_only.ensure_flag(unleash_server.flag_name(), 1)


@pytest.mark.unleash
async def test_unleash_killed_mid_run_keeps_last_state_and_warns_once(
    unleash_server: UnleashServer,
    make_flags: Factory,
    outage: Callable[[], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    flag = unleash_server.flag_name()
    flags = await make_flags(flag)
    await flags.ensure_flag(flag, 40)
    await wait_for(lambda: not flags.unconfirmed)  # confirmed by a poll, not only local
    before = flags.snapshot()

    caplog.set_level(logging.DEBUG, logger="UnleashClient")
    with capture_logs() as logs:
        outage()
        await wait_for(lambda: not flags.connected)
        await asyncio.sleep(3.5)  # several more failed polls
        assert flags.snapshot() == before
        assert flags.degraded is False
        with pytest.raises(UnleashWriteError) as err:
            await flags.set_rollout(flag, 50)
        assert err.value.status is None  # unreachable, not refused
        assert flags.snapshot() == before

        unleash_server.restart_unleash()
        await wait_for(lambda: flags.connected)
    warnings = [e for e in logs if e["event"] == "unleash.unreachable"]
    assert len(warnings) == 1, logs
    assert warnings[0]["using"] == "last known state"
    assert [e["event"] for e in logs if e["event"] == "unleash.reconnected"]
    assert not [r for r in caplog.records if r.name.startswith("UnleashClient")]
    assert flags.snapshot() == before


@pytest.mark.unleash
async def test_restart_during_outage_uses_cache_or_reports_degraded(
    unleash_server: UnleashServer, make_flags: Factory, outage: Callable[[], None]
) -> None:
    flag = unleash_server.flag_name()
    first = await make_flags(flag, cache="replica")
    await first.ensure_flag(flag, 15)
    await wait_for(lambda: not first.unconfirmed)
    await first.stop()

    outage()
    restarted = await make_flags(flag, cache="replica")
    assert restarted.degraded is False
    assert restarted.snapshot()[flag] == FlagState(enabled=True, rollout=15.0)

    with capture_logs() as logs:
        fresh = await make_flags(flag, cache="empty")
    assert fresh.degraded is True
    assert fresh.snapshot()[flag].weight == 0.0
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["unleash.degraded"]

    unleash_server.restart_unleash()  # recovery: the fresh replica gets the real state
    await wait_for(lambda: fresh.snapshot()[flag] == FlagState(True, 15.0))
    assert fresh.degraded is False


@pytest.mark.unleash
async def test_wrong_backend_token_is_degraded_with_the_status_in_the_warning(
    unleash_server: UnleashServer, make_flags: Factory
) -> None:
    with capture_logs() as logs:
        flags = await make_flags(cache="bad-token", env={"UNLEASH_API_TOKEN": "default:x.nope"})
    assert flags.degraded is True
    (warning,) = [e for e in logs if e["log_level"] == "warning"]
    assert "401" in warning["reason"]


@pytest.mark.unleash
async def test_unreachable_address_at_start_does_not_hang(
    make_flags: Factory, unleash_server: UnleashServer, tmp_path: Path
) -> None:
    start = time.monotonic()
    flags = await make_flags("x", cache="nowhere", url="http://127.0.0.1:9/api")
    assert time.monotonic() - start < 2.0
    assert flags.degraded is True


@pytest.mark.unleash
async def test_real_unleash_answers_our_requests_as_the_poller_expects(
    unleash_server: UnleashServer,
) -> None:
    """The seam of tests/test_unleash_seam.py against the real server: a features body with an
    ETag, 304 for If-None-Match with it, 202 for the registration."""
    spec = UnleashSpec(url=unleash_server.url, refresh_interval=1.0)
    headers = client_headers(spec, unleash_server.client_token, "seam-real", str(uuid.uuid4()))
    url = f"{unleash_server.url}/client"
    async with aiohttp.ClientSession(headers=headers) as s:
        async with s.get(f"{url}/features", params={"project": "default"}) as resp:
            assert resp.status == 200
            etag = resp.headers["ETag"]
            assert "features" in await resp.json()
        async with s.get(f"{url}/features", params={"project": "default"},
                         headers={"If-None-Match": etag}) as resp:
            assert resp.status == 304
        body = registration(spec, "seam-real", headers["UNLEASH-CONNECTION-ID"],
                            "2026-01-01T00:00:00+00:00")
        async with s.post(f"{url}/register", json=body) as resp:
            assert resp.status == 202, await resp.text()


def test_url_that_is_not_http_is_a_config_error(tmp_path: Path) -> None:
    spec = UnleashSpec(url="ftp://127.0.0.1/api")
    flags = UnleashFlags(spec, tmp_path, env={"UNLEASH_API_TOKEN": "t"})
    with pytest.raises(UnleashConfigError, match="ftp://"):
        asyncio.run(flags.start())


# -- pure: how a features body becomes weights --------------------------------------------------


def _body(*strategies: dict, enabled: bool = True) -> dict:
    return {"features": [{"name": "f", "enabled": enabled, "strategies": list(strategies)}]}


def _rollout(rollout: str, **extra: str) -> dict:
    return {"name": "flexibleRollout", "parameters": {"rollout": rollout, **extra}}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (_body(_rollout("25")), FlagState(True, 25.0)),
        (_body(_rollout("25", stranglerWeight="25.37")), FlagState(True, 25.37)),
        (_body(_rollout("60", stranglerWeight="25.37")), FlagState(True, 60.0)),  # UI edit wins
        (_body(_rollout("0", stranglerWeight="0.25")), FlagState(True, 0.25)),
        (_body(_rollout("25"), enabled=False), FlagState(False, 25.0)),
        (_body(), FlagState(True, 100.0)),  # no strategy: on for everyone
        (_body({"name": "default"}), FlagState(True, 100.0)),
        (_body({"name": "userWithId", "parameters": {"userIds": "1"}}), FlagState(True, 0.0)),
        (_body({**_rollout("30"), "disabled": True}, _rollout("70")), FlagState(True, 70.0)),
    ],
)
def test_weight_from_features_body(body: dict, expected: FlagState) -> None:
    assert parse_features(body)["f"] == expected


def test_watched_toggle_absent_from_unleash_is_missing_with_weight_zero() -> None:
    snap = parse_features(json.dumps(_body()), watched=["f", "g"])
    assert snap["g"].missing and snap["g"].weight == 0.0
    assert not snap["f"].missing
