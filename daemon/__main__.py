"""`python -m intentd`: the `intentd` command, for environments without its console script."""

from intentd.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
