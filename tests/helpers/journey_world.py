"""The journey's world: a temp copy of this repository driven as a user drives it.

* `Workspace`: the copy (tracked and untracked-not-ignored files, `git init`), commands run in it
  through subprocesses with the project's virtualenv on PATH, offline, each one timed.
* `Writer`/`Verifier` sessions: a person in real Chromium, logged in to their role's Label Studio
  server (writers to the writing server, verifiers to the verification server). A writer writes a
  question by hand, reviews a drafted one (keeps it or changes its choices), rejects a pair, or
  fixes a question validation returned, opened from the data manager tab of returned tasks.
* `ScriptedVlm`: an OpenAI-compatible endpoint on 127.0.0.1 whose replies are scripted per
  (question, image sha256), so a test can compute the expected scores (or drafts) by hand.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.conftest import REPO
from tests.helpers.annotation_world import choose, login, open_task, submit, type_text, wait_for_images
from tests.helpers.openai_server import chat_handler

ARTIFACTS = REPO / "artifacts" / "journey"
BIN = Path(sys.executable).parent
LABELSTUDIO_VENV = os.environ.get("CLIPBLIND_LABELSTUDIO_VENV") or str(REPO / ".venv-labelstudio")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def copy_repository(dst: Path, rev: str | None = None) -> None:
    """The files a fresh clone of this working tree has (tracked and untracked-not-ignored ones),
    or of the git revision `rev` when given."""
    if rev:
        archive = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dst)], input=archive, check=True)
        return
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        source = REPO / rel
        if source.is_file() and not source.is_symlink():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dst / rel)


def set_yaml_scalar(text: str, section: str, key: str, value: str) -> str:
    """`text` with `key` of top-level `section` set to `value`, comments and layout kept (a hand edit)."""
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{section}:"))
    for i in range(start + 1, len(lines)):
        if lines[i].strip() and not lines[i][0].isspace():
            break
        found = re.match(rf"^(\s+{re.escape(key)}:\s*)(\S+)(.*)$", lines[i], flags=re.S)
        if found:
            lines[i] = f"{found[1]}{value}{found[3]}"
            return "".join(lines)
    raise KeyError(f"{section}.{key} not found")


@dataclass
class Timings:
    """Wall time per named step, in order."""

    rows: list[tuple[str, float]] = field(default_factory=list)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time the block as step `name`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.rows.append((name, time.perf_counter() - start))

    def table(self) -> str:
        """A markdown table of the steps and their total."""
        width = max([len(n) for n, _ in self.rows] + [5])
        lines = [f"| {'step'.ljust(width)} | wall s |", f"|{'-' * (width + 2)}|-------:|"]
        lines += [f"| {name.ljust(width)} | {seconds:6.1f} |" for name, seconds in self.rows]
        lines.append(f"| {'total'.ljust(width)} | {sum(s for _, s in self.rows):6.1f} |")
        return "\n".join(lines)


class Workspace:
    """A user's checkout in a temp dir: commands, files, commits."""

    def __init__(self, root: Path, timings: Timings) -> None:
        self.root = root
        self.timings = timings
        self.env = {
            **os.environ,
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "DVC_NO_ANALYTICS": "1",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_HOME": str(root.parent / "hf-home"),
            "CLIPBLIND_LABELSTUDIO_VENV": LABELSTUDIO_VENV,
            "GIT_AUTHOR_NAME": "Lead", "GIT_AUTHOR_EMAIL": "lead@example.org",
            "GIT_COMMITTER_NAME": "Lead", "GIT_COMMITTER_EMAIL": "lead@example.org",
        }

    def run(self, step: str, *args: str, ok: bool = True) -> str:
        """Run a command in the checkout as step `step`; assert it succeeds (or fails when ok=False)."""
        with self.timings.step(step):
            result = subprocess.run(list(args), cwd=self.root, env=self.env, capture_output=True, text=True)
        output = result.stdout + result.stderr
        assert (result.returncode == 0) == ok, f"{step}: {' '.join(args)} exited {result.returncode}\n{output}"
        return output

    def clipblind(self, step: str, *args: str, ok: bool = True) -> str:
        """`clipblind <args>` in the checkout."""
        return self.run(step, str(BIN / "clipblind"), *args, ok=ok)

    def dvc(self, step: str, *args: str, ok: bool = True) -> str:
        """`dvc <args>` in the checkout."""
        return self.run(step, str(BIN / "dvc"), *args, ok=ok)

    def git(self, *args: str) -> str:
        """`git <args>` in the checkout (untimed bookkeeping)."""
        result = subprocess.run(["git", *args], cwd=self.root, env=self.env, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def commit(self, message: str) -> None:
        """Commit everything git does not ignore, as the lead does after each step."""
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)

    def path(self, rel: str) -> Path:
        """A path inside the checkout."""
        return self.root / rel

    def json(self, rel: str) -> Any:
        """A JSON file of the checkout."""
        return json.loads(self.path(rel).read_text())

    def edit(self, rel: str, old: str, new: str) -> None:
        """Replace one exact occurrence of `old` in a file, as a person edits it."""
        text = self.path(rel).read_text()
        assert text.count(old) == 1, f"{rel}: {old!r} occurs {text.count(old)} times"
        self.path(rel).write_text(text.replace(old, new))

    def set_param(self, section: str, key: str, value: str) -> None:
        """Set one scalar of params.yaml by a hand edit."""
        self.path("params.yaml").write_text(set_yaml_scalar(self.path("params.yaml").read_text(), section, key, value))


