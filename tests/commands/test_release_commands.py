"""publish and tag: the commands that make a built release public and pinned."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from pipeline import cli, package
from pipeline.commands import publish, remove, tag
from pipeline.diagnostics import records
from pipeline.diagnostics.summary import release_account
from pipeline.release import folder as release
from tests.helpers.release_world import (
    DIAG_MODEL,
    DIAG_RIGHT,
    DIAG_SEPARATES,
    PRE_DIAGNOSTICS_COLUMN,
    PRE_DIAGNOSTICS_MANIFEST_KEYS,
    as_release_before_diagnostics,
    build_inputs,
    build_release,
    diagnostics_tables,
    package_args,
    refuse_connections,
    world_pairs,
    write_diagnostics,
)


@pytest.fixture(scope="module")
def built(sample_corpus, tmp_path_factory):
    return build_release(sample_corpus, tmp_path_factory.mktemp("commands"))


def test_publish_offline_fails_at_once_with_a_clear_message(built, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    start = time.monotonic()
    assert cli.main(["publish", str(built), "--repo-id", "org/clipblind"]) == 1
    assert time.monotonic() - start < 5
    err = capsys.readouterr().err  # errors go to stderr, as every command's do
    assert "not reachable" in err and "copy it to a machine with network access" in err


def test_publish_needs_a_token_and_a_verified_release(built, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    with pytest.raises(publish.PublishError, match="set HF_TOKEN"):
        publish.publish(str(built), "org/clipblind")
    damaged = tmp_path / "damaged"
    shutil.copytree(built, damaged)
    (damaged / "manifest.json").write_text("{}")
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    with pytest.raises(publish.PublishError, match="1 changed"):
        publish.publish(str(damaged), "org/clipblind")


def _repo(path):
    """A git repository with one commit and an identity, as a user's checkout has."""
    path.mkdir()
    for args in (["init", "-q"], ["config", "user.name", "t"], ["config", "user.email", "t@example.invalid"],
                 ["commit", "-q", "--allow-empty", "-m", "init"]):
        subprocess.run(["git", "-C", str(path), *args], check=True)
    return path


def _git_out(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def test_tag_creates_the_artifact_tag_once_on_a_commit_that_holds_its_release_record(built, tmp_path):
    repo = _repo(tmp_path / "repo")
    assert tag.main([str(built), "--repo", str(repo)]) == 0
    shown = _git_out(repo, "tag", "-n5", "--list")
    assert shown.startswith("clipblind-test@v1.0.0")
    assert release.file_sha256(built / "SHA256SUMS") in _git_out(repo, "cat-file", "-p", "clipblind-test@v1.0.0")
    # the tagged commit is the release commit: it holds the record naming this version, and nothing else changed
    commit = "clipblind-test@v1.0.0^{commit}"
    assert _git_out(repo, "rev-parse", commit) == _git_out(repo, "rev-parse", "HEAD")
    assert _git_out(repo, "log", "-1", "--format=%s", commit).strip() == "Release clipblind-test@v1.0.0"
    assert _git_out(repo, "show", "--name-only", "--format=", commit).split() == [release.RELEASED_RECORD]
    recorded = json.loads(_git_out(repo, "show", f"{commit}:{release.RELEASED_RECORD}"))
    assert [(r["name"], r["version"]) for r in recorded["releases"]] == [("clipblind-test", "1.0.0")]
    assert _git_out(repo, "status", "--porcelain") == ""  # nothing left for the user to commit
    assert cli.main(["tag", str(built), "--repo", str(repo)]) == 1  # never moved


def test_tag_refuses_staged_changes_and_an_edited_record_and_changes_nothing(built, tmp_path, capsys):
    repo = _repo(tmp_path / "repo")
    record = repo / release.RELEASED_RECORD
    (repo / "notes.txt").write_text("work in progress\n")
    subprocess.run(["git", "-C", str(repo), "add", "notes.txt"], check=True)
    assert cli.main(["tag", str(built), "--repo", str(repo)]) == 1
    err = capsys.readouterr().err
    assert "staged changes (notes.txt)" in err and "git restore --staged" in err
    assert not record.exists() and _git_out(repo, "tag", "--list") == ""
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "-m", "notes"], check=True)
    record.parent.mkdir()
    record.write_text('{"releases": []}\n')
    assert cli.main(["tag", str(built), "--repo", str(repo)]) == 1
    assert f"{release.RELEASED_RECORD} has uncommitted changes" in capsys.readouterr().err
    assert record.read_text() == '{"releases": []}\n' and _git_out(repo, "tag", "--list") == ""
    outside = tmp_path / "RELEASED.json"
    assert cli.main(["tag", str(built), "--repo", str(repo), "--released", str(outside)]) == 1
    assert "outside the git repository" in capsys.readouterr().err and not outside.exists()
    # a failed commit (no identity) leaves the record as it was and tags nothing
    subprocess.run(["git", "-C", str(repo), "add", release.RELEASED_RECORD], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "-m", "empty record"], check=True)
    hooks = repo / ".git" / "hooks"
    (hooks / "pre-commit").write_text("#!/bin/sh\necho refused by hook >&2\nexit 1\n")
    (hooks / "pre-commit").chmod(0o755)
    assert cli.main(["tag", str(built), "--repo", str(repo)]) == 1
    assert "refused by hook" in capsys.readouterr().err
    assert record.read_text() == '{"releases": []}\n' and _git_out(repo, "status", "--porcelain") == ""
    assert _git_out(repo, "tag", "--list") == ""


