"""A small client for the parts of the Label Studio REST API that push and pull use."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests

from annotation.labelstudio.server import LabelStudioParams, admin
from pipeline.core.errors import ClipblindError


class LabelStudioError(ClipblindError, RuntimeError):
    """Label Studio refused a request (`status` is its HTTP status) or could not be reached (`status` 0)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Client:
    """Token-authenticated session against one Label Studio server."""

    url: str
    token: str
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {self.token}"

    @classmethod
    def from_params(cls, params: LabelStudioParams) -> Client:
        """A client acting as the admin of the server `params` describe."""
        return cls(params.url, admin(params).token)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request; return the decoded JSON body (None when empty)."""
        try:
            response = self.session.request(method, self.url + path, timeout=self.timeout_s, **kwargs)
        except requests.ConnectionError as err:
            raise LabelStudioError(
                f"Label Studio is not reachable at {self.url}: start it with `clipblind labelstudio start`"
            ) from err
        if response.status_code == 401:
            raise LabelStudioError(
                f"{self.url} refused the admin token: use the credentials the server was first started with "
                "(CLIPBLIND_LS_EMAIL/PASSWORD/TOKEN or <labelstudio.data_dir>/admin.json)", 401)
        if not response.ok:
            raise LabelStudioError(f"{method} {path} → HTTP {response.status_code}: {response.text[:500]}",
                                   response.status_code)
        return response.json() if response.content else None

    def project_by_title(self, title: str) -> dict[str, Any] | None:
        """The project with this exact title, if any (the oldest if several)."""
        matches = [p for p in self._paged("/api/projects/", "results") if p["title"] == title]
        return min(matches, key=lambda p: p["id"]) if matches else None

    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of a project with its data, meta and annotation counts, in id order."""
        tasks = list(self._paged(f"/api/tasks/?project={project_id}&fields=all", "tasks"))
        return sorted(tasks, key=lambda t: t["id"])

    def export(self, project_id: int) -> list[dict[str, Any]]:
        """A JSON export of every task of the project, annotated or not."""
        return self.request("GET", f"/api/projects/{project_id}/export?exportType=JSON&download_all_tasks=true")

    def users(self) -> dict[int, str]:
        """User id → email for everyone in the organisation."""
        return {u["id"]: u["email"] for u in self.request("GET", "/api/users/")}

    def _paged(self, path: str, key: str) -> Iterator[dict[str, Any]]:
        page = 1
        sep = "&" if "?" in path else "?"
        while True:
            try:
                body = self.request("GET", f"{path}{sep}page={page}&page_size=100")
            except LabelStudioError as err:
                if err.status == 404 and page > 1:  # past the last page
                    return
                raise
            items = body[key] if isinstance(body, dict) else body
            yield from items
            if not isinstance(body, dict) or len(items) < 100:
                return
            page += 1

