"""Build hook (the project's metadata is in pyproject.toml).

strangler is pure Python. The data plane's request-path modules (proxy.dataplane.exchange,
server, upstream, the basics, recorder, inventory and table they call per request, and the
shadow mirror's mirror and pipeline: MODULES) are also compiled with Cython, with the static
types of their .pxd files, when Cython and a C compiler are there; their .py files stay the one
source and run unchanged without it (issue 29; proxy/dataplane/__init__.py chooses at import,
STRANGLER_NO_EXTENSIONS=1 forces the .py files). A build that cannot compile them warns and
installs the pure-Python package: it never fails because of them. STRANGLER_NO_EXTENSIONS=1 at
build time skips them.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MODULES = ("proxy.dataplane.basics", "proxy.dataplane.exchange", "proxy.dataplane.server",
           "proxy.dataplane.upstream", "proxy.dataplane.recorder", "proxy.dataplane.inventory",
           "proxy.dataplane.table", "proxy.dataplane.pipeline", "proxy.dataplane.mirror")


def _warn(why: str) -> None:
    print(f"WARNING: strangler's data plane is not compiled ({why}); the pure-Python data "
          "plane is installed (it works the same, with more CPU per request)", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """All the modules or none: one that failed would leave the others unusable."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, missing headers, a compiler error
            self._undo()
            _warn(f"{type(exc).__name__}: {exc}")

    def _undo(self) -> None:
        for ext in self.extensions:
            for path in (self.get_ext_fullpath(ext.name),):
                if os.path.exists(path):
                    os.remove(path)
        self.extensions = []


def extensions() -> list[Extension]:
    if os.environ.get("STRANGLER_NO_EXTENSIONS", "") not in ("", "0"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        _warn("Cython is not installed")
        return []
    exts = [Extension(m, [m.replace(".", "/") + ".py"]) for m in MODULES]
    try:
        return cythonize(exts, compiler_directives={"language_level": 3}, quiet=True)
    except Exception as exc:
        _warn(f"Cython failed: {exc}")
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
