"""Integration: the real Label Studio servers on 127.0.0.1, tasks from a real pipeline run, a real browser.

The writing and the verification server serve the whole module (started together, cold start ≈ 1-3 min);
they are stopped by their PIDs. What annotators cannot do is tested in test_lockdown.py.
Label Studio runs from its own virtualenv: `make labelstudio` builds .venv-labelstudio/, or
CLIPBLIND_LABELSTUDIO_VENV points at one.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from annotation import pull, push, snapshot
from annotation.labelstudio import roles, server
from annotation.labelstudio.client import Client
from pipeline.core import patterns
from tests.helpers.annotation_world import (
    ARTIFACTS,
    choose,
    chromium,
    labelstudio_section,
    login,
    new_page,
    open_task,
    pull_and_validate,
    run_pipeline,
    submit,
    type_text,
    wait_for_images,
)

pytestmark = [pytest.mark.slow, pytest.mark.server]

WRITER = ("writer@example.org", "writer-pass-1")
# as the writing config shows and Label Studio stores them
QUANTITY, SPATIAL = patterns.by_key("quantity").paper, patterns.by_key("spatial").paper


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path) -> Iterator[dict[str, Any]]:
    """Pipeline outputs + a running Label Studio; stopped by PID at the end."""
    root = tmp_path_factory.mktemp("annotation")
    params_file, tasks = run_pipeline(sample_corpus, root)
    params = yaml.safe_load(params_file.read_text())
    params["labelstudio"] = labelstudio_section(root)
    params_file.write_text(yaml.safe_dump(params))
    ls = server.load_params(params_file)
    display = root / "data" / "display"
    started = server.start(ls, display)
    assert all(new for _, new in started.values())
    pids = {role: pid for role, (pid, _) in started.items()}
    try:
        yield {"root": root, "params_file": params_file, "ls": ls, "tasks": tasks, "display": display,
               "pids": pids, "client": Client.from_params(ls, roles.WRITING),
               "writing": roles.server(ls, roles.WRITING), "verification": roles.server(ls, roles.VERIFICATION)}
    finally:
        assert server.stop(ls) == pids
        for pid in pids.values():
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on `port` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A = LISTEN
                found.add(address)
    return found


def _other_interface_ip() -> str | None:
    """A non-loopback address of this machine, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for a UDP connect
            ip = probe.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_servers_are_bound_to_loopback_signup_closed_and_single(world: dict[str, Any]) -> None:
    ls = world["ls"]
    for role_server in (world["writing"], world["verification"]):
        assert _listening_addresses(role_server.port) == {"0100007F"}  # 127.0.0.1, nothing else
        other = _other_interface_ip()
        if other:
            with pytest.raises(OSError):
                socket.create_connection((other, role_server.port), timeout=3).close()
    # a second start finds the running servers and starts nothing
    assert server.start(ls, world["display"]) == {role: (pid, False) for role, pid in world["pids"].items()}
    # `status` names both servers, each running and healthy
    assert server.main(["--params", str(world["params_file"]), "status"]) == 0
    # signup is closed: the form is refused and no account appears
    client = world["client"]
    users_before = client.users()
    url = world["writing"].url
    session = requests.Session()
    session.get(f"{url}/user/login/")
    response = session.post(
        f"{url}/user/signup/",
        data={"email": "intruder@example.org", "password": "intruder-pass-1",
              "csrfmiddlewaretoken": session.cookies.get("csrftoken", "")},
        headers={"Referer": f"{url}/user/signup/"},
    )
    assert response.status_code == 403
    assert client.users() == users_before
    # the API refuses anonymous callers
    assert requests.get(f"{url}/api/projects/", timeout=10).status_code == 401


