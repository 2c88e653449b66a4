"""verify: recompute a release folder's SHA256SUMS and report changed, missing and extra files.

Input: a release folder. Output: one line per problem and a summary; exit status 0 when every
listed file matches and nothing unlisted is present, 1 otherwise. Withheld images fetched
into place by `fetch_images.py` are expected and reported as fetched, not as extra.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from pipeline.core.report import summary
from pipeline.release import folder as release

STAGE = "verify"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `clipblind verify <release>`."""
    parser = argparse.ArgumentParser(prog="clipblind verify", description=__doc__.splitlines()[0])
    parser.add_argument("release", help="release folder")
    args = parser.parse_args(argv)
    report = release.verify(args.release)
    release.write_verify_report(report, print)
    state = "OK" if report.ok else "FAILED"
    summary(
        STAGE,
        f"{state}: {report.checked} files listed, {len(report.changed)} changed, {len(report.missing)} missing, "
        f"{len(report.extra)} extra, {len(report.malformed)} malformed lines"
        + (f", {len(report.fetched)} fetched withheld images" if report.fetched else ""),
    )
    return 0 if report.ok else 1


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "verify"))
