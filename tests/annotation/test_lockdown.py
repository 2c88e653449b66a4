"""Integration: the Label Studio servers nobody can talk their way into (real servers on 127.0.0.1).

One writing and one verification server serve the whole module (started together, cold start
≈ 1-3 min), with tasks from a real pipeline run, a writer's answers on the writing server and a
verifier on the verification server; stopped by their PIDs at the end. What is proved:

* accounts: no invite link, token reset, signup (with the organisation's real invite token) or
  `POST /api/users/` made by a logged-in annotator (session cookie as the browser, and API token)
  creates an account;
* a verifier's API calls (VERIFIER_SWEEP: annotations, tasks, exports in every format, export
  snapshots, data-manager views, projects) on both servers return no writer answer;
* local files: a file symlink, a directory symlink to /etc and `..` tricks in the display folder
  are 404, a display image is 200; only the lead's token connects, changes or syncs a storage;
* the data dirs are private (0700 folders, no file readable by others); the admin secret is 0600
  from its first byte;
* restart right after stop succeeds while the port has connections in TIME-WAIT.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from annotation import push
from annotation import push_verification as verify
from annotation.labelstudio import roles, server
from annotation.labelstudio.client import Client
from pipeline.core import atomic, patterns
from tests.conftest import REPO
from tests.helpers.annotation_world import ARTIFACTS, labelstudio_section, pull_and_validate, run_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.server]

WRITER = ("writer@example.org", "writer-pass-1")
VERIFIER = ("verifier@example.org", "verifier-pass-1")
# Recognisable text only a writer's answers hold: if any of it reaches a verifier, the answers did.
PLANTED = {
    "statement_a": "PLANTED-STATEMENT-A-c41f: two dots lie below the door.",
    "statement_b": "PLANTED-STATEMENT-B-9e07: three dots lie below the door.",
    "reject_reason": "PLANTED-REJECT-REASON-5d2a: nothing nameable differs.",
}
# The writer's answer controls (writing.xml); the verification config has none of these names.
ANSWER_CONTROLS = ("answer_a", "answer_b")
EXPORT_FORMATS = ("JSON", "JSON_MIN", "CSV", "TSV", "CONLL2003", "COCO", "VOC", "YOLO", "YOLO_OBB",
                  "YOLO_WITH_IMAGES", "COCO_WITH_IMAGES", "BRUSH_TO_NUMPY", "BRUSH_TO_PNG", "ASR_MANIFEST",
                  "CSV_OBSOLETE", "README")
IDS = range(1, 9)  # ids tried for tasks, annotations and projects beyond the ones found


def _login(url: str, email: str, password: str) -> requests.Session:
    """A session logged in through the login form, as a browser is."""
    session = requests.Session()
    session.get(f"{url}/user/login/", timeout=30)
    session.post(f"{url}/user/login/", timeout=30,
                 data={"email": email, "password": password, "csrfmiddlewaretoken": session.cookies.get("csrftoken", "")},
                 headers={"Referer": f"{url}/user/login/"})
    return session


def _whoami(session: requests.Session, url: str) -> str | None:
    response = session.get(f"{url}/api/current-user/whoami", timeout=30)
    return response.json().get("email") if response.ok else None


def _send(session: requests.Session, method: str, url: str, **kwargs: Any) -> requests.Response:
    """A request as the editor sends it (the CSRF header from the session's cookie)."""
    headers = {"X-CSRFToken": session.cookies.get("csrftoken", ""), "Referer": url, **kwargs.pop("headers", {})}
    return session.request(method, url, headers=headers, timeout=120, allow_redirects=False, **kwargs)


def _annotate(session: requests.Session, url: str, task_id: int, fields: dict[str, Any]) -> int:
    """Submit an annotation as the editor does; return its id."""
    result = []
    for name, value in fields.items():
        if isinstance(value, list):
            result.append({"from_name": name, "to_name": "image_a", "type": "choices", "value": {"choices": value}})
        else:
            result.append({"from_name": name, "to_name": "image_a", "type": "textarea", "value": {"text": [value]}})
    response = _send(session, "POST", f"{url}/api/tasks/{task_id}/annotations/", json={"result": result, "lead_time": 9.0})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def _token(session: requests.Session, url: str) -> str | None:
    """The annotator's API token, if the server hands one out."""
    response = session.get(f"{url}/api/current-user/token", timeout=30)
    return response.json().get("token") if response.ok else None


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path) -> Iterator[dict[str, Any]]:
    """Both servers, the writer's answers on the writing server, the questions on the verification server."""
    root = tmp_path_factory.mktemp("lockdown")
    params_file, tasks = run_pipeline(sample_corpus, root)
    params = yaml.safe_load(params_file.read_text())
    params["labelstudio"] = labelstudio_section(root)
    params.update(validate={"options_ignore_case": True}, accept={"verifiers": 1})
    params_file.write_text(yaml.safe_dump(params))
    ls = server.load_params(params_file)
    display = root / "data" / "display"
    started = server.start(ls, display)
    assert all(new for _, new in started.values())
    writing, verification = roles.server(ls, roles.WRITING), roles.server(ls, roles.VERIFICATION)
    try:
        lead = {roles.WRITING: Client.from_params(ls, roles.WRITING),
                roles.VERIFICATION: Client.from_params(ls, roles.VERIFICATION)}
        project_id = push.push(lead[roles.WRITING], ls, tasks, display)["project_id"]
        assert server.main(["--params", str(params_file), "add-user", WRITER[0], "--role", "writer",
                            "--password", WRITER[1]]) == 0
        assert server.main(["--params", str(params_file), "add-user", VERIFIER[0], "--role", "verifier",
                            "--password", VERIFIER[1]]) == 0
        writer = _login(writing.url, *WRITER)
        assert _whoami(writer, writing.url) == WRITER[0]
        remote = {t["data"]["pair_id"]: t["id"] for t in lead[roles.WRITING].tasks(project_id)}
        pairs = [t["data"]["pair_id"] for t in tasks]
        quantity = patterns.by_key("quantity").paper
        for pair in pairs[:2]:
            _annotate(writer, writing.url, remote[pair], {
                "pattern": [quantity], "question": f"How many dots are below the door ({pair[:6]})?",
                "option_a": "Two", "option_b": "Three", "answer_a": ["(a)"], "answer_b": ["(b)"],
                "statement_a": PLANTED["statement_a"], "statement_b": PLANTED["statement_b"]})
        _annotate(writer, writing.url, remote[pairs[2]], {"reject": ["Reject pair"], "reject_reason": PLANTED["reject_reason"]})

        data, metrics = root / "data", root / "metrics"
        pull_and_validate(root, params_file)
        assert verify.main(["--params", str(params_file), "--annotations", str(data / "annotations.parquet"),
                            "--display", str(display), "--metrics", str(metrics / "verify.json")]) == 0
        verification_project = lead[roles.VERIFICATION].project_by_title(ls.verification_project)
        assert verification_project is not None
        questions = lead[roles.VERIFICATION].tasks(verification_project["id"])
        assert len(questions) == 2
        verifier = _login(verification.url, *VERIFIER)
        assert _whoami(verifier, verification.url) == VERIFIER[0]
        _annotate(verifier, verification.url, questions[0]["id"], {"verify_a": ["(a)"], "verify_b": ["(b)"]})
        yield {"root": root, "params_file": params_file, "ls": ls, "tasks": tasks, "display": display,
               "lead": lead, "writer": writer, "verifier": verifier, "questions": questions,
               "writing_project": project_id, "verification_project": verification_project["id"]}
    finally:
        stopped = server.stop(ls)
        for pid in filter(None, stopped.values()):
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