def test_push_twice_imports_once_and_serves_only_display_images(world: dict[str, Any]) -> None:
    client, ls, tasks, display = world["client"], world["ls"], world["tasks"], world["display"]
    url = world["writing"].url
    assert len(tasks) >= 4
    first = push.push(client, ls, tasks, display)
    assert (first["imported"], first["already_present"], first["rejected"]) == (len(tasks), 0, 0)
    second = push.push(client, ls, tasks, display)
    assert (second["imported"], second["already_present"]) == (0, len(tasks))
    remote = client.tasks(first["project_id"])
    assert sorted(t["data"]["pair_id"] for t in remote) == sorted(t["data"]["pair_id"] for t in tasks)
    project = client.project_by_title(ls.writing_project)
    assert project["label_config"] == push.writing_config().strip()
    assert "Bad, and why" in project["expert_instruction"]

    def get(rel: str, auth: bool = True) -> requests.Response:
        headers = {"Authorization": f"Token {client.token}"} if auth else {}
        return requests.get(f"{url}/data/local-files/", params={"d": rel}, headers=headers, timeout=10)

    image = tasks[0]["data"]["image_a"].split("d=", 1)[1]
    served = get(image)
    assert served.status_code == 200 and served.content == (display.parent / image).read_bytes()
    assert get(image, auth=False).status_code in (401, 403)
    (display.parent / "secret.txt").write_text("not for annotators")
    for outside in ("tasks.json", "secret.txt", "images.parquet", "display/../tasks.json", "/etc/passwd"):
        assert get(outside).status_code == 404, outside
    for escape in ("../params.yaml", "display/../../params.yaml"):  # outside the document root
        response = get(escape)
        assert response.status_code == 404 and "labelstudio" not in response.text, escape


def test_remined_pairs_go_stale_and_annotated_tasks_survive(world: dict[str, Any]) -> None:
    client, ls, tasks, display = world["client"], world["ls"], world["tasks"], world["display"]
    project_id = push.push(client, ls, tasks, display)["project_id"]
    by_pair = {t["data"]["pair_id"]: t for t in client.tasks(project_id)}
    annotated, unannotated = tasks[-1]["data"]["pair_id"], tasks[-2]["data"]["pair_id"]
    client.request("POST", f"/api/tasks/{by_pair[annotated]['id']}/annotations/", json={
        "result": [{"from_name": "reject", "to_name": "image_a", "type": "choices",
                    "value": {"choices": ["Reject pair"]}}],
    })
    remined = tasks[:-2]  # re-mining dropped two pairs
    metrics = push.push(client, ls, remined, display)
    assert (metrics["stale_marked"], metrics["stale_deleted"], metrics["imported"]) == (1, 1, 0)
    after = {t["data"]["pair_id"]: t for t in client.tasks(project_id)}
    assert unannotated not in after
    assert after[annotated]["meta"]["stale"] is True and after[annotated]["total_annotations"] == 1
    again = push.push(client, ls, remined, display)
    assert (again["stale_marked"], again["stale_deleted"], again["imported"]) == (0, 0, 0)
    back = push.push(client, ls, tasks, display)  # the pairs return
    assert (back["revived"], back["imported"]) == (1, 1)
    assert {t["data"]["pair_id"]: t["meta"].get("stale") for t in client.tasks(project_id)}[annotated] is False


