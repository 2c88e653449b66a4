"""The Label Studio client push, pull and push-verification use, on label-studio-sdk.

The SDK's typed calls do the requests; its labeling-config parser checks a config before it is
pushed and each pre-annotation against the project's config before it is imported.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk._legacy.exceptions import (  # where LabelInterface's own errors live
    LabelStudioValidationErrorSentryIgnored,
    LabelStudioXMLSyntaxErrorSentryIgnored,
)
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.label_interface import LabelInterface

from annotation.labelstudio.roles import Role, server
from annotation.labelstudio.server import admin, check_layout
from pipeline.core.errors import ClipblindError
from pipeline.params import LabelStudioParams

PAGE_SIZE = 100


class LabelStudioError(ClipblindError, RuntimeError):
    """Label Studio refused a request (`status` is its HTTP status) or could not be reached (`status` 0)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Client:
    """Token-authenticated session against one Label Studio server, on label-studio-sdk.

    The server runs with legacy API tokens enabled (`annotation.labelstudio.server`); the SDK sends a
    token that is not a JWT as `Authorization: Token …`. Every failure is raised as LabelStudioError.
    """

    url: str
    token: str
    timeout_s: float = 60.0
    http: httpx.Client | None = field(default=None, repr=False)  # the SDK's transport; None: its default

    def __post_init__(self) -> None:
        # No retries: the SDK would repeat a POST after a 5xx or a dropped connection, and a repeated
        # task import imports the tasks twice.
        with self._failing_as("", "(connecting)"):  # an expired JWT token is refused here already
            self.sdk = LabelStudio(base_url=self.url, api_key=self.token, timeout=self.timeout_s, max_retries=0,
                                   httpx_client=self.http)

    @classmethod
    def from_params(cls, params: LabelStudioParams, role: Role) -> Client:
        """A client acting as the admin of `role`'s server (annotation.labelstudio.roles) as `params` describe it."""
        check_layout(params)
        role_server = server(params, role)
        return cls(role_server.url, admin(role_server).token)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one request by method and path; return the decoded JSON body (None when empty).

        For calls the typed methods below do not offer (tests post annotations the way the editor does,
        by path). It goes through the SDK's own HTTP client, so auth, timeout and errors are the same;
        the SDK exposes that client only as `_client_wrapper.httpx_client`.
        """
        with self._failing_as(method, path):
            response = self.sdk._client_wrapper.httpx_client.request(path.lstrip("/"), method=method, **kwargs)
            if response.status_code >= 400:
                raise ApiError(status_code=response.status_code, body=response.text)
        return response.json() if response.content else None

    def project_by_title(self, title: str) -> dict[str, Any] | None:
        """The project with this exact title, if any (the oldest if several)."""
        with self._failing_as("GET", "/api/projects/"):
            # the server's title filter matches substrings, case-insensitively: keep exact matches only
            matches = _records(self.sdk.projects.list(title=title, page_size=PAGE_SIZE))
        matches = [p for p in matches if p["title"] == title]
        return min(matches, key=lambda p: p["id"]) if matches else None

    def create_project(self, settings: dict[str, Any]) -> int:
        """Create a project (`settings`: title, label_config and other project fields); return its id.
        The labeling config is checked to parse before anything is sent."""
        _check_config(settings.get("label_config"), settings.get("title"))
        with self._failing_as("POST", "/api/projects/"):
            return int(_plain(self.sdk.projects.create(**settings))["id"])

    def update_project(self, project_id: int, changed: dict[str, Any]) -> None:
        """Change these fields of a project; a new labeling config is checked to parse first."""
        _check_config(changed.get("label_config"), f"#{project_id}")
        with self._failing_as("PATCH", f"/api/projects/{project_id}/"):
            self.sdk.projects.update(project_id, **changed)

    def local_storages(self, project_id: int) -> list[dict[str, Any]]:
        """The local-files import storages connected to a project."""
        with self._failing_as("GET", f"/api/storages/localfiles/?project={project_id}"):
            return _records(self.sdk.import_storage.local.list(project=project_id))

    def add_local_storage(self, project_id: int, **settings: Any) -> None:
        """Connect a local-files import storage (`settings`: path, title, regex_filter, use_blob_urls …)."""
        with self._failing_as("POST", "/api/storages/localfiles/"):
            self.sdk.import_storage.local.create(project=project_id, **settings)

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> dict[int, list[str]]:
        """Import tasks ({"data", optional "predictions"}) into a project.

        A prediction that does not fit the project's labeling config (a choice it does not offer, a
        control it does not have) is left out of its task: Label Studio would store it and show
        annotators a broken pre-annotation. Returns {index in `tasks`: the problems} for each task
        whose predictions were left out; its task is imported all the same.
        """
        if not tasks:
            return {}
        left_out: dict[int, list[str]] = {}
        if any(task.get("predictions") for task in tasks):
            interface = self._label_interface(project_id)
            checked = []
            for index, task in enumerate(tasks):
                problems = [p for pred in task.get("predictions", [])
                            for p in interface.validate_prediction(pred, return_errors=True)]
                if problems:
                    left_out[index] = problems
                    task = {k: v for k, v in task.items() if k != "predictions"}
                checked.append(task)
            tasks = checked
        with self._failing_as("POST", f"/api/projects/{project_id}/import"):
            # plain task JSON: the SDK's ImportApiRequest types a prediction as PredictionRequest, whose
            # required task id cannot exist before the import creates the task
            self.sdk.projects.import_tasks(project_id, request=tasks)  # type: ignore[arg-type]
        return left_out

    def add_predictions(self, project_id: int, predictions: dict[int, dict[str, Any]]) -> dict[int, list[str]]:
        """Add a prediction to each of these tasks of a project (task id → {"model_version", "result"}).

        As in import_tasks, a prediction that does not fit the project's labeling config is left out; returns
        {task id: the problems} for those."""
        if not predictions:
            return {}
        interface = self._label_interface(project_id)
        left_out: dict[int, list[str]] = {}
        for task_id, pred in predictions.items():
            problems = interface.validate_prediction(pred, return_errors=True)
            if problems:
                left_out[task_id] = list(problems)
                continue
            self.request("POST", "/api/predictions/", json={"task": task_id, **pred})
        return left_out

    def _label_interface(self, project_id: int) -> LabelInterface:
        """The project's labeling config as the SDK parses it (to check predictions against)."""
        with self._failing_as("GET", f"/api/projects/{project_id}/"):
            return self.sdk.projects.get(project_id).get_label_interface()

    def set_task_meta(self, task_id: int, meta: dict[str, Any]) -> None:
        """Replace a task's meta field."""
        with self._failing_as("PATCH", f"/api/tasks/{task_id}/"):
            self.sdk.tasks.update(str(task_id), meta=meta)

    def delete_task(self, task_id: int) -> None:
        """Delete a task (and whatever hangs on it)."""
        with self._failing_as("DELETE", f"/api/tasks/{task_id}/"):
            self.sdk.tasks.delete(str(task_id))

    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of a project with its data, meta and annotation counts, in id order."""
        with self._failing_as("GET", f"/api/tasks/?project={project_id}&fields=all"):
            tasks = _records(self.sdk.tasks.list(project=project_id, fields="all", page_size=PAGE_SIZE))
        return sorted(tasks, key=lambda t: t["id"])

    def export(self, project_id: int) -> list[dict[str, Any]]:
        """A JSON export of every task of the project, annotated or not, as the server wrote it."""
        # the community server's synchronous export (exports.as_json would also ask it to download every
        # image resource); parsed here, not through SDK types, so the snapshot keeps the server's JSON
        with self._failing_as("GET", f"/api/projects/{project_id}/export?exportType=JSON&download_all_tasks=true"):
            body = b"".join(self.sdk.projects.exports.download_sync(project_id, export_type="JSON",
                                                                      download_all_tasks=True))
        return json.loads(body)

    def users(self) -> dict[int, str]:
        """User id → email for everyone in the organisation."""
        with self._failing_as("GET", "/api/users/"):
            return {int(u.id): str(u.email) for u in self.sdk.users.list()}

    @contextmanager
    def _failing_as(self, method: str, path: str) -> Iterator[None]:
        """Raise what goes wrong inside as LabelStudioError naming the request, the status and the fix."""
        try:
            yield
        except httpx.ConnectError as err:
            raise LabelStudioError(
                f"Label Studio is not reachable at {self.url}: start it with `clipblind labelstudio start`"
            ) from err
        except httpx.TransportError as err:
            raise LabelStudioError(
                f"{method} {path}: Label Studio at {self.url} did not answer ({type(err).__name__}: {err}); "
                f"check its log in <labelstudio.data_dir>/<server> or restart it with `clipblind labelstudio start`"
            ) from err
        except ApiError as err:
            status = err.status_code or 0
            if status == 401:
                raise LabelStudioError(
                    f"{self.url} refused the admin token: use the credentials the server was first started with "
                    "(CLIPBLIND_LS_EMAIL/PASSWORD/TOKEN or <labelstudio.data_dir>/<server>/admin.json)", 401) from err
            body = err.body if isinstance(err.body, str) else json.dumps(err.body)
            raise LabelStudioError(f"{method} {path} → HTTP {status}: {body[:500]}", status) from err


def _plain(record: Any) -> dict[str, Any]:
    """An SDK record as the JSON the server sent (wire names, only the fields it sent)."""
    plain: dict[str, Any] = json.loads(record.json())
    return plain


def _records(records: Iterable[Any]) -> list[dict[str, Any]]:
    """Every record of an SDK list or pager (read page by page), as plain JSON."""
    return [_plain(record) for record in records]


def _check_config(label_config: str | None, project: str | None) -> None:
    """Refuse a labeling config the SDK's parser rejects, before the server sees it."""
    if label_config is None:
        return
    try:
        LabelInterface(label_config).validate()
    except (LabelStudioXMLSyntaxErrorSentryIgnored, LabelStudioValidationErrorSentryIgnored) as err:
        raise LabelStudioError(
            f"the labeling config for project {project!r} is not valid ({err}): fix the template it is rendered "
            "from (annotation/*.xml)"
        ) from err
