"""The command line and what its subcommands do: run, check, bench, explain, stats, imports."""
