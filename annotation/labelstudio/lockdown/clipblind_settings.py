"""Django settings of clipblind's Label Studio servers; runs inside Label Studio's own virtualenv.

Label Studio's own settings, plus the lockdown middleware (clipblind_lockdown) in front of every
request, private permissions for the files Django stores, and a session cookie named per server:
the writing and the verification server both listen on 127.0.0.1, and a browser keeps cookies per
host, not per port, so one shared name would log the lead out of one server on each login to the
other.

The launcher (annotation/labelstudio/server.py) puts this folder on PYTHONPATH and names this
module in DJANGO_SETTINGS_MODULE, with CLIPBLIND_LS_ROLE and CLIPBLIND_LS_DISPLAY_DIR set.
"""

import os

LABEL_STUDIO_SETTINGS = "label_studio.core.settings.label_studio"

# Label Studio's settings read django.conf.settings while they load (to set up Sentry); Django then
# loads the module DJANGO_SETTINGS_MODULE names, which must be Label Studio's own, half-loaded one, as
# when it runs alone: this module has no settings yet at that point.
os.environ["DJANGO_SETTINGS_MODULE"] = LABEL_STUDIO_SETTINGS
try:
    from label_studio.core.settings.label_studio import *  # noqa: F403
    from label_studio.core.settings.label_studio import DATABASES
    from label_studio.core.settings.label_studio import MIDDLEWARE as LABEL_STUDIO_MIDDLEWARE
finally:
    os.environ["DJANGO_SETTINGS_MODULE"] = __name__

# Lockdown first (what nobody may do); AnnotationOwner last, once the session has named the user.
MIDDLEWARE = ["clipblind_lockdown.Lockdown", *LABEL_STUDIO_MIDDLEWARE, "clipblind_lockdown.AnnotationOwner"]
SESSION_COOKIE_NAME = f"clipblind_{os.environ['CLIPBLIND_LS_ROLE']}_session"
# Files Django stores (export snapshots, uploads) are chmod-ed to these, whatever the umask: the
# owner's alone, as everything in the data folder.
FILE_UPLOAD_PERMISSIONS = 0o600
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o700
# SQLite with many people at once (tests/annotation/test_load.py): each transaction takes the write lock when it
# begins, so a read that then writes cannot deadlock with another writer (SQLite answers that at once with
# "database is locked", a 500 for ten people logging in together), and waits up to 30 s for the lock.
_DATABASE = DATABASES["default"]
if _DATABASE["ENGINE"] == "django.db.backends.sqlite3":
    _DATABASE["OPTIONS"] = {**_DATABASE.get("OPTIONS", {}), "timeout": 30, "transaction_mode": "IMMEDIATE"}
