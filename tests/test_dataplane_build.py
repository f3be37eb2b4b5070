"""The compiled data plane (issue 29): which one runs, how to choose, and a build that cannot
compile it still installs the pure-Python one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

import proxy.dataplane as dataplane

ROOT = Path(__file__).resolve().parent.parent
STRANGLER = Path(sys.executable).parent / "strangler"
PROBE = ("import importlib, proxy.dataplane as d; print(d.ACTIVE); "
         "[print(importlib.import_module('proxy.dataplane.' + m).__file__) for m in d.COMPILED]")


def _probe(env: dict[str, str], cwd: Path = ROOT) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, timeout=60, cwd=cwd, env={**os.environ, **env}).stdout
    return out.split("\n")[:1 + len(dataplane.COMPILED)]


def test_every_compiled_module_is_built_and_chosen_together() -> None:
    """setup.py builds, the Makefile rebuilds on an edit of, and proxy.dataplane chooses the
    same modules (all or none: a compiled module cimports the others' classes)."""
    import re

    setup = (ROOT / "setup.py").read_text()
    built = re.findall(r'"proxy\.dataplane\.(\w+)"', setup[setup.index("MODULES"):])
    make = (ROOT / "Makefile").read_text()
    ext_src = re.search(r"proxy/dataplane/%\.py,([\w ]+)\)", make)
    assert ext_src is not None
    assert built == list(dataplane.COMPILED) == ext_src.group(1).split()


def test_strangler_no_extensions_runs_the_py_files_and_version_says_so() -> None:
    active, *files = _probe({"STRANGLER_NO_EXTENSIONS": "1", "PYTHONPATH": str(ROOT)})
    assert active == "pure Python"
    assert all(f.endswith(".py") for f in files), files
    out = subprocess.run([str(STRANGLER), "--version"], capture_output=True, text=True,
                         check=True, timeout=60,
                         env={**os.environ, "STRANGLER_NO_EXTENSIONS": "1"}).stdout
    assert out.strip().endswith("data plane pure Python (STRANGLER_NO_EXTENSIONS is set)")


@pytest.mark.skipif(dataplane.ACTIVE != "compiled with Cython",
                    reason=f"the data plane is not compiled here ({dataplane.PURE_REASON})")
def test_the_compiled_modules_run_when_built_and_version_says_so() -> None:
    active, *files = _probe({"STRANGLER_NO_EXTENSIONS": ""})
    assert active == "compiled with Cython"
    assert all(f.endswith(".so") for f in files), files
    out = subprocess.run([str(STRANGLER), "--version"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip().endswith("data plane compiled with Cython")


@pytest.mark.skipif(dataplane.ACTIVE != "compiled with Cython",
                    reason=f"the data plane is not compiled here ({dataplane.PURE_REASON})")
def test_an_edit_after_the_build_is_not_hidden_by_the_stale_extension(tmp_path: Path) -> None:
    """In a source checkout, a .py newer than its extension module runs as the .py."""
    shutil.copytree(ROOT / "proxy", tmp_path / "proxy",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    edited = tmp_path / "proxy" / "dataplane" / "server.py"
    later = time.time() + 5
    os.utime(edited, (later, later))
    active, *files = _probe({"STRANGLER_NO_EXTENSIONS": "", "PYTHONPATH": str(tmp_path)},
                            cwd=tmp_path)
    assert active == "pure Python"
    assert all(f.endswith(".py") and f.startswith(str(tmp_path)) for f in files), files
    out = subprocess.run([sys.executable, "-c", "import proxy.dataplane as d; print(d.describe())"],
                         capture_output=True, text=True, check=True, timeout=60, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)}).stdout
    assert "is older than server.py (make ext rebuilds it)" in out


@pytest.mark.slow
def test_a_build_without_a_c_compiler_warns_and_installs_the_pure_data_plane(
        tmp_path: Path) -> None:
    uv = ROOT / ".cache" / "uv-tool" / "bin" / "uv"
    if not uv.exists():
        pytest.skip("uv is not installed here (make venv installs it)")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src)
    for pkg in ("proxy", "shadow"):
        shutil.copytree(ROOT / pkg, src / pkg,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c"))
    done = subprocess.run([str(uv), "build", "--wheel", "-o", str(tmp_path / "dist"), str(src)],
                          capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "CC": "/nonexistent/cc", "UV_PYTHON": sys.executable,
                               "STRANGLER_NO_EXTENSIONS": ""})  # the build must try
    assert done.returncode == 0, done.stderr[-3000:]
    assert "WARNING: strangler's data plane is not compiled" in done.stdout + done.stderr
    (wheel,) = (tmp_path / "dist").glob("strangler-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "proxy/dataplane/exchange.py" in names
    assert not [n for n in names if n.endswith(".so")], names


def _attributes(source: str, cls: str) -> set[str]:
    import re

    body = source[re.search(rf"^class {cls}\b", source, re.M).start():]  # type: ignore[union-attr]
    nxt = re.search(r"^(class |def )", body[1:], re.M)
    body = body[:nxt.start() + 1] if nxt else body
    slots = re.search(r"__slots__ = \((.*?)\)", body, re.S)
    if slots:
        return set(re.findall(r'"(\w+)"', slots.group(1)))
    return set(re.findall(r"self\.(\w+)(?:: [^=\n]+)? = ", body))


@pytest.mark.parametrize(("module", "cls"), [("exchange", "Exchange"), ("exchange", "LineState"),
                                             ("server", "ClientConnection"),
                                             ("server", "DataPlane"),
                                             ("upstream", "UpstreamConnection"),
                                             ("upstream", "UpstreamPool"),
                                             ("recorder", "Recorder"),
                                             ("recorder", "RecorderSlot"),
                                             ("recorder", "ShadowSlot"),
                                             ("inventory", "EndpointCounter"),
                                             ("inventory", "InventorySlot"),
                                             ("inventory", "PathCell"),
                                             ("table", "RouteState"),
                                             ("table", "CompiledRoute"),
                                             ("table", "_Node"),
                                             ("table", "RouteTable"),
                                             ("pipeline", "PipelineLeg"),
                                             ("pipeline", "PipelinedConnection"),
                                             ("pipeline", "PipelinePool"),
                                             ("mirror", "TokenBucket"),
                                             ("mirror", "_Compiled"),
                                             ("mirror", "_Job"),
                                             ("mirror", "_Leg"),
                                             ("mirror", "Mirror")])
def test_every_attribute_of_a_compiled_class_is_declared_in_its_pxd(module: str,
                                                                      cls: str) -> None:
    """A compiled class has only the attributes its .pxd declares: one added to the .py alone
    would raise AttributeError on the compiled data plane only."""
    import re

    here = ROOT / "proxy" / "dataplane"
    attrs = _attributes((here / f"{module}.py").read_text(), cls)
    pxd = (here / f"{module}.pxd").read_text()
    # not a forward declaration; a subclass's own attributes (its base's are the base's)
    block = pxd[re.search(rf"^cdef class {cls}\b(\(\w+\))?:", pxd, re.M).start():]  # type: ignore[union-attr]
    end = block.find("\ncdef class ")
    block = block[:end] if end > 0 else block  # up to the next class of the same .pxd
    # public attributes, and C arrays (a slot's counts: the .py sets them only without Cython)
    declared = set(re.findall(r"cdef public [\w.]+ (\w+)", block)) | set(
        re.findall(r"cdef (?:unsigned )?(?:long long|int) (\w+)\[\d+\]", block))
    assert attrs, cls
    assert attrs == declared, (attrs - declared, declared - attrs)


@pytest.mark.parametrize("first", dataplane.COMPILED)
def test_each_compiled_module_can_be_imported_first(first: str) -> None:
    """Compiled, exchange, server and upstream cimport each other's types, so importing one
    imports the others before its own body has run: none may import a name from another's
    body (proxy.dataplane.basics and upstream_errors hold those). Each order is tried in a
    fresh interpreter, as the pure and the compiled data plane."""
    code = (f"import proxy.dataplane.{first}; import proxy.dataplane.server as s; "
            "import proxy.dataplane.exchange as e; import proxy.dataplane.upstream as u; "
            "from proxy.dataplane.recorder import Recorder; "
            "c = s.ClientConnection(s.DataPlane(Recorder())); e.Exchange(); print(u.UpstreamBusy)")
    for pure in ("", "1"):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60, cwd=ROOT, check=False,
                              env={**os.environ, "STRANGLER_NO_EXTENSIONS": pure})
        assert done.returncode == 0, (pure, done.stderr[-2000:])
