"""The audit outbox: entries this replica acknowledged that may not be in the shared trail yet
(state_dir/audit.outbox, one JSON object per line, fsynced before `add` returns).

Every entry of the PostgreSQL trail goes through here first, so an acknowledged change is on
this replica's disk whatever the database does; the shipper (`proxy.control.audit_pg`) appends
the entries to the fleet's chain in this order and then `forget`s them. A crash between the
database's commit and `forget` only means the entry is shipped again at the next start: each
carries a `uid` the trail already knows, and it is skipped. An interrupted `add` (a crash before
fsync returned) leaves a torn last line: it was never acknowledged, and is moved aside at start.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
import time
from pathlib import Path

import structlog

log = structlog.get_logger("strangler.audit")

REWRITE_AFTER = 1000  # shipped lines kept before the file is rewritten without them


class Outbox:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._pending: list[dict] = []
        self._shipped_lines = 0  # lines at the start of the file that are already shipped
        self.torn: dict | None = None
        self._load()

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline
        for raw in lines:
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
            except ValueError:
                log.error("audit outbox: unreadable line skipped", file=str(self.path))
                continue
            self._pending.append(entry)
        if tail.strip():
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            dest = self.path.with_name(f"{self.path.name}.torn-{stamp}")
            dest.write_bytes(tail)
            with open(self.path, "r+b") as f:
                f.truncate(len(data) - len(tail))
                os.fsync(f.fileno())
            self.torn = {"bytes": len(tail), "moved_to": str(dest)}
            log.error("audit outbox: torn last line moved aside (an append interrupted before "
                      "it was acknowledged)", file=str(self.path), **self.torn)

    def ever_written(self) -> bool:
        """This state_dir has written audit entries before (the file is never deleted)."""
        return self.path.exists()

    def add(self, entry: dict) -> None:
        """Append durably (fsynced); raises OSError when the disk refuses."""
        line = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                size = os.fstat(fd).st_size
                try:
                    if os.write(fd, line) != len(line):
                        raise OSError(errno.ENOSPC, "short write to the audit outbox")
                    os.fsync(fd)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, size)
                    raise
            finally:
                os.close(fd)
            self._pending.append(entry)

    def pending(self, limit: int | None = None) -> list[dict]:
        """The oldest entries not yet shipped, in order."""
        with self._lock:
            return list(self._pending[:limit] if limit is not None else self._pending)

    def __len__(self) -> int:
        return len(self._pending)

    def forget(self, uids: set[str]) -> None:
        """The entries with these uids are in the shared trail (they are the oldest ones)."""
        with self._lock:
            n = 0
            while n < len(self._pending) and self._pending[n].get("uid") in uids:
                n += 1
            del self._pending[:n]
            self._shipped_lines += n
            try:
                if not self._pending:
                    with open(self.path, "r+b") as f:
                        f.truncate(0)
                        os.fsync(f.fileno())
                    self._shipped_lines = 0
                elif self._shipped_lines >= REWRITE_AFTER:
                    self._rewrite()
            except OSError as exc:  # shipped twice at the next start at worst (deduplicated)
                log.warning("audit outbox not compacted", file=str(self.path),
                            error=exc.strerror)

    def _rewrite(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = b"".join(json.dumps(e, sort_keys=True, separators=(",", ":")).encode() + b"\n"
                        for e in self._pending)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        self._shipped_lines = 0
