"""Load: 10 annotators submit at once to the real writing server, on SQLite and on a real PostgreSQL; pull loses
nothing, duplicates nothing, and gives the same bytes twice.

Each annotator is its own account (made by `add_user`, the lead's command), logs in through the login form
and works as the editor does: it takes its next task from the project's labeling stream
(`GET /api/projects/<id>/next/`, where the server locks the task for it) and submits its annotation
(`POST /api/tasks/<id>/annotations/?project=<id>`) with the session's CSRF token. Bounded: TASKS tasks,
DEADLINE_S seconds for all submissions; everything on 127.0.0.1. The figures (annotations/s, p50/p95
submit latency, errors, tasks the server let two annotators finish) are printed and kept in
artifacts/load/<database>.json; rerun with
`.venv/bin/python -m pytest -s -m load tests/annotation/test_load.py`.

PostgreSQL is Debian's `postgresql` package (tests/helpers/postgres.py): the test skips, saying so, only
when its programs are not installed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import requests
import yaml
from PIL import Image

from annotation import pull, push, snapshot
from annotation.labelstudio import server
from annotation.labelstudio.client import Client
from annotation.labelstudio.roles import POSTGRES_SUFFIX, SERVERS, WRITING
from pipeline.core import patterns, schemas
from pipeline.core.net import LOOPBACK
from pipeline.export import build_tasks
from pipeline.images.display import display_name
from pipeline.params import ExportParams
from tests.conftest import REPO, tiny_params
from tests.helpers import postgres
from tests.helpers.annotation_world import URL_PREFIX, labelstudio_section

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.load]

ANNOTATORS = 10
TASKS = 60
IMAGES = 12  # 66 pairs, TASKS of them pushed
DEADLINE_S = 90.0  # for every submission of every annotator
ARTIFACTS = REPO / "artifacts" / "load"
DATABASE = "clipblind_load"  # PostgreSQL: the writing server's database (the verification server's takes a suffix)
QUANTITY = patterns.by_key("quantity").paper


@pytest.fixture(scope="module")
def load_tasks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """TASKS writing tasks as export makes them, over display images in a display folder."""
    root = tmp_path_factory.mktemp("load")
    display = root / "data" / "display"
    display.mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = []
    for _ in range(IMAGES):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        image_id = hashlib.sha256(buffer.getvalue()).hexdigest()
        (display / display_name(image_id)).write_bytes(buffer.getvalue())
        ids.append(image_id)
    rows = []
    for i, a in enumerate(sorted(ids)):
        for b in sorted(ids)[i + 1:]:
            rows.append({"pair_id": schemas.pair_id(a, b), "image_a": a, "image_b": b, "clip_sim": 0.97, "dino_sim": 0.3})
    pairs = pa.Table.from_pylist(rows, schema=schemas.PAIRS)
    export = ExportParams(**{**tiny_params()["export"], "url_prefix": URL_PREFIX})
    return display, build_tasks(pairs, export, {})[:TASKS]


@pytest.fixture(scope="module")
def postgres_binaries() -> Path:
    found = postgres.binaries()
    if found is None:
        pytest.skip(f"PostgreSQL server programs ({', '.join(postgres.PROGRAMS)}) not installed: {postgres.INSTALL_HINT}")
    return found


@dataclass
class Submission:
    """One annotation an annotator sent, and what the server answered."""

    annotator: str
    task_id: int
    result: list[dict[str, Any]]
    status: int
    seconds: float
    annotation_id: int | None = None


@dataclass
class Annotator:
    """A scripted annotator: its own account and browser-like session."""

    email: str
    password: str
    url: str
    project_id: int
    session: requests.Session = field(default_factory=requests.Session)
    submissions: list[Submission] = field(default_factory=list)
    next_seconds: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def login(self) -> None:
        """Log in through the login form, as a person does."""
        self.session.get(f"{self.url}/user/login/", timeout=60)
        response = self.session.post(
            f"{self.url}/user/login/", timeout=60, headers={"Referer": f"{self.url}/user/login/"},
            data={"email": self.email, "password": self.password, "csrfmiddlewaretoken": self.session.cookies["csrftoken"]},
        )
        response.raise_for_status()
        whoami = self.session.get(f"{self.url}/api/current-user/whoami", timeout=60)
        assert whoami.status_code == 200 and whoami.json()["email"] == self.email, whoami.text[:300]
        self.session.headers.update({"X-CSRFToken": self.session.cookies["csrftoken"], "Referer": self.url})

    def work(self, start: threading.Barrier, deadline: float) -> None:
        """Take tasks from the labeling stream and submit one annotation each until the stream is empty."""
        start.wait()
        while time.monotonic() < deadline:
            began = time.monotonic()
            response = self.session.get(f"{self.url}/api/projects/{self.project_id}/next/", timeout=60)
            self.next_seconds.append(time.monotonic() - began)
            if response.status_code == 404:  # "There are no tasks for <user>": the stream is done for it
                return
            if response.status_code != 200:
                self.errors[f"next HTTP {response.status_code}"] += 1
                continue
            task = response.json()
            self.submit(task["id"], len(self.submissions))

    def submit(self, task_id: int, nth: int) -> None:
        """Submit a question for the task, with the body the editor sends."""
        fields = {"pattern": QUANTITY, "question": f"How many dots does {self.email} count in task {task_id}?",
                  "option_a": f"{nth + 2} dots", "option_b": f"{nth + 3} dots", "answer_a": "(a)", "answer_b": "(b)"}
        result = [{**item, "id": f"{item['from_name'][:6]}{task_id}", "origin": "manual"}
                  for item in push.prediction(fields, "")["result"]]
        body = {"result": result, "lead_time": 3.5 + nth, "was_cancelled": False, "draft_id": 0,
                "parent_prediction": None, "parent_annotation": None, "project": str(self.project_id),
                "started_at": datetime.now(timezone.utc).isoformat()}
        began = time.monotonic()
        try:
            response = self.session.post(f"{self.url}/api/tasks/{task_id}/annotations/", params={"project": self.project_id},
                                         json=body, timeout=60)
        except requests.RequestException as err:
            self.errors[f"submit {type(err).__name__}"] += 1
            self.submissions.append(Submission(self.email, task_id, result, 0, time.monotonic() - began))
            return
        done = Submission(self.email, task_id, result, response.status_code, time.monotonic() - began)
        if response.status_code == 201:
            done.annotation_id = response.json()["id"]
        else:
            self.errors[f"submit HTTP {response.status_code}"] += 1
        self.submissions.append(done)


@pytest.fixture
def writing_server(request: pytest.FixtureRequest, tmp_path: Path, load_tasks: tuple[Path, list[dict[str, Any]]],
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Both role servers on `request.param`'s database (the load goes to the writing one); stopped by PID."""
    database = request.param
    display, tasks = load_tasks
    with _database(database, request, monkeypatch):
        params_file = tmp_path / "params.yaml"
        params = tiny_params()
        params["labelstudio"] = labelstudio_section(tmp_path, database)
        params_file.write_text(yaml.safe_dump(params))
        ls = server.load_params(params_file)
        started = server.start(ls, display)
        try:
            assert all(new for _, new in started.values())
            client = Client.from_params(ls, WRITING)
            project_id = push.push(client, ls, tasks, display)["project_id"]
            yield {"database": database, "ls": ls, "params_file": params_file, "client": client, "project_id": project_id,
                   "tasks": tasks, "root": tmp_path}
        finally:
            stopped = server.stop(ls)
            for role, (pid, _) in started.items():
                assert stopped[role] == pid
                with pytest.raises(ProcessLookupError):
                    os.kill(pid, 0)


