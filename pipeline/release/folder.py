"""The release folder: one set of benchmark items written as every layout people load.

A release is a folder, self-contained and checksummed:

    README.md                          dataset card (YAML metadata: configs, features, licence, ...)
    CHANGELOG.md                       every version up to this one
    manifest.json                      version, counts per pattern, provenance, verification, gate
    data/test-00000-of-00001.parquet   Hugging Face layout, images embedded as bytes (configuration `default`)
    <config>/test-00000-of-00001.parquet   each non-empty diagnostics table (`records.CONFIGS`) as its own configuration
    croissant.json                     Croissant 1.0 metadata with its responsible-AI fields (`pipeline.release.croissant`)
    webdataset/test-NNNNNN.tar         the same records, deterministic tar bytes
    mmvp/Questions.csv, mmvp/MMVP Images/<index>.jpg            MMVP's layout
    mmvp_vlm/Questions.csv, mmvp_vlm/MLLM_VLM Images/<Type>/<id>.jpg   MMVP-VLM's layout
    withheld.csv, fetch_images.py      images whose licence forbids redistribution (if any)
    SHA256SUMS                         `sha256sum -c` format, over every other file

An item is one image of a pair with its question; `item_id` = `<pair_id>-<member>` is stable
across versions. `write_release` derives every layout from the items, so `remove` can read a
release back and write the next version without the pipeline's inputs.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import patterns, schemas
from pipeline.core.atomic import write_bytes
from pipeline.core.errors import ClipblindError
from pipeline.diagnostics import records
from pipeline.release import mmvp, withheld
from pipeline.release.withheld import MANIFEST, WITHHELD, WITHHELD_HEADER
from pipeline.vlm import pairs

SPLIT = "test"
PARQUET_PATH = f"data/{SPLIT}-00000-of-00001.parquet"
DEFAULT_CONFIG = "default"  # the items; the diagnostics tables are configurations named as `records.CONFIGS`
CROISSANT = "croissant.json"
WEBDATASET_DIR = "webdataset"
CHANGELOG = "CHANGELOG.md"
CARD = "README.md"
SUMS = "SHA256SUMS"
FETCH_SCRIPT = "fetch_images.py"  # pipeline/release/withheld.py, copied byte for byte
# Fixed tar member metadata: the same items give the same tar bytes on any machine.
TAR_MTIME = 946684800  # 2000-01-01T00:00:00Z
MEMBERS = pairs.MEMBERS  # defined with the pair record
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?$")

# Item fields as the Hugging Face layout declares them (the card's dataset_info is built from this).
FEATURES_SPEC: tuple[tuple[str, str], ...] = (
    ("item_id", "string"),
    ("pair_id", "string"),
    ("member", "string"),  # "a" or "b": which image of the pair
    ("image", "image"),  # null when the licence forbids redistribution (see withheld.csv)
    ("image_sha256", "string"),  # sha256 of the released image bytes (null when withheld)
    ("source_sha256", "string"),  # sha256 of the source file's bytes (the pipeline's image_id)
    ("question", "string"),
    ("options", "list:string"),  # [text of (a), text of (b)]
    ("answer", "string"),  # "(a)" or "(b)": the correct option for this image
    ("options_swapped", "bool"),  # the written options were reversed for answer balance (package.option_order_seed)
    ("pattern", "string"),  # one of MMVP's nine visual patterns, by the paper's name (pipeline.core.patterns)
    ("pattern_key", "string"),  # the same pattern's stable key (`Pattern.key`)
    ("tags", "list:string"),  # secondary patterns, by the paper's names
    ("statement", "string"),  # a statement true of this image (MMVP-VLM), may be null
    ("source", "string"),
    ("source_path", "string"),
    ("source_license", "string"),
    ("redistributed", "bool"),
    ("clip_sim", "float32"),
    ("dino_sim", "float32"),
    ("verification", "string"),  # schemas.VERIFICATIONS
    ("verifier_answers", "list:string"),  # independent verifiers' answers for this image
    ("mmvp_index", "int32"),  # row / file number in the MMVP layout of this version
    ("vlm_question_id", "int32"),  # Question ID in the MMVP-VLM layout, null without statements
    ("gate_flags", "list:string"),  # blind-gate flags kept in this release
)


class ReleaseError(ClipblindError, ValueError):
    """A release cannot be built, read or changed as asked."""


def features() -> Any:
    """The `datasets.Features` of the Hugging Face layout."""
    from datasets import Features, Image, List, Value

    def one(kind: str) -> Any:
        if kind == "image":
            return Image()
        if kind.startswith("list:"):
            return List(Value(kind[5:]))
        return Value(kind)

    return Features({name: one(kind) for name, kind in FEATURES_SPEC})


def check_version(version: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a semantic version string, or ReleaseError."""
    match = SEMVER.match(version)
    if not match:
        raise ReleaseError(f"version {version!r} is not a semantic version (MAJOR.MINOR.PATCH, e.g. 1.0.0)")
    return int(match[1]), int(match[2]), int(match[3])


def bump(version: str, part: str) -> str:
    """The next version after `version`, bumping `part` (major, minor or patch)."""
    major, minor, patch = check_version(version)
    if part == "major":
        return f"{major + 1}.0.0"
    if part == "minor":
        return f"{major}.{minor + 1}.0"
    if part == "patch":
        return f"{major}.{minor}.{patch + 1}"
    raise ReleaseError(f"bump must be major, minor or patch, got {part!r}")


