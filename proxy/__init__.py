"""strangler: a strangler-fig migration proxy (routing, split, admin, CLI)."""

__version__ = "0.1.0"
