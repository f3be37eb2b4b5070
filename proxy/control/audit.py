"""Append-only, hash-chained audit log (state_dir/audit.log, one JSON object per line).

Each entry carries `prev`, the SHA-256 of the previous line's exact bytes (64 zeros for the
first), so editing or deleting any line breaks the chain at the next one; `verify()` names it.
Every append is fsynced before the call returns. The chain cannot vouch for its own last line,
so each append also writes an anchor (`audit.log.tail`: seq and hash of the newest entry);
`verify()` checks the file against it, so editing or deleting the last line is caught too, also
after a restart.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


def encode(entry: dict) -> bytes:
    """An entry's exact line in the file (without the newline)."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()


def entry_hash(entry: dict) -> str | None:
    """SHA-256 of the entry's line: what the next entry's `prev` holds, and what a notification
    quotes so a reader can find (and trust) the entry it is about. None for an entry of a shared
    trail that is not chained yet (`pending`)."""
    if entry.get("pending"):
        return None
    return hashlib.sha256(encode(entry)).hexdigest()


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    entries: int
    bad_line: int | None = None  # 1-based line number of the first entry that does not chain
    message: str = ""
    suspect_lines: tuple[int, ...] = ()  # the lines that may have been tampered with


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.anchor_path = path.with_name(path.name + ".tail")
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
            line = encode(entry)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                size = os.fstat(fd).st_size
                try:
                    # A full disk can take part of the line without an error: the rest is
                    # refused, and a torn line would break the chain for every later entry.
                    if os.write(fd, line + b"\n") != len(line) + 1:
                        raise OSError(errno.ENOSPC, "short write to the audit log")
                    os.fsync(fd)
                    self._write_anchor(seq + 1, hashlib.sha256(line).hexdigest())
                except OSError:
                    # Either the entry and its anchor are written, or neither is.
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, size)
                        os.fsync(fd)
                    raise
            finally:
                os.close(fd)
            self._last_hash = hashlib.sha256(line).hexdigest()
            self._seq = seq + 1
            return entry

    def _write_anchor(self, seq: int, last_hash: str) -> None:
        data = json.dumps({"seq": seq, "hash": last_hash}).encode()
        tmp = self.anchor_path.with_name(self.anchor_path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, "short write to the audit anchor")
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        finally:
            os.close(fd)
        os.replace(tmp, self.anchor_path)

    def _anchor(self) -> dict | None:
        try:
            return json.loads(self.anchor_path.read_bytes())
        except (FileNotFoundError, ValueError):
            return None

    def wrote_here(self) -> bool:
        return bool(self.entries(limit=1))

    async def settle(self, entry: dict | None, timeout: float = 1.0) -> dict | None:
        return entry  # chained (and fsynced) when append returned

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
            if route is None or entry.get("route") == route or route in (
                    entry.get("routes") or ()):  # a group's entry names its members
                out.append(entry)
                if limit is not None and len(out) >= limit:
                    break
        return out

    def verify(self) -> VerifyResult:
        """Check the chain and the anchor; the result names the first line that is wrong."""
        anchor = self._anchor()
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            if anchor is not None and anchor.get("seq", 0) > 0:
                return VerifyResult(False, 0, 1, f"{self.path.name} is missing but "
                                    f"{self.anchor_path.name} says {anchor['seq']} entries were "
                                    "written: the log was deleted or moved", ())
            return VerifyResult(True, 0, message="no audit log yet")
        lines = data.split(b"\n")
        numbered = [(n, raw) for n, raw in enumerate(lines, start=1) if raw.strip()]
        last_number = len(lines)  # the segment after the last newline (empty when complete)
        prev, prev_number, count = GENESIS, 0, 0
        for i, (number, raw) in enumerate(numbered):
            try:
                entry = json.loads(raw)
                if not isinstance(entry, dict):
                    raise ValueError("not an object")
            except ValueError:
                if number == last_number:
                    return VerifyResult(False, count, number, f"line {number} is torn: the last "
                                        "line is incomplete (no newline, not JSON), an append was "
                                        "interrupted; `strangler serve` moves it aside at start",
                                        (number,))
                return VerifyResult(False, count, number, f"line {number} is not valid JSON: "
                                    "it was edited", (number,))
            if entry.get("prev") != prev:
                following = numbered[i + 1][1] if i + 1 < len(numbered) else None
                intact = (
                    json.loads(following).get("prev") == hashlib.sha256(raw).hexdigest()
                    if following is not None and _is_json(following)
                    else following is None and anchor is not None
                    and anchor.get("hash") == hashlib.sha256(raw).hexdigest()
                )
                return _chain_break(number, prev_number, entry.get("seq"), count + 1, intact,
                                    count)
            if entry.get("seq") != count + 1:
                return VerifyResult(False, count, number, f"line {number} has seq "
                                    f"{entry.get('seq')}, expected {count + 1}", (number,))
            prev = hashlib.sha256(raw).hexdigest()
            prev_number = number
            count += 1
        if anchor is not None:
            if count < anchor.get("seq", 0):
                return VerifyResult(False, count, count + 1,
                                    f"the log ends at line {count} but {anchor['seq']} entries "
                                    "were written: the last entries were deleted",
                                    (count + 1,))
            if count == anchor.get("seq") and prev != anchor.get("hash"):
                return VerifyResult(False, count, count,
                                    f"line {count} (the last entry) was edited", (count,))
        return VerifyResult(True, count, message=f"{count} entries, chain intact")

    def repair_torn_tail(self, stamp: str) -> dict | None:
        """An interrupted append leaves a last line without its newline: move those bytes to
        `audit.log.torn-<stamp>` and cut the log back to its last complete line (a complete
        JSON line that only lacks the newline gets it). Returns what was done, or None."""
        with self._lock:
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                return None
            if not data or data.endswith(b"\n"):
                return None
            cut = data.rfind(b"\n") + 1
            tail = data[cut:]
            line = data.count(b"\n") + 1
            fd = os.open(self.path, os.O_WRONLY)
            try:
                if _is_json(tail):
                    os.lseek(fd, 0, os.SEEK_END)
                    os.write(fd, b"\n")
                    os.fsync(fd)
                    self._last_hash = None
                    return {"line": line, "action": "newline added", "bytes": len(tail)}
                dest = self.path.with_name(f"{self.path.name}.torn-{stamp}")
                dest.write_bytes(tail)
                os.ftruncate(fd, cut)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._last_hash = None
            return {"line": line, "action": "moved aside", "bytes": len(tail),
                    "sha256": hashlib.sha256(tail).hexdigest(), "moved_to": str(dest)}