@contextmanager
def _database(database: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The database the servers run on: nothing to set up for SQLite; for PostgreSQL a fresh cluster holding
    each server's database, and the POSTGRE_* variables that reach it."""
    if database != "postgresql":
        yield
        return
    names = [DATABASE + POSTGRES_SUFFIX[role] for role in SERVERS]
    with postgres.cluster(names, request.getfixturevalue("postgres_binaries")) as pg:
        for name, value in pg.env(DATABASE).items():
            monkeypatch.setenv(name, value)
        yield


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


@pytest.mark.parametrize("writing_server", ["sqlite", "postgresql"], indirect=True)
def test_ten_annotators_at_once_lose_nothing_and_pull_twice_gives_the_same_bytes(writing_server: dict[str, Any]) -> None:
    ls, client, project_id = writing_server["ls"], writing_server["client"], writing_server["project_id"]
    database, root = writing_server["database"], writing_server["root"]
    url = f"http://{LOOPBACK}:{ls.port}"
    team = []
    for k in range(ANNOTATORS):
        email, password = f"writer{k}@example.org", f"load-pass-{k}-{database}"
        server.add_user(ls, email, password, "writer")
        team.append(Annotator(email, password, url, project_id))
    with ThreadPoolExecutor(ANNOTATORS) as pool:
        list(pool.map(Annotator.login, team))
    start = threading.Barrier(ANNOTATORS)
    began = time.monotonic()
    deadline = began + DEADLINE_S
    with ThreadPoolExecutor(ANNOTATORS) as pool:
        list(pool.map(lambda a: a.work(start, deadline), team))
    wall = time.monotonic() - began
    submissions = [s for a in team for s in a.submissions]
    accepted = [s for s in submissions if s.annotation_id is not None]
    accepted_ids = sorted(s.annotation_id for s in accepted if s.annotation_id is not None)
    errors = sum((a.errors for a in team), Counter[str]())
    latencies = [s.seconds for s in submissions]
    per_task = Counter(s.task_id for s in accepted)
    figures = {
        "database": database, "annotators": ANNOTATORS, "tasks": len(writing_server["tasks"]),
        "submitted": len(submissions), "accepted": len(accepted), "errors": dict(errors), "seconds": round(wall, 2),
        "annotations_per_s": round(len(accepted) / wall, 2),
        "submit_p50_ms": round(1000 * _percentile(latencies, 50), 1),
        "submit_p95_ms": round(1000 * _percentile(latencies, 95), 1),
        "next_p50_ms": round(1000 * _percentile([t for a in team for t in a.next_seconds], 50), 1),
        "next_p95_ms": round(1000 * _percentile([t for a in team for t in a.next_seconds], 95), 1),
        "tasks_over_maximum_annotations": sum(n > 1 for n in per_task.values()),  # maximum_annotations is 1
        "annotations_over_maximum": sum(n - 1 for n in per_task.values() if n > 1),
        "per_annotator": {a.email: len(a.submissions) for a in team},
    }
    # Label Studio's own per-task counter, which push reads to keep annotated tasks: reported, it is the server's
    figures["total_annotations_counter"] = sum(t["total_annotations"] for t in client.tasks(project_id))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{database}.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\n[load] {json.dumps(figures)}")

    assert wall < DEADLINE_S + 60, figures  # bounded: the stream ran dry before the deadline (+ one slow request)
    assert not errors, figures
    assert len(accepted) >= len(writing_server["tasks"]), figures  # every task got done
    assert len({a.email for a in team if a.submissions}) > 1, figures  # the load was shared, not one annotator's
    # what the server holds (its export): every accepted submission, nothing else
    stored = [a for t in client.export(project_id) for a in t["annotations"]]
    assert sorted(a["id"] for a in stored) == accepted_ids, figures
    assert len(per_task) == len(writing_server["tasks"])
    # the stream hands out and locks a task in one transaction (Label Studio's own on PostgreSQL, clipblind's
    # lockdown middleware on SQLite): no task is handed to two annotators
    assert figures["annotations_over_maximum"] == 0, figures

    out, metrics = root / "labels" / "writing.json", root / "metrics" / "pull_writing.json"
    args = ["writing", "--params", str(writing_server["params_file"]), "--out", str(out), "--metrics", str(metrics)]
    assert pull.main(args) == 0
    first = out.read_bytes()
    assert pull.main(args) == 0
    assert out.read_bytes() == first  # pull twice: byte-identical
    snap = snapshot.read_snapshot(out)
    pulled = {a["id"]: (t["task_id"], a) for t in snap["tasks"] for a in t["annotations"]}
    assert len(pulled) == sum(len(t["annotations"]) for t in snap["tasks"])  # no annotation twice in the snapshot
    assert sorted(pulled) == accepted_ids  # nothing lost, nothing extra
    for s in accepted:
        task_id, annotation = pulled[s.annotation_id]
        assert task_id == s.task_id and annotation["annotator"] == s.annotator
        sent = json.dumps(snapshot.kept_result(s.result), sort_keys=True).encode()
        assert json.dumps(annotation["result"], sort_keys=True).encode() == sent  # byte-identical result
    assert json.loads(metrics.read_text())["accepted"] == len(accepted)
