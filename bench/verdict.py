"""How every bench/ script ends: a last line naming each missed target or failed side, and the exit code.

A benchmark that prints "NOT met" and exits 0 passes any script or CI job that runs it, so each one
collects its failures as short sentences and returns `finish(failures)` from `main`.
"""

from __future__ import annotations

import sys


def finish(
    failures: list[str], *, json_mode: bool = False, ok: str = "every stated target met, every side ran"
) -> int:
    """Print the verdict as the last line and return the exit code (1 when anything failed)."""
    # With --json, stdout carries JSON only, so the verdict goes to stderr (still the terminal's last line).
    stream = sys.stderr if json_mode else sys.stdout
    sys.stdout.flush()
    if failures:
        print(f"FAILED ({len(failures)}): " + "; ".join(failures), file=stream, flush=True)
        return 1
    print(f"OK: {ok}", file=stream, flush=True)
    return 0


def at_least(name: str, value: float | None, target: float) -> list[str]:
    """A failure when `value` is below `target` (or was not measured)."""
    if value is None:
        return [f"{name} not measured (target >= {target:.2f})"]
    return [] if value >= target else [f"{name} {value:.2f} < target {target:.2f}"]


def at_most(name: str, value: float | None, target: float) -> list[str]:
    """A failure when `value` is above `target` (or was not measured)."""
    if value is None:
        return [f"{name} not measured (target <= {target:.2f})"]
    return [] if value <= target else [f"{name} {value:.2f} > target {target:.2f}"]
