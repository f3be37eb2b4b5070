"""strangler: a strangler-fig migration proxy (routing, split, admin, CLI)."""

from importlib.metadata import PackageNotFoundError, version

try:  # pyproject.toml's `version` is the one source; the installed metadata carries it
    __version__ = version("strangler")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
