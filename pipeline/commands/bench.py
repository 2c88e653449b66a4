"""bench: `clipblind bench <name> [options]` runs the benchmark module `pipeline.commands.benchmarks.<name>`."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Sequence

from pipeline.commands import benchmarks
from pipeline.core.errors import USAGE_EXIT, report, run_command


def available() -> list[str]:
    """Names of the benchmarks that exist."""
    return sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if not m.name.startswith("_"))


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a benchmark's own `main(argv)`; its errors read `clipblind bench <name>: ...`."""
    args = list(sys.argv[1:] if argv is None else argv)
    names = available()
    if not args or args[0] in ("-h", "--help"):
        print("usage: clipblind bench <name> [options]\n\nbenchmarks: " + (", ".join(names) or "(none yet)"))
        return 0
    if args[0] not in names:
        report("bench", f"unknown benchmark {args[0]!r}; available: {', '.join(names)}")
        return USAGE_EXIT
    return run_command(importlib.import_module(f"pipeline.commands.benchmarks.{args[0]}").main, f"bench {args[0]}", args[1:])


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "bench"))