# ---------------------------------------------------------------- changelog


@dataclass(frozen=True)
class ChangelogSection:
    """One version's entry: `## <version>` followed by its lines."""

    version: str
    lines: tuple[str, ...]

    def text(self) -> str:
        """The section as markdown."""
        body = "\n".join(self.lines).strip("\n")
        return f"## {self.version}\n\n{body}\n"


def parse_changelog(text: str) -> list[ChangelogSection]:
    """Sections of a changelog whose version headings read `## <version>` (newest first)."""
    sections: list[ChangelogSection] = []
    version: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("## "):
            if version is not None:
                sections.append(ChangelogSection(version, tuple(lines)))
            version = line[3:].split()[0].lstrip("v") if line[3:].split() else ""
            check_version(version)
            lines = []
        elif version is not None:
            lines.append(line)
    if version is not None:
        sections.append(ChangelogSection(version, tuple(lines)))
    return sections


def changelog_for(text: str, version: str) -> list[ChangelogSection]:
    """The sections up to and including `version`; ReleaseError when `version` has none."""
    sections = parse_changelog(text)
    if not any(s.version == version for s in sections):
        raise ReleaseError(
            f"CHANGELOG has no section for version {version}: add a '## {version}' heading with a line per "
            "change (a new version needs a changelog entry)"
        )
    target = check_version(version)
    return [s for s in sections if check_version(s.version) <= target]


def render_changelog(sections: Sequence[ChangelogSection]) -> str:
    """CHANGELOG.md text for `sections` (newest first)."""
    return "# Changelog\n\n" + "\n".join(s.text() for s in sections)


def sections_up_to(text: str, version: str) -> list[ChangelogSection]:
    """The changelog sections up to and including `version` (its pre-release tag ignored), newest first."""
    target = check_version(version)
    return [s for s in parse_changelog(text) if check_version(s.version) <= target]


# ---------------------------------------------------------------- released versions

# Where a build stands against the last released version (manifest `release.status`).
RELEASABLE = "releasable"  # equal to a released version, or a bumped version whose changelog names every change
UNRELEASED = "unreleased"  # differs from the last released version; `release.todo` says what makes it releasable
RELEASE_STATUSES = (RELEASABLE, UNRELEASED)
DEV_SUFFIX = "-dev"
# The record of released versions: written by `clipblind tag` and `clipblind publish`, committed to git,
# read by `package` (a dep in dvc.yaml), so a fresh clone knows what was released.
RELEASED_RECORD = "data_cards/RELEASED.json"
# How `changes` names a build whose items equal the last release's while its bytes differ (card, metadata):
# it needs a version of its own (a patch bump), as any change of released bytes does.
METADATA_ONLY = "card/metadata only"
# Item fields whose change alters what a score means: each change must be named in the changelog.
COMPARED_FIELDS = ("image_sha256", "source_sha256", "question", "options", "answer", "pattern", "statement")


