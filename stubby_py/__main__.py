"""`python -m stubby_py` runs the command line."""

from stubby_py.commands.cli import main

raise SystemExit(main())