@dataclass(frozen=True)
class Question:
    """What a writer types for one pair: the pattern by the name the labeling config shows."""

    pattern: str
    question: str
    option_a: str
    option_b: str
    answer_a: str
    answer_b: str
    statement_a: str = ""
    statement_b: str = ""

    def texts(self) -> dict[str, str]:
        """The free-text fields, by control name (empty ones left out)."""
        fields = {"question": self.question, "option_a": self.option_a, "option_b": self.option_b,
                  "statement_a": self.statement_a, "statement_b": self.statement_b}
        return {name: text for name, text in fields.items() if text}


class Person:
    """One annotator in a real Chromium page, logged in to Label Studio."""

    def __init__(self, page: Any, url: str, email: str, password: str) -> None:
        self.page, self.url, self.email = page, url, email
        login(page, url, email, password)

    def shot(self, name: str) -> None:
        """Keep a full-page screenshot under artifacts/journey/."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def choice_names(self, panel: str) -> list[str]:
        """The option names a choice control shows, in order."""
        return list(self.page.eval_on_selector_all(f"#{panel} input", "els => els.map(e => e.name)"))


class Writer(Person):
    """Writes one question per pair in the writing project."""

    READY = "#field-question"

    def open(self, project_id: int, task_id: int) -> None:
        open_task(self.page, self.url, project_id, task_id, self.READY)
        wait_for_images(self.page)

    def write(self, project_id: int, task_id: int, q: Question, shot: str | None = None) -> None:
        """Fill the form as a person would and submit it."""
        self.open(project_id, task_id)
        choose(self.page, "field-pattern", q.pattern)
        for name, text in q.texts().items():
            type_text(self.page, name, text)
        choose(self.page, "field-answer-a", q.answer_a)
        choose(self.page, "field-answer-b", q.answer_b)
        if shot:
            self.shot(shot)
        submit(self.page)

    def see_draft(self, draft: Question) -> None:
        """Wait until the open form shows the draft filled in, every field as drafted, before anything is touched."""
        self.page.wait_for_function("t => document.body.innerText.includes(t)", arg=draft.question, timeout=30_000)
        shown = self.page.inner_text("body")
        missing = [text for text in draft.texts().values() if text not in shown]
        assert not missing, f"draft fields not shown: {missing}"
        for panel, name in (("field-pattern", draft.pattern), ("field-answer-a", draft.answer_a),
                            ("field-answer-b", draft.answer_b)):
            assert self.page.locator(f'#{panel} input[name="{name}"]').is_checked(), (panel, name)

    def review(self, project_id: int, task_id: int, draft: Question, q: Question, shot: str | None = None) -> None:
        """Open a drafted task, check the draft is filled in, make its choices those of `q` (texts kept as
        drafted) and submit: `q == draft` submits the draft unchanged."""
        assert q.texts() == draft.texts(), "only the draft's choices are edited here"
        self.open(project_id, task_id)
        self.see_draft(draft)
        choose(self.page, "field-pattern", q.pattern)
        choose(self.page, "field-answer-a", q.answer_a)
        choose(self.page, "field-answer-b", q.answer_b)
        if shot:
            self.shot(shot)
        submit(self.page)

    def fix_returned(self, project_id: int, tab_id: int, tab_title: str, task_id: int, notice: str, answer_b: str,
                     shot: str | None = None) -> None:
        """Open a task from the data manager tab of questions returned by validation, read its notice, set the
        answer for image B and update the annotation."""
        self.page.goto(f"{self.url}/projects/{project_id}/data")
        self.page.get_by_text(tab_title).first.click()
        self.page.wait_for_url(f"**tab={tab_id}**", timeout=30_000)
        self.page.goto(f"{self.url}/projects/{project_id}/data?tab={tab_id}&task={task_id}")
        self.page.wait_for_selector("#field-answer-b", timeout=90_000)
        wait_for_images(self.page)
        self.page.wait_for_function("t => document.body.innerText.includes(t)", arg=notice, timeout=30_000)
        assert self.page.locator("#field-feedback").is_visible()
        if shot:
            self.shot(shot)
        choose(self.page, "field-answer-b", answer_b)
        submit(self.page, "Update", "PATCH")

    def reject(self, project_id: int, task_id: int, reason: str, shot: str | None = None,
               draft: Question | None = None) -> None:
        """Reject the pair instead of writing a question (after seeing its draft, when it has one)."""
        self.open(project_id, task_id)
        if draft:
            self.see_draft(draft)
        choose(self.page, "field-reject", "Reject pair")
        type_text(self.page, "reject_reason", reason)
        if shot:
            self.shot(shot)
        submit(self.page)


class Verifier(Person):
    """Answers someone else's question for each image in the verification project."""

    def answer(self, project_id: int, task_id: int, answer_a: str, answer_b: str, shot: str | None = None) -> str:
        """Answer one verification task; return the question text the page showed."""
        open_task(self.page, self.url, project_id, task_id, "#field-verify-a")
        wait_for_images(self.page)
        shown = str(self.page.inner_text("#field-question"))
        choose(self.page, "field-verify-a", answer_a)
        choose(self.page, "field-verify-b", answer_b)
        if shot:
            self.shot(shot)
        submit(self.page)
        return shown


