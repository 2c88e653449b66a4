"""What Label Studio must refuse on clipblind's servers, whoever asks; runs inside Label Studio's virtualenv.

* Accounts: only the lead's command (`clipblind labelstudio add-user`, which writes the database)
  creates one. The signup page (with or without an invite token), the invite link and its reset,
  `POST /api/users/` and Django's admin site answer 403 to everyone, admin included.
* Local files: `/data/local-files/?d=...` is answered only for a regular file whose real path
  (symlinks resolved) lies directly inside the display folder's real path (CLIPBLIND_LS_DISPLAY_DIR);
  anything else is 404 before Label Studio's own checks run.
* The lead's things: only the lead's API token (LABEL_STUDIO_USER_TOKEN, what `clipblind push`,
  `push-verification` and `feedback` send) may change a storage (an annotator's own could import
  any JSON or Parquet file under the document root as tasks, or export into it), a project (its
  labeling config, instructions, settings, imports), a task, a prediction (a draft), or run a
  data-manager action (delete tasks, annotations, predictions). Everyone else, the admin in the
  browser included, gets 403: these come from `push` and are put back by the next push anyway.
* Annotations: one is changed or deleted only by the account that wrote it, in the browser (the
  writer fixing a returned question), or by the lead's token. Another writer's edit would reach
  `pull` under the first writer's name.
* The labeling stream on SQLite: `/api/projects/<id>/next/` and the data manager's `next_task` action pick a task and lock it for its
  annotator in one write transaction, as Label Studio does on PostgreSQL (where it locks the row it
  picks). Without it, ten writers at once were handed the same task a third of the time
  (tests/annotation/test_load.py), and the second writer's work was wasted.
"""

import hmac
import os
import posixpath
import re
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.http import HttpResponseForbidden, HttpResponseNotFound

ACCOUNTS_REFUSED = ("accounts on this server are created by the lead only "
                    "(clipblind labelstudio add-user EMAIL --role writer|verifier)")
# Paths (slashes collapsed, no trailing slash) refused for every method, and for POST only (the user
# API's router also answers a format suffix: /api/users.json).
CLOSED = ("/user/signup", "/api/invite", "/api/invite/reset-token", "/admin")
CLOSED_POST = re.compile(r"/api/users(\.\w+)?")
LOCAL_FILES = "data/local-files"  # Label Studio routes any path containing it (an unanchored pattern)
# Changed (any method but a read) by the lead's token only: storages, projects (config, settings, imports,
# their task lists), tasks themselves, predictions, data-manager actions.
LEAD_ONLY = re.compile(r"/api/(storages|projects|predictions|dm/actions|import)(/.*)?|/api/tasks(/\d+)?")
LEAD_REFUSED = ("storages, projects, tasks and drafts are set by the lead's commands only "
                "(clipblind push, push-verification, feedback)")
ANNOTATION = re.compile(r"/api/annotations/(?P<id>\d+)")
ANNOTATION_REFUSED = "an annotation is changed only by the person who wrote it, in the browser"
READ_ONLY = ("GET", "HEAD", "OPTIONS")
NEXT_TASK = re.compile(r"/api/projects/\d+/next")
DM_ACTIONS = "/api/dm/actions"
NEXT_TASK_ACTION = "next_task"


def _normal(path: str) -> str:
    return re.sub(r"/+", "/", path).rstrip("/") or "/"


def closed(method: str, path: str) -> bool:
    """Whether a request could create an account (or mint a link that does)."""
    path = _normal(path)
    if any(path == p or path.startswith(p + "/") for p in CLOSED):
        return True
    return method == "POST" and CLOSED_POST.fullmatch(path) is not None


def next_task(method: str, path: str, action: str | None) -> bool:
    """Whether the request asks the labeling stream for the next task: `GET /api/projects/<id>/next/`, or the
    data manager's `POST /api/dm/actions?id=next_task` (what "Label All Tasks" sends)."""
    path = _normal(path)
    return NEXT_TASK.fullmatch(path) is not None or (path == DM_ACTIONS and action == NEXT_TASK_ACTION)


def lead_only(method: str, path: str, action: str | None = None) -> bool:
    """Whether only the lead may make this request (a change to a storage, project, task, prediction, or a
    data-manager action other than asking for the next task, which every annotator's stream does)."""
    if method in READ_ONLY or next_task(method, path, action):
        return False
    return LEAD_ONLY.fullmatch(_normal(path)) is not None


def servable(relative: str | None, document_root: str, display_dir: str) -> bool:
    """Whether `/data/local-files/?d=<relative>` names a regular file directly inside the display folder."""
    if not relative:
        return False
    # as Label Studio reads `d`: normalised, made relative, joined to the document root
    wanted = os.path.join(document_root, posixpath.normpath(relative).lstrip("/"))
    real = os.path.realpath(wanted)
    return os.path.dirname(real) == os.path.realpath(display_dir) and os.path.isfile(real)


class Lockdown:
    """Django middleware: refuse account creation, local files outside the display folder, and storage
    changes by anyone but the lead."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.display_dir = os.environ["CLIPBLIND_LS_DISPLAY_DIR"]
        self.lead = f"Token {os.environ['LABEL_STUDIO_USER_TOKEN']}".encode()

    def __call__(self, request: Any) -> Any:
        if closed(request.method, request.path_info):
            return HttpResponseForbidden(ACCOUNTS_REFUSED, content_type="text/plain")
        action = request.GET.get("id")
        if lead_only(request.method, request.path_info, action) and not is_lead(request, self.lead):
            return HttpResponseForbidden(LEAD_REFUSED, content_type="text/plain")
        if LOCAL_FILES in request.path_info and not servable(
            request.GET.get("d"), settings.LOCAL_FILES_DOCUMENT_ROOT, self.display_dir
        ):
            return HttpResponseNotFound()
        if connection.vendor == "sqlite" and next_task(request.method, request.path_info, action):
            # clipblind_settings begins SQLite transactions IMMEDIATE: this one holds the write lock from
            # choosing the task until its lock is stored, so no two annotators are handed the same task
            with transaction.atomic():
                return self.get_response(request)
        return self.get_response(request)


def is_lead(request: Any, lead: bytes) -> bool:
    """Whether the request carries the lead's API token."""
    return hmac.compare_digest(request.META.get("HTTP_AUTHORIZATION", "").encode(), lead)


class AnnotationOwner:
    """Django middleware, after authentication: an annotation is changed or deleted only by its own writer's
    browser session, or by the lead's token. An annotator's token (or X-Api-Key) may not change one at all."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.lead = f"Token {os.environ['LABEL_STUDIO_USER_TOKEN']}".encode()

    def __call__(self, request: Any) -> Any:
        found = ANNOTATION.fullmatch(_normal(request.path_info))
        if found is None or request.method in READ_ONLY or is_lead(request, self.lead):
            return self.get_response(request)
        from tasks.models import Annotation  # Label Studio's own model, importable once Django is set up

        user = getattr(request, "user", None)
        by_token = bool(request.META.get("HTTP_AUTHORIZATION") or request.META.get("HTTP_X_API_KEY"))
        owner = Annotation.objects.filter(id=int(found["id"])).values_list("completed_by_id", flat=True).first()
        if by_token or user is None or not user.is_authenticated or (owner is not None and owner != user.id):
            return HttpResponseForbidden(ANNOTATION_REFUSED, content_type="text/plain")
        return self.get_response(request)
