"""What Label Studio must refuse on clipblind's servers, whoever asks; runs inside Label Studio's virtualenv.

* Accounts: only the lead's command (`clipblind labelstudio add-user`, which writes the database)
  creates one. The signup page (with or without an invite token), the invite link and its reset,
  `POST /api/users/` and Django's admin site answer 403 to everyone, admin included.
* Local files: `/data/local-files/?d=...` is answered only for a regular file whose real path
  (symlinks resolved) lies directly inside the display folder's real path (CLIPBLIND_LS_DISPLAY_DIR);
  anything else is 404 before Label Studio's own checks run.
* Storages: only the lead's API token (LABEL_STUDIO_USER_TOKEN, what `clipblind push` sends) may
  connect, change, sync or delete one (`/api/storages/...` other than GET); an annotator could
  otherwise import any JSON or Parquet file under the document root as tasks, or export into it.
* The labeling stream on SQLite: `/api/projects/<id>/next/` picks a task and locks it for its
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
STORAGES = "/api/storages"
STORAGES_REFUSED = "storages are connected by the lead only (clipblind push)"
READ_ONLY = ("GET", "HEAD", "OPTIONS")
NEXT_TASK = re.compile(r"/api/projects/\d+/next")


def _normal(path: str) -> str:
    return re.sub(r"/+", "/", path).rstrip("/") or "/"


def closed(method: str, path: str) -> bool:
    """Whether a request could create an account (or mint a link that does)."""
    path = _normal(path)
    if any(path == p or path.startswith(p + "/") for p in CLOSED):
        return True
    return method == "POST" and CLOSED_POST.fullmatch(path) is not None


def lead_only(method: str, path: str) -> bool:
    """Whether only the lead may make this request (a change to a storage)."""
    path = _normal(path)
    return method not in READ_ONLY and (path == STORAGES or path.startswith(STORAGES + "/"))


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
        if lead_only(request.method, request.path_info) and not hmac.compare_digest(
            request.META.get("HTTP_AUTHORIZATION", "").encode(), self.lead
        ):
            return HttpResponseForbidden(STORAGES_REFUSED, content_type="text/plain")
        if LOCAL_FILES in request.path_info and not servable(
            request.GET.get("d"), settings.LOCAL_FILES_DOCUMENT_ROOT, self.display_dir
        ):
            return HttpResponseNotFound()
        if connection.vendor == "sqlite" and NEXT_TASK.fullmatch(_normal(request.path_info)):
            # clipblind_settings begins SQLite transactions IMMEDIATE: this one holds the write lock from
            # choosing the task until its lock is stored, so no two annotators are handed the same task
            with transaction.atomic():
                return self.get_response(request)
        return self.get_response(request)
