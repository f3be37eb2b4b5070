"""`strangler validate` as CI runs it: exit codes and the FILE:LINE: path: message format."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STRANGLER = Path(sys.executable).parent / "strangler"  # the virtualenv running the tests

BROKEN = """\
version: 1
upstreams:
  old: {url: "http://127.0.0.1:8001"}
  new: {url: "https://127.0.0.1:8002", tls: {cert_file: client.pem}}
default_upstream: old
routes:
  - name: balance
    legacy: old
    target: new
    weigth: 5
"""


def validate(*args: str, cwd: Path, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "STRANGLER_CONFIG"}
    full_env.update(env or {})
    return subprocess.run([str(STRANGLER), "validate", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=60)


def test_valid_example_exits_0_with_a_one_line_summary() -> None:
    result = validate("-c", "routes.yaml", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("routes.yaml: OK: 1 route, 3 upstreams (monolith, monolith-2, "
                             "balance-svc), default monolith\n")
    assert result.stderr == ""


def test_default_file_is_routes_yaml_in_the_working_directory() -> None:
    result = validate(cwd=ROOT)
    assert result.returncode == 0 and result.stdout.startswith("routes.yaml: OK: ")


def test_invalid_file_prints_every_problem_as_file_line_path_message_and_exits_2(
    tmp_path: Path,
) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "r.yaml").write_text(BROKEN)
    result = validate("-c", "conf/r.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines == [
        "conf/r.yaml:4: upstreams.new.tls.key_file: cert_file needs key_file too (a client "
        "certificate and its key)",
        "conf/r.yaml:10: routes[0].weigth: unknown key 'weigth'; expected one of: name, match, "
        "legacy, target, weight, sticky, fallback_to_legacy, retry_with_idempotency_key, flag, "
        "websocket, override, shadow, promotion (did you mean 'weight'?)",
    ]
    assert all(re.match(r"^conf/r\.yaml:\d+: [\w.\[\]-]+: .+", line) for line in lines)


def test_absolute_path_is_echoed_as_given(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("version: 1\nroutes: [\n")
    result = validate("--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"{path}:3: syntax: invalid YAML: ")
    assert "Traceback" not in result.stderr


def test_strangler_config_env_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "other.yaml").write_text(BROKEN)
    result = validate(cwd=tmp_path, env={"STRANGLER_CONFIG": "other.yaml"})
    assert result.returncode == 2 and result.stderr.startswith("other.yaml:4: ")
    result = validate("-c", str(ROOT / "routes.yaml"), cwd=tmp_path,
                      env={"STRANGLER_CONFIG": "other.yaml"})
    assert result.returncode == 0  # -c wins over the environment


def test_missing_file_is_a_clear_message_and_exit_2(tmp_path: Path) -> None:
    result = validate("-c", "nope.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "nope.yaml: no such file\n"
    result = validate(cwd=tmp_path)
    assert result.returncode == 2 and result.stderr == "routes.yaml: no such file\n"


def test_help_exits_0() -> None:
    result = validate("-h", cwd=ROOT)
    assert result.returncode == 0 and "FILE:LINE" in result.stdout
