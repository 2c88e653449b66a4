"""A release's integrity as `sha256sum -c` sees it, and release folders that honour the umask."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest

from pipeline.release import folder as release

FILES = {"manifest.json": b"{}\n", "README.md": b"# card\n", "data/x.bin": b"\x00\x01binary"}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _line(name: str, sep: str = "  ", digest: str | None = None) -> str:
    return f"{digest or _digest(FILES[name])}{sep}{name}"


GOOD = "".join(_line(n) + "\n" for n in sorted(FILES))
# name → SHA256SUMS bytes: every way a checksum file gets damaged or written by other tools
CORRUPTIONS: dict[str, bytes] = {
    "good": GOOD.encode(),
    "vertical_tab": GOOD.replace("\n", "\v", 1).encode(),
    "form_feed": GOOD.replace("\n", "\f", 1).encode(),
    "vertical_tab_everywhere": GOOD.replace("\n", "\v").encode() + b"\n",
    "crlf": GOOD.replace("\n", "\r\n").encode(),
    "double_cr": GOOD.replace("\n", "\r\r\n", 1).encode(),
    "no_final_newline": GOOD.rstrip("\n").encode(),
    "extra_space": GOOD.replace("  ", "   ", 1).encode(),
    "binary_marker": GOOD.replace("  ", " *").encode(),
    "tab_separator": GOOD.replace("  ", "\t").encode(),
    "single_space_all": GOOD.replace("  ", " ").encode(),
    "mixed_binary_then_single_space": (_line("README.md", " *") + "\n" + _line("data/x.bin", " ") + "\n"
                                       + _line("manifest.json") + "\n").encode(),
    "unknown_file": (GOOD + _line("README.md").replace("README.md", "nothere.txt") + "\n").encode(),
    "duplicate_line": (GOOD + _line("README.md") + "\n").encode(),
    "duplicate_with_other_digest": (GOOD + _line("README.md", digest="0" * 64) + "\n").encode(),
    "changed_digest": GOOD.replace(_digest(FILES["README.md"]), "f" * 64).encode(),
    "upper_case_hex": GOOD.upper().replace("DATA/X.BIN", "data/x.bin").replace("MANIFEST.JSON", "manifest.json")
                         .replace("README.MD", "README.md").encode(),
    "leading_blanks": "".join("  " + _line(n) + "\n" for n in sorted(FILES)).encode(),
    "comment_and_empty_lines": ("# checksums\n\n" + GOOD + "\r\n").encode(),
    "blank_line_with_space": (GOOD + " \n").encode(),
    "garbage_line": (GOOD + "garbage\n").encode(),
    "short_digest": GOOD.replace(_digest(FILES["README.md"]), _digest(FILES["README.md"])[:-1]).encode(),
    "escaped_plain_name": ("\\" + GOOD).encode(),
    "escaped_bad_escape": ("\\" + _line("README.md") + "\\x\n").encode(),
    "bsd_tagged": "".join(f"SHA256 ({n}) = {_digest(FILES[n])}\n" for n in sorted(FILES)).encode(),
    "bsd_tagged_no_space": "".join(f"SHA256({n})= {_digest(FILES[n])}\n" for n in sorted(FILES)).encode(),
    "nul_in_line": GOOD.replace("README.md", "README.md\0junk", 1).encode(),
    "not_utf8": GOOD.encode() + b"\xff\xfe  x\n",
    "empty": b"",
    "only_comments": b"# nothing\n",
}


def _sha256sum(folder: Path) -> tuple[bool, dict[str, str]]:
    """GNU sha256sum's verdict (--strict: a malformed line fails too) and its per-file results."""
    result = subprocess.run(["sha256sum", "--strict", "-c", release.SUMS], cwd=folder, capture_output=True)
    per_file = {}
    for line in result.stdout.decode("utf-8", "surrogateescape").split("\n"):
        match = re.match(r"^(.*): (OK|FAILED|FAILED open or read)$", line)
        if match:
            per_file.setdefault(match[1], set()).add(match[2])
    return result.returncode == 0, {k: "/".join(sorted(v)) for k, v in per_file.items()}


def _ours(report: release.VerifyReport) -> dict[str, str]:
    per_file: dict[str, set[str]] = {}
    for name in report.matched:
        per_file.setdefault(name, set()).add("OK")
    for name in report.changed:
        per_file.setdefault(name, set()).add("FAILED")
    for name in report.missing:
        per_file.setdefault(name, set()).add("FAILED open or read")
    return {k: "/".join(sorted(v)) for k, v in per_file.items()}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_verify_reads_sha256sums_exactly_as_sha256sum_c(tmp_path, case):
    folder = tmp_path / "release"
    for name, data in FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    (folder / release.SUMS).write_bytes(CORRUPTIONS[case])
    expected_ok, expected_files = _sha256sum(folder)
    report = release.verify(folder)
    assert report.sums_ok == expected_ok, (case, report)
    assert _ours(report) == expected_files, case
    if not expected_ok:
        assert not report.ok


def test_sums_text_escapes_names_like_sha256sum(tmp_path):
    files = {"plain.txt": b"a", "back\\slash.txt": b"b", "new\nline.txt": b"c"}
    text = release.sums_text(files)
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    made = subprocess.run(["sha256sum", "--", *sorted(files)], cwd=tmp_path, capture_output=True, check=True).stdout
    assert text.encode() == made
    (tmp_path / release.SUMS).write_text(text)
    assert release.verify(tmp_path).ok


@pytest.mark.parametrize("umask, dir_mode, file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_release_folder_honours_the_umask(tmp_path, umask, dir_mode, file_mode):
    spec = release.ReleaseSpec(name="t", version="1.0.0", pretty_name="t", changelog=(), provenance={})
    previous = os.umask(umask)
    try:
        release.write_awaiting(tmp_path / "out", spec)
        release.write_awaiting(tmp_path / "out", spec)  # replacing an existing folder too
    finally:
        os.umask(previous)
    out = tmp_path / "out"
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
    assert modes == {"out": dir_mode, **{f"out/{n}": file_mode for n in (release.MANIFEST, release.CARD, release.SUMS)}}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left behind
