"""Release tars: webdataset.TarWriter writes the same bytes the plain tarfile writer wrote."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable

import webdataset

from pipeline.release import folder as release


def tarfile_tar(members: Iterable[tuple[str, bytes]]) -> bytes:
    """The release tar as the standard library writes it: sorted members, fixed mtime, owner and mode, USTAR."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in sorted(members):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = release.TAR_MTIME
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tarwriter_tar(members: Iterable[tuple[str, bytes]]) -> bytes:
    """The same members written sample by sample with webdataset.TarWriter."""
    buf = io.BytesIO()
    with webdataset.TarWriter(buf, user="", group="", mode=0o644, mtime=release.TAR_MTIME, encoder=False,
                              format="ustar") as sink:
        for name, data in sorted(members):
            key, ext = name.split(".", 1)
            sink.write({"__key__": key, ext: data})
    return buf.getvalue()


# release-like members: item ids (<20 hex>-<member>), a JSON record each, an image for most
ITEMS = [f"{k:020x}-{m}" for k in (3, 17, 255) for m in ("a", "b")]
MEMBERS = [(f"{i}.json", b'{"item_id": "%s"}' % i.encode()) for i in ITEMS] + [
    (f"{i}.jpg", bytes(range(256)) * (n + 1)) for n, i in enumerate(ITEMS) if not i.endswith("17-b")
]


def test_tarwriter_writes_the_bytes_of_the_tarfile_writer():
    assert tarwriter_tar(MEMBERS) == tarfile_tar(MEMBERS)


def test_release_tars_keep_their_bytes_for_any_member_order():
    shuffled = MEMBERS[::-1]
    assert release.deterministic_tar(shuffled) == tarfile_tar(MEMBERS)
    # keys where one is a prefix of another sort by full name as before
    awkward = [("ab.json", b"1"), ("ab-c.json", b"2"), ("ab.jpg", b"3"), ("ab-c.jpg", b"4")]
    assert release.deterministic_tar(awkward) == tarfile_tar(awkward)
    assert release.deterministic_tar([]) == tarfile_tar([])