@pytest.mark.browser
def test_annotator_writes_a_question_in_the_browser_and_pull_returns_it(world: dict[str, Any]) -> None:
    client, ls, tasks, root = world["client"], world["ls"], world["tasks"], world["root"]
    url = world["writing"].url
    project_id = push.push(client, ls, tasks, world["display"])["project_id"]
    server.add_user(ls, *WRITER, "writer")
    remote = {t["data"]["pair_id"]: t["id"] for t in client.tasks(project_id)}
    pair = tasks[0]["data"]["pair_id"]
    typed = {
        "question": "How many dots are below the door?",
        "option_a": "Two",
        "option_b": "Three",
        "statement_a": "Two dots lie below the door.",
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with chromium() as browser:
        page = new_page(browser)
        login(page, url, *WRITER)
        open_task(page, url, project_id, remote[pair], "#field-question")
        choose(page, "field-pattern", QUANTITY)
        choose(page, "field-tags", SPATIAL)
        for name, text in typed.items():
            type_text(page, name, text)
        choose(page, "field-answer-a", "(a)")
        choose(page, "field-answer-b", "(b)")
        wait_for_images(page)
        page.screenshot(path=str(ARTIFACTS / "writer.png"), full_page=True)
        submit(page)
    assert (ARTIFACTS / "writer.png").stat().st_size > 10_000
    # a skipped annotation on another task must not reach the snapshot
    client.request("POST", f"/api/tasks/{remote[tasks[1]['data']['pair_id']]}/annotations/",
                   json={"result": [], "was_cancelled": True})
    out, metrics_path = root / "labels" / "writing.json", root / "metrics" / "pull_writing.json"
    args = ["writing", "--params", str(world["params_file"]), "--out", str(out), "--metrics", str(metrics_path)]
    assert pull.main(args) == 0
    first = out.read_bytes()
    assert pull.main(args) == 0
    assert out.read_bytes() == first  # pulling twice changes nothing
    snap = snapshot.read_snapshot(out)
    written = [t for t in snap["tasks"] if t["data"]["pair_id"] == pair]
    assert len(written) == 1 and len(written[0]["annotations"]) == 1
    annotation = written[0]["annotations"][0]
    assert annotation["annotator"] == WRITER[0]
    from annotation import results

    values = results.fields(annotation["result"])
    assert {name: results.text(values, name) for name in typed} == typed
    assert results.choice(values, "pattern") == QUANTITY
    assert results.choices(values, "tags") == [SPATIAL]
    assert (results.choice(values, "answer_a"), results.choice(values, "answer_b")) == ("(a)", "(b)")
    assert results.text(values, "statement_b") == ""
    assert all(a["result"] for t in snap["tasks"] for a in t["annotations"])  # no cancelled ones
    metrics = json.loads(metrics_path.read_text())
    assert metrics["rejected_by_reason"] == {"skipped": 1}
    assert metrics["accepted"] + metrics["rejected"] == metrics["inputs"]
    writer_stats = metrics["annotators"][WRITER[0]]
    assert writer_stats["tasks_done"] == 1 and writer_stats["rejects"] == 0
    assert writer_stats["seconds_per_task_mean"] > 0


VERIFIER = ("verifier@example.org", "verifier-pass-1")
PAYLOAD = '<img src=x onerror="window.__pwned=1">=cmd|\' /C calc\'!A0'


def _write_as_admin(client: Client, task_id: int, question: str, answers: tuple[str, str]) -> None:
    """The writer's submission (the browser path is covered above; here the admin writes)."""
    fields = {"pattern": [QUANTITY], "answer_a": [answers[0]], "answer_b": [answers[1]]}
    result = [{"from_name": k, "to_name": "image_a", "type": "choices", "value": {"choices": v}} for k, v in fields.items()]
    result += [{"from_name": k, "to_name": "image_a", "type": "textarea", "value": {"text": [v]}}
               for k, v in {"question": question, "option_a": "Two", "option_b": "Three"}.items()]
    client.request("POST", f"/api/tasks/{task_id}/annotations/", json={"result": result, "lead_time": 12.0})


@pytest.mark.browser
def test_writer_verifier_round_trip_with_adjudication(world: dict[str, Any]) -> None:
    from annotation import accept, adjudication
    from annotation import push_verification as verify

    client, ls, tasks, root, display = world["client"], world["ls"], world["tasks"], world["root"], world["display"]
    params_file = world["params_file"]
    params = yaml.safe_load(params_file.read_text())
    params.update(validate={"options_ignore_case": True}, accept={"verifiers": 1})
    params_file.write_text(yaml.safe_dump(params))
    project_id = push.push(client, ls, tasks, display)["project_id"]
    remote = {t["data"]["pair_id"]: t for t in client.tasks(project_id)}
    fresh = [t["data"]["pair_id"] for t in tasks if remote[t["data"]["pair_id"]]["total_annotations"] == 0]
    agreed, disputed = fresh[0], fresh[1]
    labels, data, metrics = root / "labels", root / "data", root / "metrics"
    lead_verification = Client.from_params(ls, roles.VERIFICATION)
    url = world["verification"].url

    def import_and_push_verification() -> dict[str, Any]:
        pull_and_validate(root, params_file)
        assert verify.main(["--params", str(params_file), "--annotations", str(data / "annotations.parquet"),
                            "--display", str(display), "--metrics", str(metrics / "verify.json")]) == 0
        project = lead_verification.project_by_title(ls.verification_project)
        return {t["data"]["pair_id"]: t for t in lead_verification.tasks(project["id"])}

    # before the writer submits, no verification task exists for the pair
    assert agreed not in import_and_push_verification()
    _write_as_admin(client, remote[agreed]["id"], PAYLOAD, ("(a)", "(b)"))
    _write_as_admin(client, remote[disputed]["id"], "How many dots are there?", ("(a)", "(b)"))
    verification = import_and_push_verification()
    assert {agreed, disputed} <= set(verification)
    assert not {"answer_a", "answer_b", "writer"} & set(verification[agreed]["data"])  # the writer's answers stay hidden
    assert len(import_and_push_verification()) == len(verification)  # pushing twice adds nothing

    server.add_user(ls, *VERIFIER, "verifier")
    assert client.project_by_title(ls.verification_project) is None  # the writing server holds no verification
    verification_project = lead_verification.project_by_title(ls.verification_project)["id"]
    with chromium() as browser:
        page = new_page(browser)
        login(page, url, *VERIFIER)
        for pair, (answer_a, answer_b) in ((agreed, ("(a)", "(b)")), (disputed, ("(a)", "unanswerable"))):
            open_task(page, url, verification_project, verification[pair]["id"], "#field-verify-a")
            wait_for_images(page)
            choose(page, "field-verify-a", answer_a)
            choose(page, "field-verify-b", answer_b)
            if pair == agreed:
                # the untrusted question is shown as text: no element injected, no handler run
                assert PAYLOAD in page.inner_text("#field-question")
                assert page.locator('#field-question img[src="x"]').count() == 0
                assert page.evaluate("window.__pwned") is None
                page.screenshot(path=str(ARTIFACTS / "verifier.png"), full_page=True)
            submit(page)

    assert pull.main(["verification", "--params", str(params_file), "--out", str(labels / "verification.json"),
                      "--metrics", str(metrics / "pull_verification.json")]) == 0
    decisions = labels / "adjudication.csv"
    accept_args = ["--params", str(params_file), "--annotations", str(data / "annotations.parquet"),
                   "--pairs", str(data / "pairs.parquet"), "--verification", str(labels / "verification.json"),
                   "--decisions", str(decisions), "--accepted", str(data / "accepted.parquet"),
                   "--outcomes", str(data / "outcomes.parquet"), "--queue", str(data / "queue.csv"),
                   "--metrics", str(metrics / "accept.json")]
    assert accept.main(accept_args) == 0
    from pipeline.core import schemas

    accepted = {r["pair_id"]: r for r in schemas.read_table(data / "accepted.parquet", "accepted").to_pylist()}
    assert accepted[agreed]["question"] == PAYLOAD and accepted[agreed]["verification"] == "verified"
    assert accepted[agreed]["verifier_answers_b"] == ["(b)"]
    assert disputed not in accepted
    # the mismatch lands in the adjudication file with every answer; the lead accepts it
    assert adjudication.main(["--queue", str(data / "queue.csv"), "--file", str(decisions)]) == 0
    rows = adjudication.read(decisions)
    row = next(r for r in rows if r["pair_id"] == disputed)
    assert row["verifier_answers_b"] == f"{VERIFIER[0]}: unanswerable" and row["writer_answer_b"] == "(b)"
    row["decision"] = "accept"
    decisions.write_bytes(adjudication.encode(rows))
    assert accept.main(accept_args) == 0
    accepted = {r["pair_id"]: r for r in schemas.read_table(data / "accepted.parquet", "accepted").to_pylist()}
    assert accepted[disputed]["verification"] == "adjudicated"
    result = json.loads((metrics / "accept.json").read_text())
    # the browser test's question in this world was never verified: pending, not rejected
    assert (result["accepted"], result["rejected"], result["pending"]) == (2, 0, 1)
    assert result["accepted"] + result["rejected"] + result["pending"] == result["valid"]
    assert result["human_accuracy"]["per_pair"] == 0.5 and result["human_accuracy"]["per_question"] == 0.75