# ------------------------------------------------------------------------------------------- accounts


def _organisation_token(ls: Any, role: roles.Role) -> str:
    """The invite token Label Studio keeps for the organisation (read from its SQLite database)."""
    with sqlite3.connect(roles.server(ls, role).data_dir / "label_studio.sqlite3") as db:
        token = db.execute("SELECT token FROM organization ORDER BY id LIMIT 1").fetchone()[0]
    return str(token)


def _account_attempts(session: requests.Session, url: str, invite_token: str) -> list[tuple[str, requests.Response]]:
    """Every way Label Studio offers to make an account, tried by one logged-in annotator."""
    newcomer = {"email": "second-identity@example.org", "password": "second-pass-1"}
    form = {**newcomer, "csrfmiddlewaretoken": session.cookies.get("csrftoken", "")}
    anonymous = requests.Session()
    anonymous.get(f"{url}/user/login/", timeout=30)
    anonymous_form = {**newcomer, "csrfmiddlewaretoken": anonymous.cookies.get("csrftoken", "")}
    return [
        ("GET /api/invite", _send(session, "GET", f"{url}/api/invite")),
        ("POST /api/invite/reset-token", _send(session, "POST", f"{url}/api/invite/reset-token")),
        ("GET /user/signup/?token=", _send(session, "GET", f"{url}/user/signup/?token={invite_token}")),
        ("POST /user/signup/?token= (logged in)", _send(session, "POST", f"{url}/user/signup/?token={invite_token}", data=form)),
        ("POST /user/signup/?token= (logged out)",
         _send(anonymous, "POST", f"{url}/user/signup/?token={invite_token}", data=anonymous_form)),
        ("POST /user/signup/", _send(anonymous, "POST", f"{url}/user/signup/", data=anonymous_form)),
        ("POST /api/users/", _send(session, "POST", f"{url}/api/users/", json=newcomer)),
        ("POST /api/users", _send(session, "POST", f"{url}/api/users", json=newcomer)),
        ("POST /api/users.json", _send(session, "POST", f"{url}/api/users.json", json=newcomer)),
        ("GET /admin/", _send(session, "GET", f"{url}/admin/")),
    ]


