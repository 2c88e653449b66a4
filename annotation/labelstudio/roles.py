"""The annotation servers, one per role, and the accounts each holds: the closed set, defined here once.

Label Studio's open-source edition lets every member of an organisation read every project of it
(annotations, exports, task data), so writers and verifiers never share a server: the writing server
holds the writing project and the writers' accounts, the verification server the verification project
and the verifiers' accounts. The lead is the admin of both. Each server has its own port, data folder
(`<labelstudio.data_dir>/<server>`), database, secret key and admin secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.core.net import LOOPBACK
from pipeline.params import LabelStudioParams

Role = Literal["writing", "verification"]
WRITING: Role = "writing"
VERIFICATION: Role = "verification"
SERVERS: tuple[Role, ...] = (WRITING, VERIFICATION)

# `clipblind labelstudio add-user --role`: each account role lives on one server only.
ACCOUNTS: dict[str, Role] = {"writer": WRITING, "verifier": VERIFICATION}

# With labelstudio.database: postgresql, the writing server uses the database POSTGRE_NAME names and
# the verification server POSTGRE_NAME + this suffix (both must exist; Label Studio creates the tables).
POSTGRES_SUFFIX: dict[Role, str] = {WRITING: "", VERIFICATION: "_verification"}


@dataclass(frozen=True)
class RoleServer:
    """One role's Label Studio server: where it listens, keeps its state, and which project it holds."""

    role: Role
    params: LabelStudioParams

    @property
    def port(self) -> int:
        """The port it listens on, on the loopback."""
        return self.params.port if self.role == WRITING else self.params.verification_port

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def data_dir(self) -> Path:
        """Its own state folder: database, secret key, admin secret, PID file, log."""
        return Path(self.params.data_dir) / self.role

    @property
    def project(self) -> str:
        """Title of the one project it holds."""
        return self.params.writing_project if self.role == WRITING else self.params.verification_project

    def database_name(self, base: str) -> str:
        """Its PostgreSQL database, from POSTGRE_NAME's value `base`."""
        return base + POSTGRES_SUFFIX[self.role]


def server(params: LabelStudioParams, role: Role) -> RoleServer:
    """The server of `role` as `params` describe it."""
    if role not in SERVERS:
        raise ValueError(f"no Label Studio server for role {role!r}; servers: {', '.join(SERVERS)}")
    return RoleServer(role, params)


def servers(params: LabelStudioParams) -> list[RoleServer]:
    """Every role's server, writing first."""
    return [RoleServer(role, params) for role in SERVERS]
