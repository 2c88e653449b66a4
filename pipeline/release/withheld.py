#!/usr/bin/env python3
"""Fetch this release's withheld images (their licences forbid redistributing the bytes).

usage: python fetch_images.py --root SOURCE=PATH_OR_URL [--root ...]

Each image listed in withheld.csv is read from its source (a folder, or an http(s) base URL),
checked against the released sha256 of its source file and kept as withheld/<sha256>. Where the
clipblind package is installed (`pip install clipblind`: no torch needed), each image is also
placed into the MMVP and MMVP-VLM layouts, decoded and encoded exactly as the release's own images.

Needs only the Python standard library. This file is clipblind's `pipeline/release/withheld.py`,
copied byte for byte into every release that withholds images, as fetch_images.py.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import tempfile
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
WITHHELD = "withheld.csv"
WITHHELD_HEADER = ("item_id", "source_sha256", "source", "source_path", "source_license", "targets")
ORIGINALS = "withheld"  # withheld/<sha256 of the source file>: the fetched original bytes
TARGET_SEPARATOR = ";"  # between the release paths of one image in withheld.csv's `targets`
FETCH_TIMEOUT_S = 60


class FetchError(RuntimeError):
    """A withheld image could not be fetched, or its bytes do not match the release."""


def read_rows(release_dir: str | Path) -> list[dict[str, str]]:
    """The rows of a release's withheld.csv."""
    with open(Path(release_dir) / WITHHELD, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def expected_paths(rows: Sequence[Mapping[str, str]]) -> set[str]:
    """Every path fetching may add to a release: each image's targets and its original under withheld/."""
    targets = {t for r in rows for t in (r.get("targets") or "").split(TARGET_SEPARATOR) if t}
    return targets | {f"{ORIGINALS}/{r['source_sha256']}" for r in rows if r.get("source_sha256")}


def read_source(base: str, source_path: str) -> bytes:
    """The bytes of `source_path` under `base`, a folder or an http(s) base URL."""
    if base.startswith(("http://", "https://")):
        with urllib.request.urlopen(base.rstrip("/") + "/" + source_path, timeout=FETCH_TIMEOUT_S) as response:
            return bytes(response.read())
    return (Path(base) / source_path).read_bytes()


def place(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file renamed over it: never a half-written image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch_withheld(
    release_dir: str | Path, roots: Mapping[str, str], encode: Callable[[bytes], bytes] | None = None
) -> dict[str, int]:
    """Fetch withheld images from their sources into the release, checking each sha256; counts by outcome.

    `roots` maps a source name to a folder or an http(s) base URL. Each original is kept as
    withheld/<sha256>; with `encode` (original bytes → released image bytes), the image is also
    placed at its targets in the MMVP layouts. FetchError lists every image not fetched.
    """
    root = Path(release_dir)
    rows = read_rows(root)
    counts: Counter[str] = Counter()
    errors = []
    for row in rows:
        base = roots.get(row["source"])
        if base is None:
            counts["no_root"] += 1
            errors.append(f"{row['item_id']}: no root given for source {row['source']!r} (--root {row['source']}=PATH_OR_URL)")
            continue
        try:
            data = read_source(base, row["source_path"])
        except OSError as err:
            counts["unreadable"] += 1
            errors.append(f"{row['item_id']}: {row['source_path']}: {err}")
            continue
        if hashlib.sha256(data).hexdigest() != row["source_sha256"]:
            counts["sha256_mismatch"] += 1
            errors.append(f"{row['item_id']}: {row['source_path']} has other bytes than the released sha256 {row['source_sha256']} of its source file")
            continue
        place(root / ORIGINALS / row["source_sha256"], data)
        if encode is not None:
            image = encode(data)
            for target in row["targets"].split(TARGET_SEPARATOR):
                place(root / target, image)
        counts["fetched"] += 1
    if errors:
        raise FetchError(f"{len(errors)} of {len(rows)} withheld images not fetched:\n  " + "\n  ".join(errors))
    return dict(counts)


def release_encoder(release_dir: str | Path) -> Callable[[bytes], bytes] | None:
    """The release's own image encoding (from its manifest), or None where the clipblind package is not installed."""
    try:
        from pipeline.release.encoding import encoder_from_record
    except ImportError:
        return None
    manifest: dict[str, Any] = json.loads((Path(release_dir) / MANIFEST).read_text(encoding="utf-8"))
    return encoder_from_record(manifest["provenance"]["image_encoding"])


def main(argv: Sequence[str], release_dir: str | Path) -> int:
    """`fetch_images.py --root SOURCE=PATH_OR_URL`: fetch a release's withheld images into place; 0 when all were."""
    parser = argparse.ArgumentParser(prog="fetch_images.py", description="fetch this release's withheld images")
    parser.add_argument("--root", action="append", default=[], metavar="SOURCE=PATH_OR_URL", required=True)
    args = parser.parse_args(argv)
    roots = {}
    for value in args.root:
        name, sep, where = value.partition("=")
        if not sep:
            parser.error(f"--root {value!r}: write SOURCE=PATH_OR_URL (sources: see {WITHHELD})")
        roots[name] = where
    encode = release_encoder(release_dir)
    try:
        counts = fetch_withheld(release_dir, roots, encode)
    except FetchError as err:
        print(err)
        return 1
    print(f"fetched {counts.get('fetched', 0)} withheld images into {release_dir}")
    if encode is None:
        print(f"the originals are in {ORIGINALS}/; to place them into mmvp/ and mmvp_vlm/ as the release encodes its "
              "images, install clipblind (pip install clipblind) and run this script again")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], Path(__file__).resolve().parent))