@pytest.mark.parametrize("role,person", [(roles.WRITING, "writer"), (roles.VERIFICATION, "verifier")])
def test_no_annotator_call_creates_an_account(world: dict[str, Any], role: roles.Role, person: str) -> None:
    ls, lead = world["ls"], world["lead"][role]
    url = roles.server(ls, role).url
    users_before = lead.users()
    invite_token = _organisation_token(ls, role)
    session = world[person]
    token = _token(session, url)
    tried = _account_attempts(session, url, invite_token)
    if token:  # the same calls with the annotator's API token instead of the browser session
        by_token = requests.Session()
        by_token.headers["Authorization"] = f"Token {token}"
        tried += [(f"{name} (API token)", response) for name, response in _account_attempts(by_token, url, invite_token)]
    for name, response in tried:
        assert response.status_code in (401, 403, 404), (name, response.status_code, response.text[:300])
        assert invite_token not in response.text, name
        assert "token=" not in response.text, name  # no invite link handed out
    assert lead.users() == users_before
    with sqlite3.connect(roles.server(ls, role).data_dir / "label_studio.sqlite3") as db:
        emails = {row[0] for row in db.execute("SELECT email FROM htx_user")}
    assert "second-identity@example.org" not in emails
    assert emails == set(users_before.values())
    assert _organisation_token(ls, role) == invite_token  # the reset was refused, not done


def test_each_account_lives_on_its_roles_server_only(world: dict[str, Any]) -> None:
    ls = world["ls"]
    writing, verification = roles.server(ls, roles.WRITING), roles.server(ls, roles.VERIFICATION)
    assert _whoami(_login(verification.url, *WRITER), verification.url) is None
    assert _whoami(_login(writing.url, *VERIFIER), writing.url) is None
    assert WRITER[0] in world["lead"][roles.WRITING].users().values()
    assert WRITER[0] not in world["lead"][roles.VERIFICATION].users().values()
    assert VERIFIER[0] in world["lead"][roles.VERIFICATION].users().values()
    assert VERIFIER[0] not in world["lead"][roles.WRITING].users().values()
    with pytest.raises(server.ServerError, match="writer, verifier"):
        server.add_user(ls, "someone@example.org", None, "lead")


# ------------------------------------------------------------------------------- a verifier's reach

# Every call of the sweep, by path template: {p} a project id, {t} a task id, {a} an annotation id,
# {f} an export format, {e} an export snapshot id, {v} a data-manager view id.
VERIFIER_SWEEP = (
    "GET /api/projects/",
    "GET /api/projects/{p}/",
    "GET /api/projects/{p}/tasks/",
    "GET /api/projects/{p}/tasks/?fields=all",
    "GET /api/tasks?project={p}",
    "GET /api/tasks/?project={p}&fields=all",
    "GET /api/tasks/{t}/",
    "GET /api/tasks/{t}/?fields=all",
    "GET /api/tasks/{t}/annotations/",
    "GET /api/annotations/{a}/",
    "GET /api/projects/{p}/export?exportType={f}",
    "GET /api/projects/{p}/export?exportType={f}&download_all_tasks=true",
    "GET /api/projects/{p}/export/formats",
    "POST /api/projects/{p}/exports/",
    "GET /api/projects/{p}/exports/",
    "GET /api/projects/{p}/exports/{e}",
    "GET /api/projects/{p}/exports/{e}/download?exportType={f}",
    "GET /api/dm/views/?project={p}",
    "POST /api/dm/views/",
    "GET /api/dm/actions?project={p}",
    "GET /api/dm/tasks?view={v}",
    "GET /api/tasks?view={v}&fields=all",
    "GET /api/dm/views/{v}/",
)


