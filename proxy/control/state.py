"""Runtime weights and rollback freezes in state_dir/state.json, written atomically.

Precedence (contract §3): effective weight = 0 while rolled back; else the runtime value when
there is one; else the file's. A reload (or a restart) whose file changes a route's weight,
compared with the previously loaded file, replaces that route's runtime value, except for a
rolled-back route, which holds until `resume`.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path


class StateWriteError(OSError):
    """The state could not be persisted (disk full, read-only...). Memory still holds it."""


class StateCorrupt(ValueError):
    """state.json exists but is not strangler state (truncated, not JSON, wrong shape)."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(slots=True)
class RouteRuntime:
    weight: float | None = None  # runtime value (set-weight, promote); None = use the file's
    rolled_back: bool = False
    step: int = 0
    step_started: float = 0.0  # wall-clock time the current weight step began


@dataclass(slots=True)
class RuntimeState:
    routes: dict[str, RouteRuntime] = field(default_factory=dict)
    file_weights: dict[str, float] = field(default_factory=dict)

    def route(self, name: str) -> RouteRuntime:
        r = self.routes.get(name)
        if r is None:
            r = self.routes[name] = RouteRuntime()
        return r

    def effective(self, name: str, file_weight: float) -> float:
        r = self.routes.get(name)
        if r is None:
            return file_weight
        if r.rolled_back:
            return 0.0
        return r.weight if r.weight is not None else file_weight

    def apply_file(self, file_weights: dict[str, float]) -> list[str]:
        """Take a newly loaded file's weights; returns routes whose runtime value it replaced."""
        replaced = []
        for name, weight in file_weights.items():
            before = self.file_weights.get(name)
            r = self.routes.get(name)
            if before is not None and before != weight and r is not None and r.weight is not None:
                r.weight = None  # the file's new value takes over (a rollback still holds)
                replaced.append(name)
        self.file_weights = dict(file_weights)
        return replaced

    def to_json(self) -> dict:
        return {
            "version": 1,
            "routes": {k: asdict(v) for k, v in self.routes.items()},
            "file_weights": self.file_weights,
        }

    @classmethod
    def from_json(cls, data: dict) -> RuntimeState:
        state = cls()
        for name, raw in (data.get("routes") or {}).items():
            weight = raw.get("weight")
            state.routes[name] = RouteRuntime(
                weight=None if weight is None else float(weight),
                rolled_back=bool(raw.get("rolled_back", False)),
                step=int(raw.get("step", 0)),
                step_started=float(raw.get("step_started", 0.0)),
            )
        state.file_weights = {k: float(v) for k, v in (data.get("file_weights") or {}).items()}
        return state


class StateStore:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "state.json"

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> RuntimeState:
        """The saved state; a fresh one when there is no file. Raises StateCorrupt."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return RuntimeState()
        try:
            data = json.loads(raw)
        except ValueError as exc:
            what = "empty" if not raw.strip() else f"not valid JSON ({exc})"
            raise StateCorrupt(self.path, f"{what}, {len(raw)} bytes") from exc
        if not isinstance(data, dict) or data.get("version") != 1:
            raise StateCorrupt(self.path, "not a strangler state file (no \"version\": 1 object)")
        try:
            return RuntimeState.from_json(data)
        except (AttributeError, TypeError, ValueError) as exc:
            raise StateCorrupt(self.path, f"unexpected content ({exc})") from exc

    def quarantine(self, stamp: str) -> Path:
        """Move the file aside (kept for inspection); raises OSError when it cannot."""
        dest = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        os.replace(self.path, dest)
        return dest

    def save(self, state: RuntimeState) -> None:
        """temp file + fsync + rename + fsync(dir): the file is either old or new, never torn."""
        data = json.dumps(state.to_json(), indent=1, sort_keys=True).encode()
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".state.", dir=directory)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with _suppress():
                    os.unlink(tmp)
                raise
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            raise StateWriteError(exc.errno, f"cannot persist {self.path}: {exc.strerror}") from exc


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True
