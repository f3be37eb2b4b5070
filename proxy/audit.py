"""Append-only, hash-chained audit log (state_dir/audit.log, one JSON object per line).

Each entry carries `prev`, the SHA-256 of the previous line's exact bytes (64 zeros for the
first), so editing or deleting any line breaks the chain at the next one; `verify()` names it.
Every append is fsynced before the call returns.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    entries: int
    bad_line: int | None = None  # 1-based line number of the first entry that does not chain
    message: str = ""


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._last_hash: str | None = None
        self._seq = 0

    def _tail(self) -> tuple[str, int]:
        if self._last_hash is not None:
            return self._last_hash, self._seq
        last, seq = GENESIS, 0
        try:
            with self.path.open("rb") as f:
                for line in f:
                    if line.strip():
                        last = hashlib.sha256(line.rstrip(b"\n")).hexdigest()
                        seq += 1
        except FileNotFoundError:
            pass
        self._last_hash, self._seq = last, seq
        return last, seq

    def append(
        self,
        action: str,
        actor: str,
        reason: str,
        route: str | None = None,
        before: Any = None,
        after: Any = None,
        evidence: Any = None,
        **extra: Any,
    ) -> dict:
        """Write one entry (fsynced). Raises OSError when the disk refuses."""
        with self._lock:
            prev, seq = self._tail()
            entry = {
                "seq": seq + 1,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
                + f".{int(time.time() * 1000) % 1000:03d}Z",
                "actor": actor,
                "action": action,
                "route": route,
                "from": before,
                "to": after,
                "reason": reason,
                "evidence": evidence,
                **extra,
                "prev": prev,
            }
            line = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            self._last_hash = hashlib.sha256(line).hexdigest()
            self._seq = seq + 1
            return entry

    def entries(self, route: str | None = None, limit: int | None = None) -> list[dict]:
        """Newest first."""
        out: list[dict] = []
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return out
        for raw in reversed(lines):
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if route is None or entry.get("route") == route:
                out.append(entry)
                if limit is not None and len(out) >= limit:
                    break
        return out

    def verify(self) -> VerifyResult:
        prev = GENESIS
        count = 0
        try:
            lines = self.path.read_bytes().split(b"\n")
        except FileNotFoundError:
            return VerifyResult(True, 0, message="no audit log yet")
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
            except ValueError:
                return VerifyResult(False, count, number, f"line {number} is not valid JSON")
            if entry.get("prev") != prev:
                return VerifyResult(
                    False,
                    count,
                    number,
                    f"line {number} does not chain to the line before it "
                    "(an entry was edited, inserted or deleted)",
                )
            if entry.get("seq") != count + 1:
                return VerifyResult(False, count, number, f"line {number} has seq "
                                    f"{entry.get('seq')}, expected {count + 1}")
            prev = hashlib.sha256(raw).hexdigest()
            count += 1
        return VerifyResult(True, count, message=f"{count} entries, chain intact")