def item_fingerprints(items: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """item_id → {compared field → short sha256 of its value}: enough to name what changed, small enough to commit."""
    return {
        i["item_id"]: {f: sha256_hex(json.dumps(i.get(f), sort_keys=True).encode())[:16] for f in COMPARED_FIELDS}
        for i in sorted(items, key=lambda i: i["item_id"])
    }


def diff_fingerprints(old: Mapping[str, Mapping[str, str]], new: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    """Pairs added and removed, and items whose compared fields changed (with the field names), from old to new."""
    pair = lambda item_id: item_id.rsplit("-", 1)[0]  # noqa: E731 - item ids are <pair_id>-<member>
    old_pairs, new_pairs = {pair(i) for i in old}, {pair(i) for i in new}
    changed = {i: [f for f in COMPARED_FIELDS if old[i].get(f) != new[i].get(f)] for i in sorted(old.keys() & new.keys())}
    return {
        "added_pairs": sorted(new_pairs - old_pairs),
        "removed_pairs": sorted(old_pairs - new_pairs),
        "changed_items": {k: v for k, v in changed.items() if v},
    }


def touched_pairs(changes: Mapping[str, Any]) -> list[str]:
    """Pairs removed or with a changed item: each must be named by pair id in the changelog."""
    return sorted(set(changes.get("removed_pairs", ())) | {i.rsplit("-", 1)[0] for i in changes.get("changed_items", {})})


def has_changes(changes: Mapping[str, Any]) -> bool:
    """Whether a diff holds any added, removed or changed item."""
    return bool(changes.get("added_pairs") or changes.get("removed_pairs") or changes.get("changed_items"))


def read_released(path: str | Path) -> list[dict[str, Any]]:
    """The released versions recorded at `path`, oldest first ([] when the file is absent)."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
        releases = data["releases"]
    except (ValueError, KeyError, TypeError) as err:
        raise ReleaseError(f"{path} is not a release record ({err}): restore it from git (git checkout -- {path})") from err
    return list(releases)


def last_released(records: Sequence[Mapping[str, Any]], name: str) -> dict[str, Any] | None:
    """The highest released version of artifact `name`, or None before its first release."""
    mine = [dict(r) for r in records if r["name"] == name]
    return max(mine, key=lambda r: check_version(r["version"])) if mine else None


def record_release(path: str | Path, release_dir: str | Path) -> bool:
    """Add a verified release to the record at `path` (atomically); False when it is already there.

    Only the highest version keeps its item fingerprints (what the next build is compared with,
    `last_released`), also when a lower version (a patch of an older line) is recorded after it.
    """
    manifest = read_manifest(release_dir)
    sums = file_sha256(Path(release_dir) / SUMS)
    records = read_released(path)
    for r in records:
        if r["name"] == manifest["name"] and r["version"] == manifest["version"]:
            if r["sums_sha256"] != sums:
                raise ReleaseError(f"{manifest['name']} {manifest['version']} was released with other bytes "
                                   f"(SHA256SUMS sha256 {r['sums_sha256']}): a released version never changes")
            return False
    records.append({"name": manifest["name"], "version": manifest["version"], "sums_sha256": sums,
                    "changes": manifest.get("changes", {}), "items": item_fingerprints(read_items(release_dir))})
    highest = last_released(records, manifest["name"])
    for r in records:
        if r["name"] == manifest["name"] and highest is not None and r["version"] != highest["version"]:
            r.pop("items", None)
    write_bytes(path, (json.dumps({"releases": records}, indent=1, sort_keys=True) + "\n").encode())
    return True


def check_releasable(release_dir: str | Path, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The manifest of a release that may become public now; ReleaseError saying what to do otherwise."""
    report = verify(release_dir)
    if not report.ok:
        raise ReleaseError(f"{release_dir} fails `clipblind verify` ({len(report.changed)} changed, {len(report.missing)} "
                           f"missing, {len(report.extra)} extra, {len(report.malformed)} malformed lines): rebuild it "
                           "with `dvc repro` first")
    if is_awaiting(release_dir):
        raise ReleaseError(f"{release_dir} holds no accepted annotations yet: nothing to release (README: 'Annotate')")
    manifest = read_manifest(release_dir)
    state = manifest.get("release", {})
    if state.get("status") != RELEASABLE:
        todo = state.get("todo") or ["rebuild it with `dvc repro`"]
        raise ReleaseError(
            f"{release_dir} is an unreleased build ({manifest['name']} {manifest['version']}): it differs from the last "
            "released version. To release it: " + "; ".join(todo) + "; then run `dvc repro` and try again"
        )
    last = last_released(records, manifest["name"])
    base = manifest.get("changes", {}).get("previous_version")
    same = last is not None and last["version"] == manifest["version"]
    if not same and (last["version"] if last else None) != base:
        raise ReleaseError(
            f"{release_dir} was built against {'release ' + base if base else 'no earlier release'}, but the record says "
            f"the last release is {last['version'] if last else 'none'}: run `dvc repro` so the build compares with it"
        )
    return manifest


# ---------------------------------------------------------------- writing


@dataclass(frozen=True)
class ReleaseSpec:
    """What a release says about itself beyond its items."""

    name: str
    version: str
    pretty_name: str
    changelog: tuple[ChangelogSection, ...]
    provenance: Mapping[str, Any]  # encoders, thresholds, search, funnel, random_init_encoders
    citation: str = ""
    gate: Mapping[str, Any] | None = None
    changes: Mapping[str, Any] = field(default_factory=dict)  # diff against the last released version
    mmvp_vlm_pairs_per_pattern: int = 0  # 0: every pair with statements in mmvp_vlm/; N: exactly N per pattern
    # {"status": RELEASABLE | UNRELEASED, "todo": [steps]}; a derived version (remove) is releasable as written
    state: Mapping[str, Any] = field(default_factory=lambda: {"status": RELEASABLE, "todo": []})
    answer_balance: Mapping[str, Any] | None = None  # where the first images' answers sit (items.answer_balance)
    # what the diagnostics say (`pipeline.diagnostics.summary.summarise` of the tables shipped, plus
    # `text_bias_threshold`); None: the diagnostics were not run for this release
    diagnostics: Mapping[str, Any] | None = None


def pattern_of(item: Mapping[str, Any]) -> patterns.Pattern:
    """An item's pattern: by its key, or by its name in a release written before items carried the key."""
    try:
        return patterns.lookup(item.get("pattern_key") or item["pattern"])
    except patterns.PatternError as err:
        raise ReleaseError(f"item {item['item_id']}: {err}") from err


def order_items(items: Sequence[dict[str, Any]], vlm_pairs_per_pattern: int = 0) -> list[dict[str, Any]]:
    """Items sorted by (pair_id, member) with their MMVP index and MMVP-VLM id assigned.

    MMVP-VLM ids number the pairs with statements pattern by pattern, in MMVP's script order
    (`pipeline.patterns.PATTERNS`), by pair_id within a pattern: all of them when
    `vlm_pairs_per_pattern` is 0, else exactly that many per pattern (the first by pair_id),
    a ReleaseError when a pattern has fewer.
    """
    ordered = sorted((dict(i) for i in items), key=lambda i: (i["pair_id"], i["member"]))
    by_pair: dict[str, list[dict[str, Any]]] = {}
    for item in ordered:
        by_pair.setdefault(item["pair_id"], []).append(item)
    for pair_id, members in by_pair.items():
        if [m["member"] for m in members] != list(MEMBERS):
            raise ReleaseError(f"pair {pair_id} has members {[m['member'] for m in members]}, expected a and b")
    for position, item in enumerate(ordered):
        item["mmvp_index"] = position + 1
        item["vlm_question_id"] = None
    # MMVP-VLM's script labels pair k with categories[k // 15]: pairs pattern by pattern, in its order
    with_statements: dict[str, list[list[dict[str, Any]]]] = {key: [] for key in patterns.KEYS}
    for _, members in sorted(by_pair.items()):
        if all(m["statement"] for m in members):
            with_statements[pattern_of(members[0]).key].append(members)
    if vlm_pairs_per_pattern:
        short = {key: len(pairs) for key, pairs in with_statements.items() if len(pairs) < vlm_pairs_per_pattern}
        if short:
            raise ReleaseError(
                f"package.mmvp_vlm_pairs_per_pattern is {vlm_pairs_per_pattern} but these patterns have fewer pairs "
                f"with statements: {', '.join(f'{patterns.by_key(k).paper} ({n})' for k, n in short.items())}; annotate "
                "statements for more pairs of them, or set package.mmvp_vlm_pairs_per_pattern: 0 to write every pair "
                "with statements (`clipblind evaluate` scores any count)"
            )
    next_vlm = 1
    for key in patterns.KEYS:
        chosen = with_statements[key][:vlm_pairs_per_pattern] if vlm_pairs_per_pattern else with_statements[key]
        for members in chosen:
            for offset, m in enumerate(members):
                m["vlm_question_id"] = next_vlm + offset
            next_vlm += 2
    return ordered


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def deterministic_tar(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A webdataset tar of (`<key>.<ext>`, bytes) members, sorted by name, with fixed mtime, owner and mode.

    Consecutive members sharing a key are one sample; TarWriter writes a sample's members sorted by
    extension, so the member order is the sorted names' order whatever the keys.
    """
    import webdataset  # imports torch where it is installed: only the commands that write tars pay for it

    buf = io.BytesIO()
    # webdataset 1.0.2 ignores `format` and writes PAX headers, which are USTAR's bytes for the ASCII
    # names of under 100 characters a release holds (item ids); tests/release/test_tar.py checks both
    with webdataset.TarWriter(buf, user="", group="", mode=0o644, mtime=TAR_MTIME, encoder=False, format="ustar") as sink:
        for key, group in itertools.groupby(sorted(members), key=lambda m: _split_member(m[0])[0]):
            sink.write({"__key__": key, **{_split_member(name)[1]: data for name, data in group}})
    return buf.getvalue()


def _split_member(name: str) -> tuple[str, str]:
    """(key, extension) of a webdataset member name: the key ends at the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not (stem and dot and ext):
        raise ReleaseError(f"tar member {name!r} has no <key>.<extension> name, as webdataset needs")
    return (f"{folder}/{stem}" if folder else stem), ext


def record_json(item: Mapping[str, Any]) -> dict[str, Any]:
    """An item's fields without the image bytes (the webdataset `.json` member)."""
    return {k: item[k] for k, _ in FEATURES_SPEC if k != "image"}


def summarise(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts and verification figures of a set of items."""
    pairs = {i["pair_id"]: i for i in items}
    per_pattern = Counter(pattern_of(i).key for i in pairs.values())
    with_statements = len({i["pair_id"] for i in items if i["statement"]} - {i["pair_id"] for i in items if not i["statement"]})
    in_vlm = Counter(pattern_of(i).key for i in pairs.values() if i["vlm_question_id"] is not None)
    verifier_total = sum(len(i["verifier_answers"]) for i in items)
    verifier_right = sum(sum(a == i["answer"] for a in i["verifier_answers"]) for i in items)
    licenses: dict[str, set[str]] = {}
    for i in items:
        licenses.setdefault(i["source"], set()).add(i["source_license"] or "unknown")
    return {
        "pairs": len(pairs),
        "items": len(items),
        "pairs_per_pattern": {key: per_pattern.get(key, 0) for key in patterns.KEYS},  # by pattern key
        "mmvp_vlm_pairs": sum(in_vlm.values()),
        "mmvp_vlm_pairs_per_pattern": {key: in_vlm.get(key, 0) for key in patterns.KEYS},
        "pairs_with_statements": with_statements,
        "pairs_without_statements": len(pairs) - with_statements,
        "images_redistributed": sum(1 for i in items if i["redistributed"]),
        "images_withheld": sum(1 for i in items if not i["redistributed"]),
        "licenses_per_source": {s: sorted(v) for s, v in sorted(licenses.items())},
        "verification": {
            "verifier_answers": verifier_total,
            "verifier_accuracy": round(verifier_right / verifier_total, 4) if verifier_total else None,
            "verified_pairs": sum(1 for i in pairs.values() if i["verification"] == schemas.VERIFIED),
            "adjudicated_pairs": sum(1 for i in pairs.values() if i["verification"] == schemas.ADJUDICATED),
        },
        "gate_flagged_items": sum(1 for i in items if i["gate_flags"]),
    }


# ---------------------------------------------------------------- configurations


def config_path(config: str) -> str:
    """Where a configuration's test split lives in the release: `data/` for the items, `<config>/` for a diagnostics table."""
    return PARQUET_PATH if config == DEFAULT_CONFIG else f"{config}/{SPLIT}-00000-of-00001.parquet"


def check_diagnostics(tables: Mapping[str, pa.Table], items: Sequence[Mapping[str, Any]]) -> None:
    """ReleaseError unless the diagnostics tables are about exactly the items released.

    Every table has its configuration's schema (`records.SCHEMAS`) and names only released items
    and pairs; the per-question audit (`diagnostics`) covers every released item; a released pair
    may be missing from the tables that need images (encoders, models, predictions) only when one
    of its images is withheld (the diagnose stage cannot show it to a model).
    """
    fix = "rerun `dvc repro diagnose` so they are computed on the items this build releases"
    unknown_configs = sorted(set(tables) - set(records.CONFIGS))
    if unknown_configs:
        raise ReleaseError(f"diagnostics tables {unknown_configs} are not release configurations "
                           f"({', '.join(records.CONFIGS)}): remove them, or {fix}")
    item_ids = {i["item_id"] for i in items}
    pair_ids = {i["pair_id"] for i in items}
    without_images = {i["pair_id"] for i in items if i["image"] is None}
    for config, table in tables.items():
        schema = records.SCHEMAS[config]
        if not table.schema.equals(schema, check_metadata=False):
            raise ReleaseError(f"diagnostics table {config!r} does not have the schema of records.SCHEMAS[{config!r}] "
                               f"(columns {table.schema.names}, expected {schema.names}): {fix}")
        ids = set(table.column("item_id").to_pylist()) if "item_id" in schema.names else set()
        named = set(table.column("pair_id").to_pylist())
        stale = sorted((ids - item_ids) | (named - pair_ids))
        if stale:
            raise ReleaseError(f"diagnostics table {config!r} names {len(stale)} item(s) or pair(s) this release does "
                               f"not hold ({', '.join(stale[:5])}{', ...' if len(stale) > 5 else ''}): {fix}")
        if records.CONFIGS[config] is records.TextBias:  # the text audit needs no image: every question has a row
            lacking = {"": sorted(item_ids - ids)}
        else:  # each encoder and each model on every pair it could be shown
            by = "encoder" if "encoder" in schema.names else "model"
            per: dict[str, set[str]] = {}
            for who, pair in zip(table.column(by).to_pylist(), table.column("pair_id").to_pylist()):
                per.setdefault(who, set()).add(pair)
            lacking = {f" ({by} {who})": sorted(pair_ids - got - without_images) for who, got in sorted(per.items())}
        for who, missing in lacking.items():
            if missing:
                raise ReleaseError(f"diagnostics table {config!r}{who} lacks {len(missing)} released item(s) or pair(s) "
                                   f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}): {fix}")


def _config_bytes(config: str, table: pa.Table) -> bytes:
    """The parquet of one diagnostics configuration, with exactly its schema (`records.SCHEMAS`)."""
    typed = pa.Table.from_batches(table.to_batches(), schema=records.SCHEMAS[config])
    sink = io.BytesIO()
    pq.write_table(typed, sink, row_group_size=1000, compression="zstd", write_statistics=False)
    return sink.getvalue()


# ---------------------------------------------------------------- writing a release


def write_release(
    out_dir: str | Path,
    items: Sequence[dict[str, Any]],
    spec: ReleaseSpec,
    render_card: Callable[[Mapping[str, Any], str], str],
    shard_size: int = 1000,
    diagnostics: Mapping[str, pa.Table] | None = None,
    describe: Callable[[Mapping[str, Any], Mapping[str, bytes]], bytes] | None = None,
) -> dict[str, Any]:
    """Write every layout of `items` into `out_dir`, replacing it whole; return the manifest."""
    files, manifest = render_release(items, spec, render_card, shard_size, diagnostics, describe)
    write_files(files, out_dir)
    return manifest


def render_release(
    items: Sequence[dict[str, Any]],
    spec: ReleaseSpec,
    render_card: Callable[[Mapping[str, Any], str], str],
    shard_size: int = 1000,
    diagnostics: Mapping[str, pa.Table] | None = None,
    describe: Callable[[Mapping[str, Any], Mapping[str, bytes]], bytes] | None = None,
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Every file of the release of `items` but SHA256SUMS (relative path → bytes), and its manifest.

    `diagnostics` (configuration → table, checked by `check_diagnostics`) ship as configurations of
    their own, each non-empty one; `describe` (manifest, files → bytes) writes `croissant.json`.
    """
    check_version(spec.version)
    ordered = order_items(items, spec.mmvp_vlm_pairs_per_pattern)
    tables = dict(diagnostics or {})
    check_diagnostics(tables, ordered)
    files: dict[str, bytes] = {}
    files[PARQUET_PATH], arrow_bytes = _parquet_bytes(ordered)
    configs = {DEFAULT_CONFIG: {"path": PARQUET_PATH, "rows": len(ordered)}}
    for config in records.CONFIGS:  # the order the card lists them in
        table = tables.get(config)
        if table is not None and table.num_rows:  # an empty table (no model scored) is no configuration
            files[config_path(config)] = _config_bytes(config, table)
            configs[config] = {"path": config_path(config), "rows": table.num_rows, "num_bytes": table.nbytes}
    files.update(_webdataset_files(ordered, shard_size))
    files.update(_mmvp_files(ordered))
    withheld_items = [i for i in ordered if not i["redistributed"]]
    if withheld_items:
        files[WITHHELD] = _withheld_csv(withheld_items)
        files[FETCH_SCRIPT] = Path(withheld.__file__).read_bytes()
    manifest = {
        "name": spec.name,
        "version": spec.version,
        "pretty_name": spec.pretty_name,
        "split": SPLIT,
        "counts": summarise(ordered),
        "provenance": dict(spec.provenance),
        "gate": dict(spec.gate) if spec.gate is not None else None,
        "changes": dict(spec.changes),
        "release": dict(spec.state),
        "layouts": {
            "huggingface": PARQUET_PATH,
            "webdataset": f"{WEBDATASET_DIR}/{SPLIT}-{{000000..{_shard_count(len(ordered), shard_size) - 1:06d}}}.tar",
            "mmvp": f"{mmvp.MMVP_DIR}/",
            "mmvp_vlm": f"{mmvp.VLM_DIR}/",
            "mmvp_vlm_pairs_per_pattern": spec.mmvp_vlm_pairs_per_pattern,  # 0: every pair with statements
            "webdataset_shard_size": shard_size,
            "huggingface_num_bytes": arrow_bytes,
            "withheld": WITHHELD if withheld_items else None,
            "croissant": CROISSANT if describe is not None else None,
        },
        "configs": configs,
        "answer_balance": dict(spec.answer_balance) if spec.answer_balance is not None else None,
        "diagnostics": dict(spec.diagnostics) if spec.diagnostics is not None else None,
        "citation": spec.citation,
    }
    changelog_text = render_changelog(spec.changelog)
    files[MANIFEST] = (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    files[CHANGELOG] = changelog_text.encode()
    files[CARD] = render_card(manifest, changelog_text).encode()
    if describe is not None:
        files[CROISSANT] = describe(manifest, files)
    return files, manifest


def sums_digest(files: Mapping[str, bytes]) -> str:
    """The sha256 of the SHA256SUMS a release of `files` carries: the digest RELEASED.json records (sums_sha256)."""
    return sha256_hex(sums_text(files).encode())


def write_files(files: Mapping[str, bytes], out_dir: str | Path) -> None:
    """Write a rendered release (`render_release`) with its SHA256SUMS into `out_dir`, replacing it whole."""
    _publish(files, Path(out_dir))


def _publish(files: Mapping[str, bytes], out: Path) -> None:
    """Write `files` and their SHA256SUMS into a staging folder, then swap it in for `out` whole."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # mkdir, not mkdtemp (0700): the release folder gets the permissions the umask gives any output
    staging = out.parent / f".{out.name}.staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        for rel, data in files.items():
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        (staging / SUMS).write_bytes(sums_text(files).encode())
        _swap_in(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


AWAITING = "awaiting_annotations"


def write_awaiting(out_dir: str | Path, spec: ReleaseSpec) -> dict[str, Any]:
    """Write the release folder of a pipeline with no accepted annotations yet: a manifest saying so.

    It holds no data files (a zero-row parquet would not load with `datasets`), so nothing
    can mistake it for a benchmark, while `dvc repro` runs end to end before anyone annotates.
    """
    check_version(spec.version)
    manifest = {
        "name": spec.name,
        "version": spec.version,
        "status": AWAITING,
        "counts": {"pairs": 0, "items": 0, "images_withheld": 0},
        "provenance": dict(spec.provenance),
    }
    files = {
        MANIFEST: (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode(),
        CARD: (
            f"# {spec.pretty_name}: no release yet\n\nNo annotations have been accepted yet. Annotate the "
            "mined pairs, pull the snapshot and rerun `dvc repro` (see the clipblind README, 'Annotate').\n"
        ).encode(),
    }
    _publish(files, Path(out_dir))
    return manifest


def is_awaiting(release_dir: str | Path) -> bool:
    """Whether a release folder is the placeholder written before any annotation was accepted."""
    path = Path(release_dir) / MANIFEST
    return path.exists() and json.loads(path.read_text()).get("status") == AWAITING


def _swap_in(staging: Path, out: Path) -> None:
    """Replace `out` by `staging` so that a reader never sees a half-written release."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old)


def _shard_count(n: int, shard_size: int) -> int:
    return max(1, -(-n // shard_size))


def _parquet_bytes(items: Sequence[Mapping[str, Any]]) -> tuple[bytes, int]:
    """The parquet file of `items` and the in-memory size of its table (the card's num_bytes)."""
    feats = features()
    rows = []
    for item in items:
        row = {k: item[k] for k, _ in FEATURES_SPEC}
        row["image"] = {"bytes": item["image"], "path": f"{item['item_id']}.jpg"} if item["image"] is not None else None
        rows.append(row)
    table = pa.Table.from_pylist(rows, schema=feats.arrow_schema)
    sink = io.BytesIO()
    # Small row groups keep the dataset viewer and streaming readers light on image rows.
    pq.write_table(table, sink, row_group_size=100, compression="zstd", write_statistics=False)
    return sink.getvalue(), table.nbytes


def _webdataset_files(items: Sequence[Mapping[str, Any]], shard_size: int) -> dict[str, bytes]:
    files = {}
    for shard in range(_shard_count(len(items), shard_size)):
        members = []
        for item in items[shard * shard_size : (shard + 1) * shard_size]:
            key = item["item_id"]
            members.append((f"{key}.json", json.dumps(record_json(item), sort_keys=True, ensure_ascii=False).encode()))
            if item["image"] is not None:
                members.append((f"{key}.jpg", item["image"]))
        files[f"{WEBDATASET_DIR}/{SPLIT}-{shard:06d}.tar"] = deterministic_tar(members)
    return files


def _mmvp_files(items: Sequence[Mapping[str, Any]]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    rows, vlm_rows = [], []
    for item in items:
        rows.append(mmvp.MmvpRow(item["mmvp_index"], item["question"], mmvp.options_text(*item["options"]), item["answer"]))
        if item["image"] is not None:
            files[f"{mmvp.MMVP_DIR}/{mmvp.mmvp_image_path(item['mmvp_index'])}"] = item["image"]
        if item["vlm_question_id"] is not None:
            vlm_type = pattern_of(item).vlm_type
            vlm_rows.append(mmvp.VlmRow(item["vlm_question_id"], vlm_type, item["statement"]))
            if item["image"] is not None:
                files[f"{mmvp.VLM_DIR}/{mmvp.vlm_image_path(item['vlm_question_id'], vlm_type)}"] = item["image"]
    files[f"{mmvp.MMVP_DIR}/{mmvp.QUESTIONS}"] = mmvp.mmvp_questions_csv(rows)
    if vlm_rows:
        files[f"{mmvp.VLM_DIR}/{mmvp.QUESTIONS}"] = mmvp.vlm_questions_csv(sorted(vlm_rows, key=lambda r: r.question_id))
    return files


def withheld_targets(item: Mapping[str, Any]) -> list[str]:
    """Where a withheld image belongs in the release once fetched."""
    targets = [f"{mmvp.MMVP_DIR}/{mmvp.mmvp_image_path(item['mmvp_index'])}"]
    if item["vlm_question_id"] is not None:
        targets.append(f"{mmvp.VLM_DIR}/{mmvp.vlm_image_path(item['vlm_question_id'], pattern_of(item).vlm_type)}")
    return targets


def _withheld_csv(items: Sequence[Mapping[str, Any]]) -> bytes:
    import csv

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(WITHHELD_HEADER)
    for i in items:
        writer.writerow([i["item_id"], i["source_sha256"], i["source"], i["source_path"], i["source_license"] or "",
                         withheld.TARGET_SEPARATOR.join(withheld_targets(i))])
    return out.getvalue().encode()


# ---------------------------------------------------------------- reading


def read_items(release_dir: str | Path) -> list[dict[str, Any]]:
    """The items of a release, read back from its Hugging Face parquet (image bytes or None)."""
    path = Path(release_dir) / PARQUET_PATH
    if not path.exists():
        raise ReleaseError(f"{release_dir} is not a release: {PARQUET_PATH} is missing")
    items = pq.read_table(path).to_pylist()
    for item in items:
        item["image"] = item["image"]["bytes"] if item["image"] is not None else None
    return items


def read_diagnostics(release_dir: str | Path) -> dict[str, pa.Table]:
    """The diagnostics configurations a release carries, configuration → table (those it has)."""
    root = Path(release_dir)
    return {c: pq.read_table(root / config_path(c)) for c in records.CONFIGS if (root / config_path(c)).exists()}


def read_manifest(release_dir: str | Path) -> dict[str, Any]:
    """A release's manifest.json."""
    path = Path(release_dir) / MANIFEST
    if not path.exists():
        raise ReleaseError(f"{release_dir} is not a release: {MANIFEST} is missing")
    return json.loads(path.read_text())


# ---------------------------------------------------------------- checksums


def sums_text(files: Mapping[str, bytes]) -> str:
    """SHA256SUMS text for relative path → bytes, sorted by path, byte for byte as `sha256sum` writes it."""
    lines = []
    for path in sorted(files):
        escaped = path.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        prefix = "\\" if escaped != path else ""  # sha256sum marks an escaped name with a leading backslash
        lines.append(f"{prefix}{sha256_hex(files[path])}  {escaped}\n")
    return "".join(lines)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class VerifyReport:
    """What `verify` found: files whose bytes changed, listed files missing, unlisted files present."""

    checked: int
    changed: tuple[str, ...]
    missing: tuple[str, ...]  # listed but not readable (absent, a folder, outside the release)
    extra: tuple[str, ...]
    malformed: tuple[str, ...]  # SHA256SUMS lines that `sha256sum -c` would call improperly formatted
    fetched: tuple[str, ...]  # withheld images fetched into place (expected, not listed)
    matched: tuple[str, ...] = ()  # listed files whose bytes match

    @property
    def sums_ok(self) -> bool:
        """The verdict of `sha256sum --strict -c SHA256SUMS` run inside the release folder."""
        return bool(self.matched) and not (self.changed or self.missing or self.malformed)

    @property
    def ok(self) -> bool:
        """True when every listed file matches and nothing unexpected is present."""
        return self.sums_ok and not self.extra


@dataclass(frozen=True)
class SumsEntry:
    """One well-formed SHA256SUMS line: its number, the expected digest (lower case) and the file name."""

    line: int
    digest: str
    name: bytes


SUMS_DIGEST_HEX = 64
_WHITE = (ord(" "), ord("\t"))
_TAG = b"SHA256"


def parse_sums(data: bytes) -> tuple[list[SumsEntry], list[str]]:
    """Read SHA256SUMS bytes line by line as GNU coreutils' `sha256sum -c` (9.x) does.

    Returns the well-formed entries and one description per improperly formatted line. The
    rules are sha256sum's: lines end at b"\\n" only (a vertical tab or form feed is part of the
    line); one trailing b"\\r" is dropped; empty lines and lines starting with '#' are skipped;
    `<64 hex>  <name>` (text) or `<64 hex> *<name>` (binary), or, decided by the first such line
    and then required of all, `<64 hex> <name>`; a leading backslash marks a name escaped with
    \\\\, \\n and \\r; `SHA256 (<name>) = <64 hex>` is the tagged form. Everything after the
    separator is the name, spaces included.
    """
    entries: list[SumsEntry] = []
    malformed: list[str] = []
    state = {"reversed": -1}  # sha256sum's "bsd reversed" mode: -1 undecided, 0 no, 1 yes
    pieces = data.split(b"\n")
    if pieces and pieces[-1] == b"":
        pieces.pop()  # the text after the last newline: nothing
    for number, line in enumerate(pieces, 1):
        if line.startswith(b"#"):
            continue
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            continue
        parsed = _split_sums_line(line, state)
        if parsed is None:
            malformed.append(f"line {number}: {line[:100]!r}")
            continue
        entries.append(SumsEntry(number, parsed[0].decode("ascii").lower(), parsed[1]))
    return entries, malformed


def _split_sums_line(s: bytes, state: dict[str, int]) -> tuple[bytes, bytes] | None:
    """(hex digest, file name) of one line, or None where sha256sum calls it improperly formatted."""
    i = 0
    while i < len(s) and s[i] in _WHITE:
        i += 1
    escaped = s[i : i + 1] == b"\\"
    i += escaped
    if s[i : i + len(_TAG)] == _TAG:
        i += len(_TAG)
        i += s[i : i + 1] == b" "
        if s[i : i + 1] != b"(":
            return None
        return _split_tagged(s[i + 1 :], escaped)
    # the shortest line: a digest, one blank and a one-character name
    if len(s) - i < SUMS_DIGEST_HEX + 2 + (s[i : i + 1] == b"\\"):
        return None
    digest = s[i : i + SUMS_DIGEST_HEX]
    i += SUMS_DIGEST_HEX
    if not _is_hex(digest) or s[i] not in _WHITE:  # checked before the line may decide the file's form
        return None
    i += 1
    if len(s) - i == 1 or s[i : i + 1] not in (b" ", b"*"):
        if state["reversed"] == 0:  # sha256sum refuses to mix the two forms in one file
            return None
        state["reversed"] = 1
    elif state["reversed"] != 1:
        state["reversed"] = 0
        i += 1
    name = _unescape(s[i:]) if escaped else s[i:].split(b"\0", 1)[0]
    return None if name is None else (digest, name)


def _split_tagged(s: bytes, escaped: bool) -> tuple[bytes, bytes] | None:
    """`<name>) = <digest>` of a tagged line (the name ends at the last ')')."""
    end = s.rfind(b")")
    if end < 0:
        return None
    name = _unescape(s[:end]) if escaped else s[:end].split(b"\0", 1)[0]
    rest = s[end + 1 :].lstrip(b" \t")
    if name is None or not rest.startswith(b"="):
        return None
    digest = rest[1:].lstrip(b" \t")
    return (digest, name) if _is_hex(digest) else None


def _is_hex(digest: bytes) -> bool:
    return len(digest) == SUMS_DIGEST_HEX and all(c in b"0123456789abcdefABCDEF" for c in digest)


_ESCAPES = {ord("\\"): b"\\", ord("n"): b"\n", ord("r"): b"\r"}


def _unescape(name: bytes) -> bytes | None:
    """A name written escaped (\\\\, \\n, \\r), or None for any other escape, a trailing backslash or a NUL."""
    out = bytearray()
    i = 0
    while i < len(name):
        c = name[i]
        if c == 0:
            return None
        if c == ord("\\"):
            if i + 1 == len(name) or name[i + 1] not in _ESCAPES:
                return None
            out += _ESCAPES[name[i + 1]]
            i += 2
            continue
        out.append(c)
        i += 1
    return bytes(out)


def _display(name: bytes) -> str:
    return name.decode("utf-8", "surrogateescape")


def verify(release_dir: str | Path) -> VerifyReport:
    """Recompute every listed file's sha256 and compare with SHA256SUMS, read as `sha256sum -c` reads it."""
    root = Path(release_dir)
    sums_path = root / SUMS
    if not sums_path.exists():
        raise ReleaseError(f"{root} has no {SUMS}: not a release folder, or it was damaged")
    entries, malformed = parse_sums(sums_path.read_bytes())
    if not entries:
        malformed.append("no properly formatted SHA256 checksum lines")
    real_root = root.resolve()
    matched: set[str] = set()
    changed: set[str] = set()
    missing: set[str] = set()
    digests: dict[str, str | None] = {}
    for entry in entries:
        name = _display(entry.name)
        if name not in digests:
            path = root / os.fsdecode(entry.name)
            inside = os.path.realpath(path).startswith(str(real_root) + os.sep)
            try:
                digests[name] = file_sha256(path) if inside else None
            except OSError:
                digests[name] = None
        actual = digests[name]
        (missing if actual is None else matched if actual == entry.digest else changed).add(name)
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {SUMS}
    expected_fetched = _withheld_target_paths(root)
    unlisted = present - set(digests)
    fetched = sorted(unlisted & expected_fetched)
    extra = sorted(unlisted - expected_fetched)
    return VerifyReport(len(digests), tuple(sorted(changed)), tuple(sorted(missing)), tuple(extra), tuple(malformed),
                        tuple(fetched), tuple(sorted(matched)))


def _withheld_target_paths(root: Path) -> set[str]:
    import csv

    if not (root / WITHHELD).exists():
        return set()
    try:
        return withheld.expected_paths(withheld.read_rows(root))
    except (UnicodeDecodeError, csv.Error, KeyError):
        return set()  # a damaged withheld.csv is reported by its own checksum


def write_verify_report(report: VerifyReport, print_line: Callable[[str], None]) -> None:
    """Print a verify report, one line per problem."""
    for label, paths in (("changed", report.changed), ("missing", report.missing), ("extra", report.extra),
                         ("malformed", report.malformed)):
        for p in paths:
            print_line(f"{label}: {p}")