def test_tag_refuses_uncommitted_inputs_naming_them_and_the_fix(built, tmp_path, capsys):
    repo = _repo(tmp_path / "repo")
    for name in ("params.yaml", "data_cards/CHANGELOG.md", "labels/writing.json"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text("committed\n")
    subprocess.run(["git", "-C", str(repo), "add", "."], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "-m", "inputs"], check=True)
    # a bumped version, its changelog and the pulled labels, not committed: the tag would not rebuild the release
    for name in ("params.yaml", "data_cards/CHANGELOG.md", "labels/writing.json"):
        (repo / name).write_text("bumped\n")
    (repo / "scratch.txt").write_text("untracked files are not the pipeline's\n")
    head = _git_out(repo, "rev-parse", "HEAD")
    assert cli.main(["tag", str(built), "--repo", str(repo)]) == 1
    err = capsys.readouterr().err
    assert "uncommitted changes to tracked files (data_cards/CHANGELOG.md, labels/writing.json, params.yaml)" in err, err
    assert "commit them" in err and "dvc repro" in err and "clipblind tag" in err, err
    assert _git_out(repo, "tag", "--list") == "" and _git_out(repo, "rev-parse", "HEAD") == head
    assert not (repo / release.RELEASED_RECORD).exists()
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "-a", "-m", "1.0.0 inputs"], check=True)
    assert tag.main([str(built), "--repo", str(repo)]) == 0
    assert _git_out(repo, "show", "clipblind-test@v1.0.0:params.yaml") == "bumped\n"