def _leaks(body: str) -> list[str]:
    """What of a writer's answers a response body holds: planted statements and reason, answer controls, the writer."""
    found = [text for text in PLANTED.values() if text in body]
    found += [name for name in ANSWER_CONTROLS if name in body]
    found += [WRITER[0]] if WRITER[0] in body else []
    return found


def _sweep(session: requests.Session, url: str, extra_ids: set[int]) -> list[tuple[str, int, list[str]]]:
    """Call every endpoint of VERIFIER_SWEEP for projects 1-2, tasks and annotations IDS + `extra_ids`, every
    export format, the snapshots and views the sweep made (and ids 1-2); return (call, status, leaks) for each."""
    ids = sorted(set(IDS) | extra_ids)
    calls: list[tuple[str, int, list[str]]] = []
    made: dict[str, set[int]] = {"e": {1, 2}, "v": {1, 2}}

    def call(method: str, path: str, **kwargs: Any) -> requests.Response:
        response = _send(session, method, f"{url}{path}", **kwargs)
        calls.append((f"{method} {path}", response.status_code, _leaks(response.text)))
        return response

    def keep(kind: str, response: requests.Response) -> None:
        body = response.json() if response.ok and response.content else None
        if isinstance(body, dict) and "id" in body:
            made[kind].add(int(body["id"]))

    for template in VERIFIER_SWEEP:
        method, path = template.split(" ", 1)
        if template == "POST /api/dm/views/":
            for p in (1, 2):
                keep("v", call(method, path, json={"project": p, "data": {}}))
        elif template == "POST /api/projects/{p}/exports/":
            for p in (1, 2):
                keep("e", call(method, path.format(p=p), json={}))
        elif "{t}" in path:
            for i in ids:
                call(method, path.format(t=i))
        elif "{a}" in path:
            for i in ids:
                call(method, path.format(a=i))
        elif "{v}" in path:
            for v in sorted(made["v"]):
                call(method, path.format(v=v))
        elif "{e}" in path:
            for p in (1, 2):
                for e in sorted(made["e"]):
                    for f in (("JSON", "JSON_MIN", "CSV", "TSV") if "{f}" in path else ("",)):
                        call(method, path.format(p=p, e=e, f=f))
        elif "{f}" in path:
            for p in (1, 2):
                for f in EXPORT_FORMATS:
                    call(method, path.format(p=p, f=f))
        elif "{p}" in path:
            for p in (1, 2):
                call(method, path.format(p=p))
        else:
            call(method, path)
    return calls


def _question_annotation_ids(questions: list[dict[str, Any]]) -> set[int]:
    """The writers' annotation ids a verification task's question_id carries (`<pair_id>-<annotation id>`)."""
    return {int(q["data"]["question_id"].rsplit("-", 1)[1]) for q in questions}


