"""Whether a request may be sent again: the one place that decides, for the retry after a stale
pooled connection and for the fallback to legacy.

The rule (RFC 9110 §9.2.2; nginx's `proxy_next_upstream` passes a non-idempotent request on
only while nothing of it was sent): a request that reached an upstream, even in part, is sent
again only when repeating it cannot repeat a side effect, that is when its method is idempotent
(GET, HEAD, OPTIONS, TRACE, PUT, DELETE), or when it carries an `Idempotency-Key` header on a
route that opted in (`retry_with_idempotency_key: true`). A request of which no byte was written
(the connection could not be opened, or no pooled connection came free) may fall back whatever
its method. Besides, the whole request must still be in hand (no body, or a body kept for a
replay) and nothing of the answer may have reached the client.

`Failure` names why a request is being reconsidered. Which failures fall back at all is the
route's choice (`fallback_to_legacy: {on: [connect, timeout, reset, tls, 502, 503, 504]}`;
`true` is every one of them): `why`, the failure's kind or the target's status, must be in it.
The rules above hold whatever the list says.
"""

from __future__ import annotations

from typing import Any, Literal

from proxy.dataplane.table import CompiledRoute

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
IDEMPOTENCY_KEY = b"idempotency-key"

# unsent: no byte reached the upstream (connect failure, no free pooled connection);
# stale: a pooled keep-alive connection closed under the request before any answer;
# timeout, reset: the upstream did not answer in time, or closed or garbled its answer;
# status: the upstream answered 5xx (nothing relayed yet).
Failure = Literal["unsent", "stale", "timeout", "reset", "status"]


def repeatable(route: CompiledRoute | None, method: bytes, hdict: dict[bytes, bytes]) -> bool:
    """Whether sending this request twice has the effect of sending it once; decided at its
    head (`Exchange.resendable`)."""
    if method in IDEMPOTENT_METHODS:
        return True
    return (route is not None and route.spec.retry_with_idempotency_key
            and IDEMPOTENCY_KEY in hdict)


def may_resend(ex: Any, failure: Failure, why: str | int = "connect") -> bool:
    """May the exchange `ex` (proxy.dataplane.exchange.Exchange) be sent again after `failure`:
    on a fresh connection to the same upstream for `stale`, to legacy for every other failure.
    `why`: the failure's kind (connect, timeout, reset, tls) or the target's 5xx status."""
    if ex.done or (ex.response_started and not ex.discarding):
        return False
    if failure == "stale":
        return (not ex.stale_retried and not ex.discarding and ex.resendable
                and _whole_request_in_hand(ex))
    route = ex.route
    if (ex.backend != "target" or ex.retried or route is None or why not in route.fallback_on
            or ex.override is not None):  # a pinned request wants the target's own answer
        return False
    if failure == "unsent" and ex.pending is not None:
        return True  # nothing was ever written: the body so far still waits in `pending`
    return ex.resendable and _whole_request_in_hand(ex)


def _whole_request_in_hand(ex: Any) -> bool:
    return ex.client_done and (ex.body_mode == 0 or ex.replay is not None)