def test_publish_refuses_as_tag_does_and_commits_the_record_as_tag_does(built, tmp_path, monkeypatch):
    import types

    import huggingface_hub

    uploads: list[str] = []

    class Hub:  # the Hub's side of an upload, recorded
        def __init__(self, token: str) -> None:
            pass

        def create_repo(self, *args, **kwargs) -> None:
            pass

        def list_repo_refs(self, *args, **kwargs):
            return types.SimpleNamespace(tags=[])

        def upload_folder(self, **kwargs):
            uploads.append(kwargs["folder_path"])
            return types.SimpleNamespace(oid="0" * 40)

        def create_tag(self, *args, **kwargs) -> None:
            pass

    monkeypatch.setattr(huggingface_hub, "HfApi", Hub)
    monkeypatch.setattr(publish, "hub_reachable", lambda: True)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    repo = _repo(tmp_path / "repo")
    (repo / "params.yaml").write_text("version: 1.0.0\n")
    subprocess.run(["git", "-C", str(repo), "add", "params.yaml"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "-m", "params"], check=True)
    (repo / "params.yaml").write_text("version: 1.0.1\n")
    with pytest.raises(publish.PublishError, match=r"uncommitted changes to tracked files \(params.yaml\)"):
        publish.publish(str(built), "org/clipblind", repo=repo)
    assert uploads == [] and not (repo / release.RELEASED_RECORD).exists()
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "-a", "-m", "params"], check=True)
    assert publish.publish(str(built), "org/clipblind", repo=repo) == "v1.0.0" and uploads == [str(built)]
    assert _git_out(repo, "log", "-1", "--format=%s").strip() == "Release clipblind-test@v1.0.0"
    assert _git_out(repo, "show", "--name-only", "--format=", "HEAD").split() == [release.RELEASED_RECORD]
    assert _git_out(repo, "status", "--porcelain") == ""
    # tag after publish: the record is there already, so the tag goes on that release commit
    assert tag.main([str(built), "--repo", str(repo)]) == 0
    assert _git_out(repo, "rev-parse", "clipblind-test@v1.0.0^{commit}") == _git_out(repo, "rev-parse", "HEAD")


def test_commands_are_registered():
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True)
    for name in ("package", "verify", "remove", "publish", "tag"):
        assert f"  {name} " in result.stdout


def test_status_says_what_makes_an_unreleased_build_releasable(tmp_path):
    from pipeline.commands import status

    (tmp_path / "dvc.yaml").write_text("stages:\n  package:\n    cmd: x\n"
                                       "    outs: [data/release, {metrics/package.json: {cache: false}}]\n"
                                       "    metrics: [{metrics/headline/package.json: {cache: false}}]\n")
    (tmp_path / "metrics/headline").mkdir(parents=True)
    (tmp_path / "data/release").mkdir(parents=True)  # the stage's output is here (status sends a fresh clone to dvc repro)
    step = "set package.version in params.yaml to 1.1.0 (or any version above the released 1.0.0)"
    (tmp_path / "metrics/package.json").write_text(json.dumps({"status": "unreleased", "version": "1.1.0-dev",
                                                               "todo": [step]}))
    (tmp_path / "metrics/headline/package.json").write_text(json.dumps({"status": "unreleased", "version": "1.1.0-dev"}))
    lines = status.report(tmp_path / "dvc.yaml")
    assert "status=unreleased version=1.1.0-dev" in lines[0]
    assert f"1.1.0-dev is unreleased; to release it: {step}" in status.next_steps(tmp_path / "dvc.yaml")


def test_tag_and_publish_refuse_an_unreleased_build_saying_what_to_do(sample_corpus, tmp_path, monkeypatch, capsys):
    from pipeline import package
    from tests.helpers.release_world import build_inputs, package_args

    inputs = build_inputs(sample_corpus, tmp_path / "inputs")
    inputs["params"].write_text(inputs["params"].read_text().replace("version: 1.0.0", "version: 1.1.0"))
    assert package.main(package_args(inputs, tmp_path / "release", tmp_path / "m.json")) == 0
    assert release.read_manifest(tmp_path / "release")["version"] == "1.1.0-dev"
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "-C", str(repo), "init", "-q"], check=True)
    assert cli.main(["tag", str(tmp_path / "release"), "--repo", str(repo)]) == 1
    err = capsys.readouterr().err
    assert "unreleased build (clipblind-test 1.1.0-dev)" in err and "add a '## 1.1.0' section" in err
    assert not (repo / release.RELEASED_RECORD).exists()
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    with pytest.raises(publish.PublishError, match="add a '## 1.1.0' section"):
        publish.publish(str(tmp_path / "release"), "org/clipblind", released=str(tmp_path / "RELEASED.json"))


