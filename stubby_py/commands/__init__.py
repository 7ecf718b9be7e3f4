"""The command line and what its subcommands do: run, check, bench, explain, stats, imports."""

from stubby_py.commands.lean_imports import defer_package_metadata

defer_package_metadata()  # before anything imports dnspython