class ScriptedVlm:
    """An OpenAI-compatible chat-completions endpoint whose replies are looked up, not generated.

    `replies` maps (question as it opens the prompt, `image_key` of the image: by default the sha256 of its
    bytes) to the reply; anything else gets `fallback`. Every request is recorded in `asked`.
    """

    def __init__(self, replies: dict[tuple[str, str], str], fallback: str = "I cannot tell.",
                 image_key: Callable[[bytes], str] = lambda image: hashlib.sha256(image).hexdigest()) -> None:
        self.replies, self.fallback = replies, fallback
        self.asked: list[tuple[str, str]] = []

        def answer(body: dict[str, Any], prompt: str, image: bytes | None) -> str:
            question = prompt.split("\nOptions:", 1)[0]
            digest = image_key(image) if image is not None else ""
            self.asked.append((question, digest))
            return self.replies.get((question, digest), self.fallback)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), chat_handler(answer))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        """Base URL (`.../v1`) for params `evaluate.vlm[].url`."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def pixels_sha256(image: bytes) -> str:
    """The sha256 of an image's decoded RGB pixels: the same for two encodings that differ only in metadata (a display
    copy's JPEG comment and the release's copy of it)."""
    import io

    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(image)) as decoded:
        return hashlib.sha256(np.asarray(decoded.convert("RGB")).tobytes()).hexdigest()
