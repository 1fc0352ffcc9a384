"""`locus locate` (being built; see its issue)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_parser(sub: Any, add_model_args: Callable, add_sampling_args: Callable) -> None:
    """Register `locus locate` on the subparsers `sub`."""


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError
