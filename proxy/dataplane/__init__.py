"""The request path: accept, route, split, forward, answer; mirror to the shadow side.

Per worker process, on one event loop: `server` (connections and the exchange's phases),
`table` and `split` (compiled routes, sticky buckets), `upstream` (pooled connections),
`headers`, `overrides`, `mirror`/`pipeline`/`comparer_link` (shadow traffic and the hand-off to
the comparer process), `recorder` (counters), `inventory` (each request's endpoint, for the
traffic inventory), `access_log`. Depends only on `proxy.config`
(and `shadow`'s frame codec).

Compiled or pure (issue 29): `exchange`, `server`, `upstream`, the `basics`, `recorder`,
`inventory` and `table` they call per request, and the shadow mirror's `mirror` and `pipeline`
(a mirrored request's second upstream exchange) (`COMPILED`) are also compiled with Cython
when strangler is installed where Cython and a C compiler are (setup.py; the static types are
in their .pxd files, the .py files are the one source). This package decides once, before any
of them is imported, which runs: the compiled modules when all are there (and, in a
source checkout, none is older than its .py or .pxd: an edit since the build would not be in
it); else, or with STRANGLER_NO_EXTENSIONS=1, the .py files. `ACTIVE` says which.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

COMPILED = ("basics", "exchange", "server", "upstream", "recorder", "inventory", "table",
            "pipeline", "mirror")
_HERE = Path(__file__).resolve().parent


def _extension(name: str) -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = _HERE / f"{name}{suffix}"
        if path.exists():
            return path
    return None


def _why_pure() -> str | None:
    """None when the compiled modules are to be used, else why not."""
    if os.environ.get("STRANGLER_NO_EXTENSIONS", "") not in ("", "0"):
        return "STRANGLER_NO_EXTENSIONS is set"
    checkout = (_HERE.parent.parent / "pyproject.toml").exists()
    for name in COMPILED:
        ext = _extension(name)
        if ext is None:
            return "not compiled"
        if checkout:
            built = ext.stat().st_mtime
            for source in (_HERE / f"{name}.py", _HERE / f"{name}.pxd"):
                if source.exists() and source.stat().st_mtime > built:
                    return f"{ext.name} is older than {source.name} (make ext rebuilds it)"
    return None


class _PureFinder:
    """Imports the .py file of a compiled module (a meta path finder ahead of the usual ones,
    which prefer an extension module to a source file of the same name)."""

    @staticmethod
    def find_spec(fullname: str, path: object = None, target: object = None) -> object:
        pkg, _, name = fullname.rpartition(".")
        if pkg != __name__ or name not in COMPILED:
            return None
        return importlib.util.spec_from_file_location(fullname, _HERE / f"{name}.py")


PURE_REASON = _why_pure()
if PURE_REASON is not None:
    sys.meta_path.insert(0, _PureFinder())  # type: ignore[arg-type]
ACTIVE = "pure Python" if PURE_REASON is not None else "compiled with Cython"


def describe() -> str:
    """For `strangler --version`: which data plane runs, and why not the compiled one."""
    return ACTIVE if PURE_REASON is None else f"{ACTIVE} ({PURE_REASON})"
