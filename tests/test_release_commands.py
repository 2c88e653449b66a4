"""publish and tag: the commands that make a built release public and pinned."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

from pipeline import publish, release, tag
from tests.release_world import build_release


@pytest.fixture(scope="module")
def built(sample_corpus, tmp_path_factory):
    return build_release(sample_corpus, tmp_path_factory.mktemp("commands"))


def test_publish_offline_fails_at_once_with_a_clear_message(built, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    start = time.monotonic()
    assert publish.main([str(built), "--repo-id", "org/clipblind"]) == 1
    assert time.monotonic() - start < 5
    out = capsys.readouterr().out
    assert "not reachable" in out and "copy it to a machine with network access" in out


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


def test_tag_creates_the_artifact_tag_once(built, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "init"], check=True)
    subprocess.run(["git", "-C", str(repo), "config", "user.name", "t"], check=True)
    subprocess.run(["git", "-C", str(repo), "config", "user.email", "t@example.invalid"], check=True)
    assert tag.main([str(built), "--repo", str(repo)]) == 0
    shown = subprocess.run(["git", "-C", str(repo), "tag", "-n5", "--list"], capture_output=True, text=True).stdout
    assert shown.startswith("clipblind-test@v1.0.0")
    assert release.file_sha256(built / "SHA256SUMS") in subprocess.run(
        ["git", "-C", str(repo), "cat-file", "-p", "clipblind-test@v1.0.0"], capture_output=True, text=True).stdout
    assert tag.main([str(built), "--repo", str(repo)]) == 1  # never moved


def test_commands_are_registered():
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True)
    for name in ("package", "verify", "remove", "publish", "tag"):
        assert f"  {name} " in result.stdout
