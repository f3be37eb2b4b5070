"""The OTLP encoding of spans (proxy.dataplane.otlp.encode), decoded with the official
opentelemetry-proto definitions: every attribute arrives with its key, type and value, whether
its bytes were kept from an earlier span or built for this one, and the kept bytes stay bounded.
"""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from proxy.dataplane import otlp
from proxy.dataplane.tracing import SERVER


def _span(i: int, attrs: tuple) -> tuple:
    return (bytes([i % 256]) * 16, bytes([i % 256 + 1 & 255]) * 8, b"", f"GET r{i}", SERVER,
            1_000 + i, 2_000 + i, attrs, (), None)


def _decoded(data: bytes) -> list[dict]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(data)
    out = []
    for span in request.resource_spans[0].scope_spans[0].spans:
        attrs = {}
        for a in span.attributes:
            kind = a.value.WhichOneof("value")
            attrs[a.key] = (kind, getattr(a.value, kind))
        out.append(attrs)
    return out


def _expected(attrs: tuple) -> dict:
    kinds = {bool: "bool_value", int: "int_value", float: "double_value", str: "string_value"}
    return {k: (kinds[type(v)], v) for k, v in attrs}


def test_every_attribute_arrives_with_its_type_kept_or_not(monkeypatch) -> None:
    monkeypatch.setattr(otlp, "_encoded", {})
    spans = []
    for i in range(6):
        spans.append(_span(i, (
            ("http.request.method", "GET"),
            ("url.path", f"/items/{i}"),  # new in every span: never kept
            ("http.response.status_code", 200 if i % 2 else 503),
            ("strangler.route", "items"),
            ("strangler.request_id", f"{i:024x}"),
            ("strangler.fallback", bool(i % 2)),  # True must not come back as int 1
            ("strangler.step", 1),  # ...nor 1 as True
            ("strangler.weight", 5.0),
            ("test.mixed", True if i % 2 else 1),  # equal, and same hash: kept apart by type
        )))
    for _ in range(2):  # the second time every repeating attribute comes from kept bytes
        got = _decoded(otlp.encode(spans, "strangler"))
        assert got == [_expected(s[7]) for s in spans]
    assert not any(key[0] in otlp._UNIQUE for key in otlp._encoded)
    assert ("strangler.fallback", bool, True) in otlp._encoded
    assert ("strangler.step", int, 1) in otlp._encoded


def test_kept_bytes_are_bounded_and_what_is_not_kept_is_still_sent(monkeypatch) -> None:
    monkeypatch.setattr(otlp, "_encoded", {})
    monkeypatch.setattr(otlp, "_CACHE_MAX", 10)
    spans = [_span(i, (("strangler.route", f"route-{i}"), ("strangler.step", i)))
             for i in range(40)]
    got = _decoded(otlp.encode(spans, "strangler"))
    assert got == [_expected(s[7]) for s in spans]
    assert len(otlp._encoded) == 10