def test_the_release_record_keeps_each_version_once_and_the_newest_items(built, tmp_path):
    record = tmp_path / "RELEASED.json"
    assert release.record_release(record, built) and not release.record_release(record, built)  # idempotent
    entry = release.last_released(release.read_released(record), "clipblind-test")
    assert entry["version"] == "1.0.0" and entry["sums_sha256"] == release.file_sha256(built / "SHA256SUMS")
    assert sorted(entry["items"]) == sorted(i["item_id"] for i in release.read_items(built))
    assert set(next(iter(entry["items"].values()))) == set(release.COMPARED_FIELDS)
    other = tmp_path / "other"
    shutil.copytree(built, other)
    (other / "SHA256SUMS").write_bytes((other / "SHA256SUMS").read_bytes() + b"# another build\n")
    with pytest.raises(release.ReleaseError, match="released with other bytes"):
        release.record_release(record, other)
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(release.ReleaseError, match="restore it from git"):
        release.read_released(tmp_path / "bad.json")


def test_recording_an_older_line_later_keeps_the_highest_versions_items(built, tmp_path):
    newer = tmp_path / "newer"
    shutil.copytree(built, newer)
    manifest = json.loads((newer / release.MANIFEST).read_text())
    (newer / release.MANIFEST).write_text(json.dumps({**manifest, "version": "1.1.0"}))
    record = tmp_path / "RELEASED.json"
    assert release.record_release(record, newer) and release.record_release(record, built)  # 1.1.0, then 1.0.0
    entries = {r["version"]: r for r in release.read_released(record)}
    assert "items" in entries["1.1.0"] and "items" not in entries["1.0.0"]
    assert release.last_released(list(entries.values()), "clipblind-test")["version"] == "1.1.0"


def test_same_items_with_other_bytes_are_not_the_released_version(sample_corpus, tmp_path, capsys):
    from pipeline import package
    from tests.helpers.release_world import build_inputs, package_args

    inputs = build_inputs(sample_corpus, tmp_path / "inputs")
    out, metrics, record = tmp_path / "release", tmp_path / "m.json", tmp_path / "RELEASED.json"
    build = lambda: package.main(package_args(inputs, out, metrics, "--released", str(record)))  # noqa: E731
    assert build() == 0 and release.record_release(record, out)  # released 1.0.0
    released = (out / release.SUMS).read_bytes()
    assert build() == 0  # an identical rebuild stays the released version, byte for byte
    assert (out / release.SUMS).read_bytes() == released
    assert release.read_manifest(out)["release"]["status"] == release.RELEASABLE
    # a later pull: the same accepted items, but two more questions pending: the card's funnel changes
    accept = json.loads(inputs["accept"].read_text())
    accept["pending"] += 2
    accept["pending_by_reason"]["awaiting_verification"] += 2
    inputs["accept"].write_text(json.dumps(accept))
    capsys.readouterr()
    assert build() == 0
    manifest = release.read_manifest(out)
    assert (manifest["version"], manifest["release"]["status"]) == ("1.0.1-dev", release.UNRELEASED)
    assert manifest["changes"] == {"added_pairs": [], "removed_pairs": [], "changed_items": {},
                                   "other_changes": [release.METADATA_ONLY], "previous_version": "1.0.0"}
    err = capsys.readouterr().err
    assert "set package.version in params.yaml to 1.0.1" in err and release.METADATA_ONLY in err, err
    assert json.loads(metrics.read_text())["pending_changes"]["other_changes"] == 1
    with pytest.raises(release.ReleaseError, match="unreleased build"):
        release.check_releasable(out, release.read_released(record))
    # the patch version with its changelog section is releasable, and says what changed
    inputs["params"].write_text(inputs["params"].read_text().replace("version: 1.0.0", "version: 1.0.1"))
    inputs["changelog"].write_text(inputs["changelog"].read_text().replace(
        "## 1.0.0", "## 1.0.1\n\n- Card: two more questions pending in the funnel.\n\n## 1.0.0"))
    assert build() == 0
    manifest = release.check_releasable(out, release.read_released(record))
    assert manifest["version"] == "1.0.1" and manifest["changes"]["other_changes"] == [release.METADATA_ONLY]


