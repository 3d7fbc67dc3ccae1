"""Subcommands of the `stts` CLI, one module each (see `stts.cli`)."""
