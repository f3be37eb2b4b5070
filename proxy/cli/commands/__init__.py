"""One module per `strangler` subcommand, declared rather than built: its docstring is its help
(first line) and description (the rest), `arguments(p)` adds its own arguments, NEEDS_REASON and
USES_ADMIN_API add the shared options, and `run(args) -> int` returns the exit code;
`proxy.cli.main.add_command` builds the parser from that. `_common` holds what they share."""
