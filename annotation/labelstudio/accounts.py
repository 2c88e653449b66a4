"""Create or update one annotator account; runs inside Label Studio's own virtualenv.

Reads {"email", "password"} from CLIPBLIND_NEW_USER and the server's data dir and database
from the same environment the server runs with. Signup is closed, so this is how
annotators get accounts: created directly in the database, added to the admin's organisation.
"""

import json
import os
import sys

import label_studio

sys.path.insert(0, os.path.dirname(label_studio.__file__))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "label_studio.core.settings.label_studio")

import django  # noqa: E402

django.setup()

from organizations.models import Organization  # noqa: E402
from users.models import User  # noqa: E402


def main() -> int:
    """Create the user (or reset its password) and add it to the organisation."""
    wanted = json.loads(os.environ["CLIPBLIND_NEW_USER"])
    organization = Organization.objects.order_by("id").first()
    if organization is None:
        print("no organisation yet: start the server once (clipblind labelstudio start)", file=sys.stderr)
        return 1
    user = User.objects.filter(email=wanted["email"]).first()
    if user is None:
        user = User.objects.create_user(email=wanted["email"], password=wanted["password"])
    else:
        user.set_password(wanted["password"])
    user.active_organization = organization
    user.save()
    organization.add_user(user)
    print(user.id)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