def test_a_verifier_reaches_no_writer_answer_on_either_server(world: dict[str, Any]) -> None:
    ls, verifier = world["ls"], world["verifier"]
    writing, verification = roles.server(ls, roles.WRITING), roles.server(ls, roles.VERIFICATION)
    found_ids = _question_annotation_ids(world["questions"])
    assert found_ids, "the verification tasks name the writer's annotations"
    # the detector finds the answers where they are: the lead's export of the writing project
    lead_export = json.dumps(world["lead"][roles.WRITING].export(world["writing_project"]))
    assert set(PLANTED.values()) | set(ANSWER_CONTROLS) <= set(_leaks(lead_export))

    on_verification = _sweep(verifier, verification.url, found_ids)
    token = _token(verifier, verification.url)
    by_token = requests.Session()
    by_token.headers["Authorization"] = f"Token {token}"
    assert token, "an annotator can get an API token: the sweep is made with it too"
    on_verification += _sweep(by_token, verification.url, found_ids)
    # on the writing server the verifier has no account: the session cookie (under either server's
    # cookie name), the token and a login with the verifier's password are all tried there
    replayed = requests.Session()
    for cookie in verifier.cookies:
        replayed.cookies.set(cookie.name, cookie.value)
        replayed.cookies.set(cookie.name.replace(roles.VERIFICATION, roles.WRITING), cookie.value)
    on_writing = (_sweep(replayed, writing.url, found_ids) + _sweep(by_token, writing.url, found_ids)
                  + _sweep(_login(writing.url, *VERIFIER), writing.url, found_ids))

    ARTIFACTS.mkdir(parents=True, exist_ok=True)  # every call and its status, for the record
    (ARTIFACTS / "verifier_sweep.json").write_text(json.dumps(
        {"endpoints": VERIFIER_SWEEP, "verification_server": [c[:2] for c in on_verification],
         "writing_server": [c[:2] for c in on_writing]}, indent=1) + "\n")
    leaked = [(call, status, what) for call, status, what in on_verification + on_writing if what]
    assert leaked == []
    assert [(c, s) for c, s, _ in on_writing if 200 <= s < 300] == []  # nothing answered there at all
    answered = {call for call, status, _ in on_verification if status == 200}
    # the sweep reached the verification project: tasks, exports, snapshots and views answered
    for reached in ("GET /api/projects/", "GET /api/tasks/1/", "GET /api/projects/1/export?exportType=CSV",
                    "GET /api/projects/1/exports/", "GET /api/dm/views/?project=1"):
        assert reached in answered, reached
    assert len(on_verification) + len(on_writing) > 300


# ------------------------------------------------------------------------------------------ local files


def test_only_regular_files_directly_in_the_display_folder_are_served(world: dict[str, Any]) -> None:
    ls, display, root = world["ls"], world["display"], world["root"]
    image = world["tasks"][0]["data"]["image_a"].split("d=", 1)[1]
    (display / "passwd-link.jpg").symlink_to("/etc/passwd")
    (display / "tasks-link.jpg").symlink_to(display.parent / "tasks.json")
    (display / "etc").symlink_to("/etc", target_is_directory=True)
    (display / "nested").mkdir()
    (display / "nested" / "inner.jpg").write_bytes((display.parent / image).read_bytes())
    outside = ("display/passwd-link.jpg", "display/tasks-link.jpg", "display/etc/passwd", "display/etc/hostname",
               "display/../tasks.json", "display/./../tasks.json", "display//../tasks.json", "tasks.json",
               "../params.yaml", "display/../../params.yaml", "/etc/passwd", "display/%2e%2e/tasks.json",
               "display/nested/inner.jpg", "display", "display/", "")
    for role, person in ((roles.WRITING, world["writer"]), (roles.VERIFICATION, world["verifier"])):
        url = roles.server(ls, role).url
        served = person.get(f"{url}/data/local-files/", params={"d": image}, timeout=30)
        assert served.status_code == 200 and served.content == (display.parent / image).read_bytes()
        for rel in outside:
            for prefix in ("/data/local-files/", "/x/data/local-files/"):
                response = person.get(f"{url}{prefix}", params={"d": rel}, timeout=30)
                assert response.status_code == 404, (role, prefix, rel, response.status_code)
                assert "root:" not in response.text
    assert (root / "data" / "tasks.json").exists()


def test_only_the_lead_connects_or_syncs_a_storage(world: dict[str, Any]) -> None:
    """An annotator's own storage could import any JSON or Parquet file under data/ as tasks (the writers'
    answers among them) or export into it: storages are the lead's, through `push`."""
    ls, root = world["ls"], world["root"]
    (root / "data" / "answers").mkdir()
    (root / "data" / "answers" / "writer.json").write_text(json.dumps([{"data": {"leak": PLANTED["statement_a"]}}]))
    for role, person in ((roles.WRITING, world["writer"]), (roles.VERIFICATION, world["verifier"])):
        url, lead = roles.server(ls, role).url, world["lead"][role]
        project = 1
        before = lead.local_storages(project)
        assert len(before) == 1  # the display folder, connected by push as the lead
        token = _token(person, url)
        by_token = requests.Session()
        by_token.headers["Authorization"] = f"Token {token}"
        for session in (person, by_token):
            attempts = [
                _send(session, "POST", f"{url}/api/storages/localfiles/", json={
                    "project": project, "path": str(root / "data" / "answers"), "use_blob_urls": False,
                    "regex_filter": ".*"}),
                _send(session, "POST", f"{url}/api/storages/localfiles/validate", json={
                    "project": project, "path": str(root / "data" / "answers"), "use_blob_urls": False}),
                _send(session, "POST", f"{url}/api/storages/localfiles/{before[0]['id']}/sync"),
                _send(session, "PATCH", f"{url}/api/storages/localfiles/{before[0]['id']}",
                      json={"path": str(root / "data" / "answers")}),
                _send(session, "POST", f"{url}/api/storages/export/localfiles", json={
                    "project": project, "path": str(root / "data" / "display")}),
            ]
            assert [r.status_code for r in attempts] == [403] * len(attempts)
        assert lead.local_storages(project) == before
    tasks = world["lead"][roles.VERIFICATION].tasks(world["verification_project"])
    assert PLANTED["statement_a"] not in json.dumps(tasks)


