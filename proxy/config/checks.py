"""What the loader and its parts for `notify:` and `overrides:` share: name rules, the BAD marker.

A module of its own so that those parts import it rather than the loader that calls them.
"""

from __future__ import annotations

import re
from typing import Any

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token (methods, header names)
FLAG_RE = re.compile(r"^[A-Za-z0-9_.~-]+$")  # Unleash toggle names are URL-friendly
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Bad:
    """Marks a value that was reported as a problem (and is left out of the spec)."""

    def __repr__(self) -> str:
        return "<bad>"


BAD: Any = _Bad()
