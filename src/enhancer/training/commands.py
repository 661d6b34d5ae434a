"""Registers the model-building subcommands (dataset, train, export, evaluate) on the `enhancer` CLI."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the training subcommands to the `enhancer` command's subparsers."""
