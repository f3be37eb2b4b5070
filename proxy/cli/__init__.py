"""The `strangler` command: argument parsing (`main`), one module per subcommand in `commands`,
the admin API client, output formatting and exit codes."""
