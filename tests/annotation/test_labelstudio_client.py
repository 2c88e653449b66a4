"""The Label Studio client on label-studio-sdk, against a scripted HTTP transport (no server).

The real server's answers are covered by test_annotation_server.py; here: what the client adds
on top of the SDK (config and pre-annotation checks, one attempt per request, paging, errors).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from annotation import push
from annotation.labelstudio.client import Client, LabelStudioError

URL = "http://127.0.0.1:9"
Handler = Callable[[httpx.Request], httpx.Response]


def _client(handler: Handler) -> tuple[Client, list[httpx.Request]]:
    """A client whose requests go to `handler`; the list collects every request sent."""
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return handler(request)

    return Client(URL, "0" * 40, http=httpx.Client(transport=httpx.MockTransport(record))), sent


def _task(pair: str, suggestion: dict[str, str] | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"data": {"pair_id": pair, "image_a": "a", "image_b": "b"}}
    if suggestion:
        item["predictions"] = [push.prediction(suggestion, "drafts-v1")]
    return item


def test_a_pre_annotation_the_config_does_not_offer_is_left_out_and_its_task_imported() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"id": 7, "title": "w", "label_config": push.writing_config()})
        return httpx.Response(201, json={"task_count": 3, "annotation_count": 0, "prediction_count": 1})

    client, sent = _client(handler)
    tasks = [_task("p0", {"pattern": "quantity", "question": "How many?"}),  # a key, not the name writers see
             _task("p1", {"pattern": "Quantity and Count", "question": "How many?"}), _task("p2")]
    left_out = client.import_tasks(7, tasks)
    assert list(left_out) == [0]
    assert "'quantity'" in left_out[0][0] and "Quantity and Count" in left_out[0][0]  # the value and what is allowed
    imported = json.loads(sent[-1].content)
    assert sent[-1].url.path == "/api/projects/7/import" and sent[-1].headers["Authorization"] == "Token " + "0" * 40
    assert [t["data"]["pair_id"] for t in imported] == ["p0", "p1", "p2"]
    assert ["predictions" in t for t in imported] == [False, True, False]
    assert imported[1]["predictions"] == tasks[1]["predictions"]


def test_tasks_without_pre_annotations_are_imported_without_reading_the_config() -> None:
    client, sent = _client(lambda request: httpx.Response(201, json={"task_count": 1}))
    assert client.import_tasks(7, [_task("p0")]) == {}
    assert [(r.method, r.url.path) for r in sent] == [("POST", "/api/projects/7/import")]


def test_a_labeling_config_that_does_not_parse_is_refused_before_anything_is_sent() -> None:
    client, sent = _client(lambda request: httpx.Response(201, json={"id": 1}))
    with pytest.raises(LabelStudioError, match=r"labeling config for project 'clipblind: write'.*annotation/\*\.xml"):
        client.create_project({"title": "clipblind: write", "label_config": "<View><Image name='a' value='$a'/>"})
    with pytest.raises(LabelStudioError, match="not valid"):
        client.update_project(3, {"label_config": "<View"})
    assert sent == []
    assert client.create_project({"title": "clipblind: write", "label_config": push.writing_config()}) == 1


def test_a_failed_import_is_sent_once_and_reported_with_status_and_body() -> None:
    client, sent = _client(lambda request: httpx.Response(503, text="database is locked"))
    with pytest.raises(LabelStudioError) as caught:
        client.import_tasks(7, [_task("p0")])
    assert len(sent) == 1  # a retried import would import the tasks twice
    assert caught.value.status == 503
    assert str(caught.value) == "POST /api/projects/7/import → HTTP 503: database is locked"


def test_a_refused_token_names_where_the_credentials_come_from() -> None:
    client, _ = _client(lambda request: httpx.Response(401, json={"detail": "Invalid token."}))
    with pytest.raises(LabelStudioError, match=r"refused the admin token.*admin\.json") as caught:
        client.users()
    assert caught.value.status == 401


def test_a_server_that_is_not_running_names_the_command_that_starts_it() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(LabelStudioError, match="not reachable.*clipblind labelstudio start") as caught:
        Client(f"http://127.0.0.1:{port}", "0" * 40).project_by_title("w")
    assert caught.value.status == 0


def test_tasks_are_read_across_pages_until_the_server_says_there_are_no_more() -> None:
    ids = list(range(250, 0, -1))

    def handler(request: httpx.Request) -> httpx.Response:
        page, size = int(request.url.params["page"]), int(request.url.params["page_size"])
        assert request.url.params["project"] == "7" and request.url.params["fields"] == "all"
        chunk = ids[(page - 1) * size: page * size]
        if not chunk:  # what Label Studio answers past the last page
            return httpx.Response(404, json={"detail": "Invalid page."})
        return httpx.Response(200, json={"tasks": [{"id": i, "data": {"pair_id": f"p{i}"}, "meta": {}} for i in chunk],
                                         "total": len(ids)})

    client, _ = _client(handler)
    tasks = client.tasks(7)
    assert [t["id"] for t in tasks] == sorted(ids)
    assert tasks[0] == {"id": 1, "data": {"pair_id": "p1"}, "meta": {}}  # the fields the server sent, nothing added


def test_project_by_title_keeps_exact_matches_only_and_the_oldest() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params["page"] != "1":
            return httpx.Response(404, json={"detail": "Invalid page."})
        titles = [(5, "clipblind: write questions (old)"), (4, "clipblind: write questions"),
                  (2, "CLIPBLIND: WRITE QUESTIONS"), (9, "clipblind: write questions")]
        return httpx.Response(200, json={"results": [{"id": i, "title": t} for i, t in titles], "count": 4})

    client, _ = _client(handler)
    assert client.project_by_title("clipblind: write questions") == {"id": 4, "title": "clipblind: write questions"}
    assert client.project_by_title("nothing") is None


def test_push_names_the_pair_whose_suggestion_was_left_out(capsys: pytest.CaptureFixture[str]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"id": 7, "title": "w", "label_config": push.writing_config()})
        return httpx.Response(201, json={"task_count": 2})

    client, sent = _client(handler)
    todo = push.PushPlan(new=[_task("p0"), _task("p1")])
    push.apply(client, 7, todo, {"p1": {"pattern": "Counting", "question": "How many?"}, "p0": {"question": "Which?"}})
    out = capsys.readouterr().out
    assert "draft for pair 'p1' left out" in out and "'Counting'" in out and "--drafts" in out
    assert "'p0'" not in out
    assert ["predictions" in t for t in json.loads(sent[-1].content)] == [True, False]
