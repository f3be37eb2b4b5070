"""Why `serve` refuses to start."""


class ServeError(Exception):
    """serve refuses to start (exit 2)."""
