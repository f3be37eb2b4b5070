"""tests/durations.txt: how long each test took in a serial run, so that pytest-xdist starts the
longest first (tests/conftest.py): a long test that begins last keeps one worker busy while the
others have nothing left.

    python -m tests.durations JUNIT.xml > tests/durations.txt    (make test-durations)
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

FILE = Path(__file__).with_name("durations.txt")
HEADER = """\
# Seconds per test (setup + call + teardown) in a serial run of the whole suite, the longest
# first; under pytest-xdist tests/conftest.py starts the tests in this order, so the longest do
# not begin last. Only the order matters (a missing or stale line is harmless).
# Refresh: make test-durations.
"""


def known() -> dict[str, float]:
    out: dict[str, float] = {}
    if FILE.exists():
        for line in FILE.read_text().splitlines():
            seconds, _, nodeid = line.partition(" ")
            if nodeid and not line.startswith("#"):
                out[nodeid] = float(seconds)
    return out


def from_junit(path: str, floor: float = 1.0) -> str:
    rows = []
    for case in ET.parse(path).iter("testcase"):
        module = case.get("classname", "").replace(".", "/") + ".py"
        rows.append((float(case.get("time", 0)), f"{module}::{case.get('name')}"))
    rows.sort(key=lambda r: (-r[0], r[1]))
    return HEADER + "".join(f"{s:.1f} {nodeid}\n" for s, nodeid in rows if s >= floor)


if __name__ == "__main__":
    sys.stdout.write(from_junit(sys.argv[1]))