def _is_json(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except ValueError:
        return False


def _chain_break(number: int, prev_number: int, seq: Any, expected: int, intact: bool,
                 count: int) -> VerifyResult:
    """Say which line is wrong when line `number` does not hold the hash of the one before it."""
    if isinstance(seq, int) and seq > expected:
        where = f"after line {prev_number}" if prev_number else "at the start"
        gone = f"entry {expected}" if seq == expected + 1 else f"entries {expected}-{seq - 1}"
        return VerifyResult(False, count, number, f"line {number} does not chain to the line "
                            f"before it: {gone} deleted {where}", (number,))
    if isinstance(seq, int) and seq < expected:
        return VerifyResult(False, count, number, f"line {number} was inserted: it repeats seq "
                            f"{seq} and does not chain to line {prev_number}", (number,))
    if intact and prev_number:
        # Line `number` is vouched for by its successor (or the anchor): its predecessor changed.
        return VerifyResult(False, count, prev_number, f"line {prev_number} was edited: line "
                            f"{number} holds the SHA-256 of a different line {prev_number}",
                            (prev_number, number))
    return VerifyResult(False, count, number, f"line {number} does not chain to the line before "
                        f"it: line {number} was altered, or line {prev_number} was edited",
                        tuple(n for n in (prev_number, number) if n >= 1))
