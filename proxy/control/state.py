"""Runtime weights and rollback freezes in state_dir/state.json, written atomically.

Precedence (contract §3): effective weight = 0 while rolled back; else the runtime value when
there is one; else the file's. A reload (or a restart) whose file changes a route's weight,
compared with the previously loaded file, replaces that route's runtime value, except for a
rolled-back route, which holds until `resume`.
"""

from __future__ import annotations

import contextlib
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
    step: int = 0  # the step id (proxy.control.steps): changes with anything evidence depends on
    step_started: float = 0.0  # wall-clock time the current step began
    step_reason: str = ""  # why it began, e.g. "target changed (svc http://a -> svc http://b)"
    identity: dict[str, str] | None = None  # proxy.control.steps.identity when it began


@dataclass(slots=True)
class RuntimeState:
    routes: dict[str, RouteRuntime] = field(default_factory=dict)
    file_weights: dict[str, float] = field(default_factory=dict)
    config_hash: str | None = None  # SHA-256 of the routes.yaml text last loaded

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
            "config_hash": self.config_hash,
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
                step_reason=str(raw.get("step_reason") or ""),
                identity=_identity(raw.get("identity")),
            )
        state.file_weights = {k: float(v) for k, v in (data.get("file_weights") or {}).items()}
        digest = data.get("config_hash")
        state.config_hash = digest if isinstance(digest, str) else None
        return state


def _identity(raw: object) -> dict[str, str] | None:
    if not isinstance(raw, dict):
        return None
    return {str(k): str(v) for k, v in raw.items()}


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
        atomic_write(self.path, data)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: temp file + fsync + rename + fsync(dir), never torn.
    Raises StateWriteError."""
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        raise StateWriteError(exc.errno, f"cannot persist {path}: {exc.strerror}") from exc
