"""A real, throwaway PostgreSQL server for tests: Debian's `postgresql` package, a cluster initdb'ed in a temp
folder, run as the `postgres` system user when the tests run as root (PostgreSQL refuses to run as root),
listening on 127.0.0.1 at a free port, stopped by its PID at the end.

`binaries()` finds the server programs (None when the package is missing: `apt-get install postgresql`);
`cluster(databases)` starts one with a login role owning each database, yields how to reach it, and stops it.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.net import LOOPBACK

INSTALL_HINT = "apt-get install -y postgresql (Debian's package; .ci/run installs it)"
PROGRAMS = ("initdb", "postgres", "pg_isready", "psql")
SYSTEM_USER = "postgres"  # the account Debian's package creates, which the server runs as when we are root
ROLE = "clipblind"


@dataclass(frozen=True)
class Postgres:
    """A running cluster: where it listens and the login role that owns its databases."""

    host: str
    port: int
    user: str
    password: str
    pid: int  # the postmaster's own PID (from postmaster.pid)
    data_dir: Path

    def env(self, database: str) -> dict[str, str]:
        """The POSTGRE_* variables Label Studio reads to reach `database`."""
        return {"POSTGRE_NAME": database, "POSTGRE_USER": self.user, "POSTGRE_PASSWORD": self.password,
                "POSTGRE_HOST": self.host, "POSTGRE_PORT": str(self.port)}


def binaries() -> Path | None:
    """The folder holding initdb, postgres, pg_isready and psql (the newest installed version), or None."""

    def version(folder: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", folder.parent.name))

    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for folder in candidates:
        if all((folder / program).is_file() for program in PROGRAMS):
            return folder
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def _as_server_user() -> list[str]:
    """The prefix that runs a program as the cluster's owner: runuser to `postgres` when we are root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError as err:
        raise RuntimeError(f"running as root, but there is no {SYSTEM_USER!r} system user to run PostgreSQL as: "
                           f"{INSTALL_HINT}") from err
    return ["runuser", "-u", SYSTEM_USER, "--"]


def _run(cmd: Sequence[str], what: str) -> str:
    result = subprocess.run(list(cmd), capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"PostgreSQL: {what} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result.stdout


def _stop(pid: int, wrapper: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Stop the postmaster by its PID (fast shutdown: SIGINT), then its runuser wrapper."""
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        pass
    try:
        wrapper.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.kill(pid, signal.SIGKILL)
        wrapper.wait(timeout=10)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise RuntimeError(f"PostgreSQL (pid {pid}) did not stop within {timeout_s:.0f} s")


@contextmanager
def cluster(databases: Sequence[str], bin_dir: Path) -> Iterator[Postgres]:
    """A fresh cluster on 127.0.0.1 with a login role owning each of `databases`; stopped and removed at the end."""
    root = Path(tempfile.mkdtemp(prefix="clipblind-postgres-"))  # not under pytest's root-only tmp: postgres must enter
    data, sockets, log = root / "data", root / "sockets", root / "server.log"
    sockets.mkdir()
    prefix = _as_server_user()
    if prefix:
        account = pwd.getpwnam(SYSTEM_USER)
        for path in (root, sockets):
            os.chown(path, account.pw_uid, account.pw_gid)
    password = secrets.token_urlsafe(16)
    port = _free_port()
    wrapper: subprocess.Popen[bytes] | None = None
    pid = 0
    try:
        # local (socket) connections of the owner need no password; TCP ones need the role's password
        _run([*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", SYSTEM_USER, "--auth-local=trust",
              "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-sync"], "initdb")
        with open(log, "wb") as out:
            wrapper = subprocess.Popen(
                [*prefix, str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-c", f"listen_addresses={LOOPBACK}",
                 "-c", f"unix_socket_directories={sockets}", "-c", "fsync=off", "-c", "max_connections=200"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            ready = subprocess.run([str(bin_dir / "pg_isready"), "-h", LOOPBACK, "-p", str(port)], capture_output=True)
            if ready.returncode == 0 and (data / "postmaster.pid").exists():
                break
            if wrapper.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start on {LOOPBACK}:{port}: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
        pid = int((data / "postmaster.pid").read_text().split()[0])
        psql = [*prefix, str(bin_dir / "psql"), "-h", str(sockets), "-p", str(port), "-U", SYSTEM_USER, "-d", "postgres",
                "-v", "ON_ERROR_STOP=1", "-q"]
        _run([*psql, "-c", f"CREATE ROLE {ROLE} LOGIN PASSWORD '{password}'"], "create role")
        for name in databases:
            _run([*psql, "-c", f'CREATE DATABASE "{name}" OWNER {ROLE}'], f"create database {name}")
        yield Postgres(host=LOOPBACK, port=port, user=ROLE, password=password, pid=pid, data_dir=data)
    finally:
        if wrapper is not None:
            if pid:
                _stop(pid, wrapper)
            elif wrapper.poll() is None:  # it never became ready: its whole session (runuser and postgres) goes
                os.killpg(wrapper.pid, signal.SIGTERM)
                wrapper.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
