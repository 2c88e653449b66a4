"""What a build calls itself: its version against the last released one, what changed, what is left to do."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.params import PackageParams
from pipeline.release import folder as release


@dataclass(frozen=True)
class VersionPlan:
    """What a build calls itself: its version, whether it may be released, what changed and what is left to do."""

    version: str  # params version, or "<next>-dev" while unreleased
    status: str  # release.RELEASABLE | release.UNRELEASED
    changes: Mapping[str, Any]  # diff against the last released version (+ previous_version)
    todo: tuple[str, ...]  # steps that make an unreleased build releasable

    def state(self) -> dict[str, Any]:
        """The manifest's `release` block."""
        return {"status": self.status, "todo": list(self.todo)}


def diff_against(previous: Sequence[Mapping[str, Any]], items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Pairs added and removed, and items whose compared fields changed, since `previous`."""
    return release.diff_fingerprints(release.item_fingerprints(previous), release.item_fingerprints(items))


def plan_version(params: PackageParams, changelog_text: str, last: Mapping[str, Any] | None,
                 items: Sequence[Mapping[str, Any]], excluded: Sequence[str], sums_sha256: str | None = None,
                 ) -> VersionPlan:
    """The version of this build against the last released version `last` (None before the first release).

    A build equal to the last release keeps its version and recorded changes (rebuilding it gives the
    same bytes). `sums_sha256` is the digest of this build's SHA256SUMS under that version: when it
    differs from the released one, the same items come with other bytes (card, metadata), and the
    build is a change ("card/metadata only") that needs a patch version of its own. A build that
    differs is releasable once `package.version` is above the last
    release and CHANGELOG has that version's section naming every changed or removed pair; until
    then it is `<version>-dev`, with the steps left listed. Iterating never fails on versions.
    """
    changelog = "data_cards/CHANGELOG.md"
    version = params.version
    release.check_version(version)
    todo: list[str] = []
    changes: dict[str, Any] = {}
    if last is not None:
        diff = release.diff_fingerprints(last.get("items", {}), release.item_fingerprints(items))
        same_bytes = sums_sha256 is None or sums_sha256 == last.get("sums_sha256", sums_sha256)
        if version == last["version"] and not release.has_changes(diff) and same_bytes:
            return VersionPlan(version, release.RELEASABLE, dict(last.get("changes", {})), ())
        changes = {**diff, "previous_version": last["version"]}
        if not release.has_changes(diff):
            changes["other_changes"] = [release.METADATA_ONLY]
        if release.check_version(version) <= release.check_version(last["version"]):
            version = release.bump(last["version"], "minor" if release.has_changes(diff) else "patch")
            why = "" if release.has_changes(diff) else (
                f": the items equal {last['version']}'s but the release's bytes differ ({release.METADATA_ONLY}), "
                "and a released version never changes")
            todo.append(f"set package.version in params.yaml to {version} (or any version above the released "
                        f"{last['version']}){why}")
    sections = release.parse_changelog(changelog_text)
    section = next((s for s in sections if s.version == version), None)
    touched = release.touched_pairs(changes)
    text = "\n".join(section.lines) if section else ""
    unnamed = [p for p in touched if p not in text]
    if section is None:
        todo.append(f"add a '## {version}' section to {changelog} with a line per change"
                    + (f", naming the changed or removed pairs {touched}" if touched else ""))
    elif unnamed:
        todo.append(f"name the changed or removed pairs {unnamed} in the '## {version}' section of {changelog} "
                    "(e.g. '- corrected the answer of pair <pair_id>')")
    # a takedown stays excluded in later versions: any section up to this one may name it
    earlier = "\n".join(line for s in sections if release.check_version(s.version) <= release.check_version(version)
                        for line in s.lines)
    unnamed_excluded = [p for p in excluded if p not in earlier]
    if unnamed_excluded:
        todo.append(f"name the excluded pairs {unnamed_excluded} (package.exclude) in {changelog}, e.g. "
                    "'- removed pair <pair_id> (takedown request)'")
    if todo:
        return VersionPlan(version + release.DEV_SUFFIX, release.UNRELEASED, changes, tuple(todo))
    return VersionPlan(version, release.RELEASABLE, changes, ())
