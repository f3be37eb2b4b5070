"""The result of one reconcile run: counts, differences per field path, bounded samples.

A `Tally` takes one outcome per replayed request (a comparison, an upstream error, or a skip)
and is frozen into a `RunResult` at the end. Comparisons pass through a `NoiseModel` of their
own when the route has a noise twin, exactly as shadow comparisons do, so noise is cancelled
before anything counts. Samples are kept for at most `MAX_SAMPLES` requests, at most
`SAMPLES_PER_FIELD` per field path (one noisy field cannot crowd out the others); they hold the
request line, its safe headers, the statuses and the (already redacted) differences (at most
`DIFFS_PER_SAMPLE`), never a body. At most `MAX_FIELDS` distinct (path, kind) are counted; the
differences beyond are counted in `fields_dropped`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from shadow.model import Comparison
from shadow.noise import NoiseModel
from shadow.redact import Redactor
from shadow.requestset import ReplayRequest

__all__ = ["DIFFS_PER_SAMPLE", "MAX_FIELDS", "MAX_SAMPLES", "SAMPLES_PER_FIELD", "RunResult",
           "Tally"]

MAX_SAMPLES = 20
SAMPLES_PER_FIELD = 3
DIFFS_PER_SAMPLE = 50
MAX_FIELDS = 10_000


@dataclass(frozen=True, slots=True)
class RunResult:
    route: str
    source: str  # "file:NAME" or "store"
    started: float
    finished: float
    requests: int  # replayed (GET/HEAD sent to both sides)
    compared: int
    mismatched: int
    errors: int  # a side could not be reached or answered too late
    skipped: dict[str, int]  # reason -> count (unsafe_method, not_routed)
    noise: int  # differences cancelled by the noise twin
    fields: tuple[tuple[str, str, int], ...]  # (path, kind, count), most frequent first
    samples: tuple[dict[str, object], ...]
    error_kinds: dict[str, int] = field(default_factory=dict)
    fields_dropped: int = 0  # differences on fields past MAX_FIELDS (counted in mismatched)

    @property
    def clean(self) -> bool:
        return self.mismatched == 0 and self.errors == 0

    def field_rows(self) -> list[dict[str, object]]:
        n = self.compared
        return [{"path": p, "kind": k, "count": c, "rate": c / n if n else 0.0}
                for p, k, c in self.fields]


class Tally:
    def __init__(self, route: str, source: str, started: float, redactor: Redactor,
                 noise: bool) -> None:
        self.route, self.source, self.started = route, source, started
        self.redactor = redactor
        self.noise = NoiseModel() if noise else None
        self.requests = self.compared = self.mismatched = self.errors = self.cancelled = 0
        self.skipped: Counter[str] = Counter()
        self.error_kinds: Counter[str] = Counter()
        self.fields: Counter[tuple[str, str]] = Counter()
        self.samples: list[dict[str, object]] = []
        self._per_field: Counter[str] = Counter()
        self.fields_dropped = 0

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def error(self, kind: str) -> None:
        self.requests += 1
        self.errors += 1
        self.error_kinds[kind] += 1

    def compared_one(self, req: ReplayRequest, legacy_status: int, target_status: int,
                     primary: Comparison, noise: Comparison | None) -> Comparison:
        """Count one comparison (noise cancelled first); returns what counted."""
        self.requests += 1
        if primary.error is not None:
            self.errors += 1
            self.error_kinds["comparison"] += 1
            return primary
        result = self.noise.observe(primary, noise) if self.noise is not None else primary
        self.compared += 1
        self.cancelled += len(result.noise)
        if result.matched:
            return result
        self.mismatched += 1
        paths = []
        for d in result.differences:
            key = (d.path, d.kind)
            if key in self.fields or len(self.fields) < MAX_FIELDS:
                self.fields[key] += 1
            else:
                self.fields_dropped += 1
            paths.append(d.path)
        if len(self.samples) < MAX_SAMPLES and any(
                self._per_field[p] < SAMPLES_PER_FIELD for p in paths):
            for p in set(paths):
                self._per_field[p] += 1
            red = self.redactor
            self.samples.append({
                "method": req.method,
                "path": red.redact_text(req.path),
                "headers": [list(h) for h in red.redact_headers(req.headers)],
                "legacy_status": legacy_status,
                "target_status": target_status,
                # the comparator redacts differences already; again, cheaply, to be sure
                "differences": [red.redact_difference(d).to_dict()
                                for d in result.differences[:DIFFS_PER_SAMPLE]],
                "more_differences": max(0, len(result.differences) - DIFFS_PER_SAMPLE),
            })
        return result

    def result(self, finished: float) -> RunResult:
        fields = sorted(self.fields.items(), key=lambda kv: (-kv[1], kv[0]))
        return RunResult(
            route=self.route, source=self.source, started=self.started, finished=finished,
            requests=self.requests, compared=self.compared, mismatched=self.mismatched,
            errors=self.errors, skipped=dict(self.skipped), noise=self.cancelled,
            fields=tuple((p, k, n) for (p, k), n in fields), samples=tuple(self.samples),
            error_kinds=dict(self.error_kinds), fields_dropped=self.fields_dropped,
        )
