"""`python -m intentd`: the `intentd` command, for environments without its console script."""

from intentd.cli import main

raise SystemExit(main())