def test_annotators_change_no_project_task_draft_or_others_annotation(world: dict[str, Any]) -> None:
    """A writer could otherwise blank the writing form for everyone (PATCH the labeling config), import tasks with
    outside image URLs, delete tasks, plant drafts, or rewrite another writer's question, which pull would then
    record under that writer's name. Only the lead's commands change those; a writer changes their own work."""
    ls, params_file = world["ls"], world["params_file"]
    writing, verification = roles.server(ls, roles.WRITING), roles.server(ls, roles.VERIFICATION)
    lead = world["lead"][roles.WRITING]
    project = world["writing_project"]
    assert server.main(["--params", str(params_file), "add-user", "second@example.org", "--role", "writer",
                        "--password", "second-pass-1"]) == 0
    second = _login(writing.url, "second@example.org", "second-pass-1")
    before = lead.project_by_title(ls.writing_project)
    export = lead.export(project)
    written = next(t for t in export if t["annotations"])
    annotation = written["annotations"][0]
    untouched = next(t for t in export if not t["annotations"])
    url = writing.url
    for session in (world["writer"], second):
        token = requests.Session()
        token.headers["Authorization"] = f"Token {_token(session, url)}"
        for who in (session, token):
            attempts = {
                "config": _send(who, "PATCH", f"{url}/api/projects/{project}/", json={"label_config": "<View></View>"}),
                "instructions": _send(who, "PATCH", f"{url}/api/projects/{project}", json={"expert_instruction": "x"}),
                "new project": _send(who, "POST", f"{url}/api/projects/", json={"title": "mine"}),
                "import": _send(who, "POST", f"{url}/api/projects/{project}/import",
                                json=[{"image_a": "https://example.org/a.jpg", "pair_id": "planted"}]),
                "delete tasks": _send(who, "DELETE", f"{url}/api/projects/{project}/tasks/"),
                "task data": _send(who, "PATCH", f"{url}/api/tasks/{untouched['id']}/",
                                   json={"data": {**untouched["data"], "image_a": "https://example.org/a.jpg"}}),
                "delete task": _send(who, "DELETE", f"{url}/api/tasks/{untouched['id']}/"),
                "new task": _send(who, "POST", f"{url}/api/tasks/", json={"project": project, "data": {"x": 1}}),
                "draft": _send(who, "POST", f"{url}/api/predictions/",
                               json={"task": untouched["id"], "result": [], "model_version": "mine"}),
                "dm action": _send(who, "POST", f"{url}/api/dm/actions?id=delete_tasks&project={project}",
                                   json={"selectedItems": {"all": True, "excluded": []}}),
            }
            if session is second or who is token:  # someone else's annotation, or any by an annotator's token
                attempts["edit answer"] = _send(who, "PATCH", f"{url}/api/annotations/{annotation['id']}/",
                                                json={"result": []})
                attempts["delete answer"] = _send(who, "DELETE", f"{url}/api/annotations/{annotation['id']}/")
            assert {name: r.status_code for name, r in attempts.items()} == dict.fromkeys(attempts, 403)
    after = lead.export(project)
    assert after == export  # every task, its data, drafts and annotations as they were
    assert lead.project_by_title(ls.writing_project) == before
    # the writer still fixes their own question in the browser (what a returned task asks of them)
    own = _send(world["writer"], "PATCH", f"{url}/api/annotations/{annotation['id']}/",
                json={"result": annotation["result"]})
    assert own.status_code == 200, own.text
    # a verifier changes nothing of the verification project either
    instructions = _send(world["verifier"], "PATCH", f"{verification.url}/api/projects/{world['verification_project']}/",
                         json={"expert_instruction": "answer (a) for both"})
    assert instructions.status_code == 403