# ---------------------------------------------------------------- remove keeps the diagnostics


@pytest.fixture(scope="module")
def removed(sample_corpus, tmp_path_factory):
    """The world's release packaged with the planted diagnostics, and the version `remove` derives without the first
    pair with both images (P1: the flagged question's pair, the model's only pair right)."""
    root = tmp_path_factory.mktemp("remove_diagnostics")
    inputs = build_inputs(sample_corpus, root / "inputs")
    tables = diagnostics_tables(inputs)
    source = root / "release"
    folder = write_diagnostics(tables, root / "diagnostics")
    assert package.main(package_args(inputs, source, root / "package.json", "--diagnostics", str(folder))) == 0
    pairs = world_pairs(inputs)
    gone = next(p for p in pairs if not p["withheld"])["pair_id"]
    before = (source / release.SUMS).read_bytes()
    out = root / "v1.1.0"
    assert remove.main([str(source), "--ids", gone, "--reason", "takedown request #7", "--out", str(out)]) == 0
    assert (source / release.SUMS).read_bytes() == before  # the source version is left as it was
    return {"inputs": inputs, "tables": tables, "source": source, "out": out, "gone": gone, "root": root,
            "seen": [p for p in pairs if not p["withheld"]]}


def test_remove_keeps_each_diagnostics_config_without_the_removed_pairs_rows(removed, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out, gone = removed["out"], removed["gone"]
    manifest = release.read_manifest(out)
    assert manifest["version"] == "1.1.0" and manifest["changes"]["removed_pairs"] == [gone]
    for config in records.CONFIGS:
        source = removed["tables"][config].to_pylist()
        kept = [r for r in source if r["pair_id"] != gone]
        assert len(kept) < len(source)  # every table held rows about the removed pair (encoders, models too)
        ds = datasets.load_dataset(str(out), name=config, split=release.SPLIT, cache_dir=str(removed["root"] / "hf"))
        assert list(ds) == kept and gone not in ds["pair_id"]
        assert manifest["configs"][config]["rows"] == len(kept)
    items = datasets.load_dataset(str(out), name=release.DEFAULT_CONFIG, split=release.SPLIT,
                                  cache_dir=str(removed["root"] / "hf"))
    assert items.num_rows == 6 and gone not in items["pair_id"]


def test_remove_sums_up_the_kept_rows_in_the_card_and_manifest(removed):
    card = (removed["out"] / release.CARD).read_text()
    section = card.split("## Why models fail: diagnostics", 1)[1].split("## Limitations", 1)[0]
    # P1's first question was the only one flagged: no flag is left
    assert "**0** questions score above the threshold 0.75" in section
    assert records.item_id(removed["gone"], "a") not in section  # the changelog names it, the diagnostics do not
    # the 2x2 per encoder over the kept pairs P2, P3, counted by hand from the planted verdicts and answers
    for encoder, separates in DIAG_SEPARATES.items():
        cells = [records.bucket(s, all(right)) for s, right in zip(separates[1:], DIAG_RIGHT[1:])]
        failed = [c for c in cells if c in (records.HIDDEN_IN_PLAIN_SIGHT, records.ENCODER_BLIND)]
        hidden = round(failed.count(records.HIDDEN_IN_PLAIN_SIGHT) / len(failed), 4)
        blind = round(failed.count(records.ENCODER_BLIND) / len(failed), 4)
        row = f"| `{encoder}` | 2 | " + " | ".join(str(cells.count(b)) for b in records.BUCKETS) + f" | {hidden} | {blind} |"
        assert row in section, row
    assert "| `clip` | 2 | 0 | 1 | 0 | 1 | 0.5 | 0.5 |" in section  # written out: P2 encoder-blind, P3 hidden
    assert "| `dino` | 2 | 0 | 2 | 0 | 0 | 1.0 | 0.0 |" in section
    # the model on P2, P3: 2 of 4 questions right, no pair; (a) with no image: half right, gain 0; of the two
    # wrong answers (P2-b, P3-a) only P3-a's equals its no-image answer (a)
    assert f"### Model `{DIAG_MODEL}`" in section
    assert "**0.5** per\nquestion, **0.0** per pair" in section
    assert "errors (share of wrong answers equal to the model's no-image answer): **0.5**" in section
    assert "Model calls: 8 (2.0 per question)" in section
    for config, rows in (("diagnostics", 6), ("encoders", 4), ("models", 4), ("predictions", 8)):
        assert f"| `{config}` | {rows} |" in section
    # the manifest holds exactly the summary of the tables the new version ships
    manifest = release.read_manifest(removed["out"])
    assert manifest["diagnostics"] == release_account(release.read_diagnostics(removed["out"]), 0.75)
    assert manifest["diagnostics"]["models"][DIAG_MODEL]["accuracy"] == 0.5


def test_remove_counts_the_answer_balance_again_and_keeps_every_kept_pairs_option_order(removed):
    source = {i["item_id"]: i for i in release.read_items(removed["source"])}
    kept = release.read_items(removed["out"])
    for item in kept:  # a removal reorders nothing: options, answers and the swap flag as released
        old = source[item["item_id"]]
        assert (item["options"], item["answer"], item["options_swapped"]) == (old["options"], old["answer"],
                                                                              old["options_swapped"])
    firsts = [i for i in kept if i["member"] == "a"]
    a = sum(i["answer"] == "(a)" for i in firsts)
    swapped = sum(i["options_swapped"] for i in firsts)
    seed = release.read_manifest(removed["source"])["answer_balance"]["seed"]
    assert release.read_manifest(removed["out"])["answer_balance"] == {
        "pairs": 3, "first_answer_a": a, "first_answer_b": 3 - a, "swapped_pairs": swapped, "seed": seed}
    gone_first = source[f"{removed['gone']}-a"]["answer"]
    assert a == 2 - (gone_first == "(a)")  # the source had (a) in 2 of 4 pairs
    card = (removed["out"] / release.CARD).read_text()
    assert f"`(a)` in **{a}** and `(b)` in **{3 - a}** of 3 pairs; {swapped} pairs" in card


def test_remove_writes_a_croissant_json_that_mlcroissant_validates_offline(removed, monkeypatch):
    import mlcroissant as mlc
    import pyarrow.parquet as pq

    out = removed["out"]
    doc = json.loads((out / release.CROISSANT).read_text())
    files = {f["@id"]: f for f in doc["distribution"]}
    for info in release.read_manifest(out)["configs"].values():
        assert files[info["path"]]["sha256"] == release.file_sha256(out / info["path"])
    refuse_connections(monkeypatch)
    ds = mlc.Dataset(jsonld=str(out / release.CROISSANT))  # raises mlcroissant.ValidationError on any error
    assert not ds.metadata.ctx.issues.errors and ds.metadata.version == "1.1.0"
    assert "(a) in " in " ".join(ds.metadata.data_biases) and "of 3 pairs" in " ".join(ds.metadata.data_biases)
    assert "0 questions whose right answer text alone predicts" in " ".join(ds.metadata.data_biases)
    for config in records.CONFIGS:
        got = [r[f"{config}/pair_id"].decode() for r in ds.records(config)]
        assert got == pq.read_table(out / release.config_path(config)).column("pair_id").to_pylist()
        assert removed["gone"] not in got


def test_remove_checksums_cover_the_diagnostics_and_croissant(removed):
    out = removed["out"]
    listed = {line.split("  ", 1)[1] for line in (out / release.SUMS).read_text().splitlines()}
    assert {release.config_path(c) for c in records.CONFIGS} | {release.CROISSANT} <= listed
    assert subprocess.run(["sha256sum", "--quiet", "--strict", "-c", release.SUMS], cwd=out).returncode == 0
    assert release.verify(out).ok
    # and a version derived again from the derived one still holds all of it
    again = removed["root"] / "v1.2.0"
    second = removed["seen"][1]["pair_id"]
    manifest = remove.remove(out, again, [second], "takedown request #8")
    assert manifest["version"] == "1.2.0" and manifest["counts"]["pairs"] == 2
    assert set(manifest["configs"]) == {release.DEFAULT_CONFIG, *records.CONFIGS}
    assert all(second not in t.column("pair_id").to_pylist() for t in release.read_diagnostics(again).values())
    assert subprocess.run(["sha256sum", "--quiet", "--strict", "-c", release.SUMS], cwd=again).returncode == 0


def test_remove_derives_a_version_of_a_release_built_before_the_diagnostics(built, tmp_path, monkeypatch, capsys):
    import datasets
    import mlcroissant as mlc

    old = as_release_before_diagnostics(built, tmp_path / "old")
    assert release.verify(old).ok and not (old / release.CROISSANT).exists()
    assert not PRE_DIAGNOSTICS_MANIFEST_KEYS & release.read_manifest(old).keys()
    items = release.read_items(old)
    assert PRE_DIAGNOSTICS_COLUMN not in items[0]
    gone = items[0]["pair_id"]
    out = tmp_path / "new"
    assert remove.main([str(old), "--ids", gone, "--reason", "takedown request #9", "--out", str(out)]) == 0
    assert "diagnostics kept: none" in capsys.readouterr().out
    manifest = release.read_manifest(out)
    assert manifest["version"] == "1.1.0" and manifest["counts"]["pairs"] == 3
    # what it keeps: no diagnostics, no answer balance (never recorded), options as written
    assert list(manifest["configs"]) == [release.DEFAULT_CONFIG]
    assert manifest["diagnostics"] is None and manifest["answer_balance"] is None
    assert not any((out / c).exists() for c in records.CONFIGS)
    card = (out / release.CARD).read_text()
    assert "The diagnostics were not run for this release" in card
    assert "This release does not record where its answers sit." in card
    before = {i["item_id"]: i for i in items}
    kept = release.read_items(out)
    assert [i["options_swapped"] for i in kept] == [False] * 6
    assert all(i["options"] == before[i["item_id"]]["options"] and i["answer"] == before[i["item_id"]]["answer"]
               for i in kept)
    assert subprocess.run(["sha256sum", "--quiet", "--strict", "-c", release.SUMS], cwd=out).returncode == 0
    assert release.verify(out).ok
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ds = datasets.load_dataset(str(out), split=release.SPLIT, cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 6 and ds["options_swapped"] == [False] * 6
    refuse_connections(monkeypatch)
    assert not mlc.Dataset(jsonld=str(out / release.CROISSANT)).metadata.ctx.issues.errors


def test_remove_with_diagnostics_runs_without_torch_transformers_open_clip_or_faiss(removed, tmp_path):
    import os

    from tests.conftest import REPO
    from tests.release.test_standalone import HEAVY, run_blocked

    out = tmp_path / "v1.1.0"
    argv = [str(removed["source"]), "--ids", removed["gone"], "--reason", "takedown request #7", "--out", str(out)]
    done, imported = run_blocked("run_module", "pipeline.commands.remove", argv, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert not imported & set(HEAVY), imported
    # the same bytes as the version derived with everything installed
    assert (out / release.SUMS).read_bytes() == (removed["out"] / release.SUMS).read_bytes()
