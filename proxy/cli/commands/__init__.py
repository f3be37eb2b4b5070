"""One module per `strangler` subcommand; each exposes `register(subparsers)` that adds its parser
and sets `func=run`, where `run(args) -> int` returns the exit code. `_common` holds what they
share (`command()` adds the parser, --reason, the admin API options and `func`)."""