# -------------------------------------------------------------------------------------------- secrets


def test_data_dirs_are_private_to_their_owner(world: dict[str, Any]) -> None:
    top = Path(world["ls"].data_dir)
    found = [top, *top.rglob("*")]
    assert {p.name for p in found} >= {"label_studio.sqlite3", "admin.json", "server.pid", "server.log"}
    for path in found:
        mode = path.lstat().st_mode
        assert mode & 0o077 == 0, f"{path} is {stat.filemode(mode)}"
        if path.is_dir():
            assert stat.S_IMODE(mode) == 0o700, path


def test_the_admin_secret_is_never_readable_by_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = server.load_params(REPO / "params.yaml")
    import dataclasses

    params = dataclasses.replace(params, data_dir=str(tmp_path / "ls"))
    for var in server.SECRET_ENV.values():
        monkeypatch.delenv(var, raising=False)
    seen: list[int] = []
    replace = os.replace

    def watched(src: Any, dst: Any) -> None:
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", watched)
    old = os.umask(0)  # the least careful umask a user may have
    try:
        account = server.admin(roles.server(params, roles.VERIFICATION))
    finally:
        os.umask(old)
    secret = tmp_path / "ls" / roles.VERIFICATION / "admin.json"
    assert seen == [0o600]
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ls").stat().st_mode) == 0o700
    assert json.loads(secret.read_text())["token"] == account.token


# ------------------------------------------------------------------------------------ layout and ports


def test_a_single_server_data_dir_is_refused_with_what_to_do(tmp_path: Path) -> None:
    import dataclasses

    params = dataclasses.replace(server.load_params(REPO / "params.yaml"), data_dir=str(tmp_path / "old"))
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "label_studio.sqlite3").write_bytes(b"old answers")
    for attempt in (lambda: server.start(params, tmp_path / "display"),
                    lambda: server.add_user(params, "w@example.org", None, "writer"),
                    lambda: Client.from_params(params, roles.WRITING)):
        with pytest.raises(server.ServerError, match=r"single Label Studio server.*clipblind pull writing.*mv "):
            attempt()
    assert (tmp_path / "old" / "label_studio.sqlite3").read_bytes() == b"old answers"
    assert not (tmp_path / "old" / roles.WRITING).exists()
    # `stop` ends the old server by its PID file (a stand-in process in its own session, as the server runs)
    old_server = subprocess.Popen(["sleep", "300"], start_new_session=True)
    (tmp_path / "old" / "server.pid").write_text(f"{old_server.pid}\n")
    assert server.stop_single_server(params) == old_server.pid
    old_server.wait(timeout=30)  # already reaped by the stop
    with pytest.raises(ProcessLookupError):
        os.kill(old_server.pid, 0)
    assert not (tmp_path / "old" / "server.pid").exists()


def test_a_listener_takes_a_port_and_time_wait_does_not() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not server.port_free(port)
    assert server.port_free(port)


def _time_wait(port: int) -> int:
    """Connections in TIME-WAIT whose local port is `port` (from /proc/net/tcp)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        count += state == "06" and int(local.split(":")[1], 16) == port
    return count


def test_restart_right_after_stop(world: dict[str, Any]) -> None:
    """Runs last: the servers stop and start again at once, with closed connections still in TIME-WAIT."""
    ls, display = world["ls"], world["display"]
    writing = roles.server(ls, roles.WRITING)
    kept = requests.Session()  # a keep-alive connection the server closes first when it stops
    assert kept.get(f"{writing.url}/health", timeout=30).ok
    stopped = server.stop(ls)
    kept.close()
    assert all(stopped.values())
    assert _time_wait(writing.port) >= 1, "the stop left the connection in TIME-WAIT"
    probe = subprocess.run(["python3", "-c", f"import socket; s = socket.socket(); s.bind(('127.0.0.1', {writing.port}))"],
                           capture_output=True, text=True)
    assert probe.returncode != 0 and "Address already in use" in probe.stderr  # what tripped the old check
    started = server.start(ls, display)
    assert all(new for _, new in started.values())
    assert set(started) == set(roles.SERVERS)
    assert world["lead"][roles.WRITING].project_by_title(ls.writing_project) is not None
    assert Client.from_params(ls, roles.VERIFICATION).project_by_title(ls.verification_project) is not None
