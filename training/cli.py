"""Registers the training subcommands (`corpus`, `train`) on the `intentd` CLI."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `intentd corpus` and `intentd train`; each parser sets `func(args) -> int`."""
    from intentd_train import arguments, corpus

    corpus.add_parser(subparsers)
    arguments.add_parser(subparsers)
