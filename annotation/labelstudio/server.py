"""labelstudio: start, stop and inspect the local, locked-down Label Studio servers; create accounts.

One server per role (annotation.labelstudio.roles): the writing server (writers and the lead, the
writing project) and the verification server (verifiers and the lead, the verification project),
because the open-source Label Studio lets every account of a server read all of its projects. Each
has its own port, data folder `<data_dir>/<server>` (database, secret key, admin secret, PID file,
log), and accounts; `start`, `stop` and `status` act on both.

Each server runs from Label Studio's own virtual environment (Label Studio >= 1.23.2; `make
labelstudio` builds `.venv-labelstudio/`), bound to 127.0.0.1 only, with the version check,
telemetry and Sentry off, SQLite by default (PostgreSQL when `labelstudio.database` says so and the
POSTGRE_* variables are set: POSTGRE_NAME for the writing server, POSTGRE_NAME + "_verification"
for the verification server), under Django settings of ours (annotation/labelstudio/lockdown/):
no account is created but by `add-user` (signup, invite links and the user API refuse), and
local files are served only from the display folder, symlinks resolved. The data folders are
private (0700, the server runs with umask 077): the database holds the API tokens.

The admin account and API token come from CLIPBLIND_LS_EMAIL / CLIPBLIND_LS_PASSWORD /
CLIPBLIND_LS_TOKEN (the same lead on both servers), or from a secret file each server generates
on first start (`<data_dir>/<server>/admin.json`, mode 0600 from its first byte). There is no
default password. A second `start` finds a running server by its PID file and starts nothing.

Params: section `labelstudio` of params.yaml.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from annotation.labelstudio.roles import ACCOUNTS, SERVERS, Role, RoleServer, server, servers
from pipeline.core.atomic import write_bytes
from pipeline.core.config import command_params, load_section
from pipeline.core.errors import ClipblindError
from pipeline.core.net import LOOPBACK
from pipeline.core.report import summary
from pipeline.params import LabelStudioParams

STAGE = "labelstudio"
HOST = LOOPBACK
VENV_ENV = "CLIPBLIND_LABELSTUDIO_VENV"
SECRET_ENV = {"email": "CLIPBLIND_LS_EMAIL", "password": "CLIPBLIND_LS_PASSWORD", "token": "CLIPBLIND_LS_TOKEN"}
POSTGRES_ENV = ("POSTGRE_NAME", "POSTGRE_USER", "POSTGRE_PASSWORD", "POSTGRE_HOST", "POSTGRE_PORT")
LOCKDOWN = Path(__file__).with_name("lockdown")  # the Django settings module and middleware, run inside the server
SETTINGS_MODULE = "clipblind_settings"
PRIVATE_DIR, PRIVATE_FILE, PRIVATE_UMASK = 0o700, 0o600, 0o077
# What a data dir of the single-server layout (before one server per role) holds at its top.
SINGLE_SERVER_FILES = ("label_studio.sqlite3", "admin.json", "server.log", "server.pid")


class ServerError(ClipblindError, RuntimeError):
    """The Label Studio server cannot be started, reached or stopped as asked."""


@dataclass(frozen=True)
class Admin:
    """The admin account the commands act as."""

    email: str
    password: str
    token: str


def load_params(path: str | Path, parser: argparse.ArgumentParser | None = None) -> LabelStudioParams:
    """The `labelstudio` section of a params file; for a command line (`parser`), a problem exits with code 2."""
    if parser is not None:
        return command_params(parser, path, "labelstudio", LabelStudioParams)
    return load_section(path, "labelstudio", LabelStudioParams)


def executable(params: LabelStudioParams) -> Path:
    """The `label-studio` entry point of the server's own virtual environment."""
    venv = Path(os.environ.get(VENV_ENV) or params.venv)
    exe = venv / "bin" / "label-studio"
    if not exe.exists():
        raise ServerError(
            f"Label Studio not found at {exe}: run `make labelstudio` to build {params.venv}/ "
            f"(or set {VENV_ENV} to a virtualenv with label-studio>=1.23.2)"
        )
    return exe


def check_layout(params: LabelStudioParams) -> None:
    """Refuse a data dir of the single-server layout: its one database holds both projects and every account."""
    top = Path(params.data_dir)
    found = [name for name in SINGLE_SERVER_FILES if (top / name).exists()]
    if found:
        raise ServerError(
            f"{top} holds a single Label Studio server ({', '.join(found)}), where verifiers could read the "
            f"writers' answers; servers are now one per role ({', '.join(str(top / r) for r in SERVERS)}). "
            "Pull what it holds with the clipblind version that started it (clipblind pull writing; clipblind "
            "pull verification; commit labels/), stop it (clipblind labelstudio stop), move it aside "
            f"(mv {top} {top}.single) and start again: push and push-verification fill the new servers"
        )


def private_dir(path: Path) -> Path:
    """`path` as a folder only its owner can enter (created if missing)."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    path.chmod(PRIVATE_DIR)
    return path


def _private_open(path: Path, flags: int) -> int:
    """A file descriptor on `path`, created 0600 if it does not exist."""
    return os.open(path, flags | os.O_CREAT, PRIVATE_FILE)


def admin(role_server: RoleServer) -> Admin:
    """Admin credentials from the environment, else from (or into) the server's generated secret file."""
    from_env = {key: os.environ.get(var, "") for key, var in SECRET_ENV.items()}
    if all(from_env.values()):
        return Admin(**from_env)
    if any(from_env.values()):
        missing = [var for key, var in SECRET_ENV.items() if not from_env[key]]
        raise ServerError(f"set all of {list(SECRET_ENV.values())} or none; missing {missing}")
    secret = role_server.data_dir / "admin.json"
    if not secret.exists():
        generated = {
            "email": "admin@clipblind.local",
            "password": secrets.token_urlsafe(18),
            "token": secrets.token_hex(20),  # Label Studio keeps tokens of at most 40 characters
        }
        private_dir(Path(role_server.params.data_dir))
        private_dir(role_server.data_dir)
        write_bytes(secret, json.dumps(generated, indent=2).encode(), mode=PRIVATE_FILE)
    return Admin(**json.loads(secret.read_text()))


def database_env(role_server: RoleServer) -> dict[str, str]:
    """Environment that locates one server's state: data dir and database, quiet and offline."""
    params = role_server.params
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "CLIPBLIND_LS_", "DJANGO_"))}
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(role_server.data_dir.resolve()),
        LATEST_VERSION_CHECK="false",
        COLLECT_ANALYTICS="false",
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
    )
    if params.database == "postgresql":
        missing = [var for var in POSTGRES_ENV if not os.environ.get(var)]
        if missing:
            raise ServerError(f"labelstudio.database is postgresql but {missing} are not set in the environment")
        env["DJANGO_DB"] = "postgresql"
        env["POSTGRE_NAME"] = role_server.database_name(os.environ["POSTGRE_NAME"])
    else:
        env["DJANGO_DB"] = "sqlite"
    return env


def server_env(role_server: RoleServer, display_dir: Path, account: Admin) -> dict[str, str]:
    """The environment one server process runs with."""
    env = database_env(role_server)
    env.update(
        DJANGO_SETTINGS_MODULE=SETTINGS_MODULE,
        PYTHONPATH=os.pathsep.join([str(LOCKDOWN.resolve()), *filter(None, [os.environ.get("PYTHONPATH")])]),
        CLIPBLIND_LS_ROLE=role_server.role,
        CLIPBLIND_LS_DISPLAY_DIR=str(display_dir.resolve()),
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        LABEL_STUDIO_USERNAME=account.email,
        LABEL_STUDIO_PASSWORD=account.password,
        LABEL_STUDIO_USER_TOKEN=account.token,
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        # Label Studio refuses a storage equal to the document root, so the root is the display
        # folder's parent; the lockdown middleware serves only files directly in the display folder.
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(display_dir.resolve().parent),
    )
    return env


def _pid_file(role_server: RoleServer) -> Path:
    return role_server.data_dir / "server.pid"


def running_pid(role_server: RoleServer) -> int | None:
    """PID of the server this data dir started, if that process is still alive."""
    path = _pid_file(role_server)
    if not path.exists():
        return None
    try:
        pid = int(path.read_text().split()[0])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError):
        return None
    except PermissionError:
        return pid
    return pid


def healthy(role_server: RoleServer, timeout: float = 2.0) -> bool:
    """Whether the server answers its health check."""
    import requests

    try:
        return requests.get(f"{role_server.url}/health", timeout=timeout).ok
    except requests.RequestException:
        return False


def port_free(port: int) -> bool:
    """Whether a server could listen on `port` now: a listener takes it, closed connections (TIME-WAIT) do not."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server's own listener binds
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


@contextmanager
def _locked(role_server: RoleServer) -> Iterator[None]:
    """Serialise start/stop of one server's data dir across processes."""
    private_dir(Path(role_server.params.data_dir))
    fd = _private_open(private_dir(role_server.data_dir) / "server.lock", os.O_WRONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def start(params: LabelStudioParams, display_dir: Path) -> dict[Role, tuple[int, bool]]:
    """Start every role's server that does not run yet, side by side; return {role: (pid, started)}."""
    check_layout(params)
    found: dict[Role, tuple[int, bool]] = {}
    with ExitStack() as locks:
        launched: dict[Role, subprocess.Popen[bytes]] = {}
        try:
            for role_server in servers(params):
                locks.enter_context(_locked(role_server))
                pid = running_pid(role_server)
                if pid is not None:
                    found[role_server.role] = (pid, False)
                    continue
                if not port_free(role_server.port):
                    key = "port" if role_server.role == SERVERS[0] else f"{role_server.role}_port"
                    raise ServerError(f"port {role_server.port} on {HOST} (the {role_server.role} server) is taken "
                                      f"by another program: stop it or set labelstudio.{key}")
                launched[role_server.role] = _launch(role_server, display_dir)
            for role, process in launched.items():
                _await(server(params, role), process)
                found[role] = (process.pid, True)
        except BaseException:
            for role, process in launched.items():
                _terminate(process.pid)
                _pid_file(server(params, role)).unlink(missing_ok=True)
            raise
    return {role: found[role] for role in SERVERS}


def _launch(role_server: RoleServer, display_dir: Path) -> subprocess.Popen[bytes]:
    """Start one server process (its data dir private, umask 077) and record its PID."""
    display_dir.mkdir(parents=True, exist_ok=True)
    account = admin(role_server)
    env = server_env(role_server, display_dir, account)
    data_dir = role_server.data_dir.resolve()
    cmd = [
        str(executable(role_server.params)), "start", "--no-browser", "--internal-host", HOST,
        "--port", str(role_server.port), "--data-dir", str(data_dir), "--enable-legacy-api-token",
        "--log-level", "WARNING",
    ]
    log = _private_open(data_dir / "server.log", os.O_WRONLY | os.O_APPEND)
    try:
        process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, umask=PRIVATE_UMASK)
    finally:
        os.close(log)
    write_bytes(_pid_file(role_server), f"{process.pid}\n".encode(), mode=PRIVATE_FILE)
    return process


def _await(role_server: RoleServer, process: subprocess.Popen[bytes]) -> None:
    """Wait until the server answers its health check; raise with its log if it exits or stays silent."""
    deadline = time.monotonic() + role_server.params.start_timeout_s
    data_dir = role_server.data_dir
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _pid_file(role_server).unlink(missing_ok=True)
            raise ServerError(f"Label Studio ({role_server.role} server) exited with code {process.returncode}:\n"
                              f"{_log_tail(data_dir)}")
        if healthy(role_server):
            return
        time.sleep(1.0)
    raise ServerError(
        f"Label Studio ({role_server.role} server) did not answer on {role_server.url} within "
        f"{role_server.params.start_timeout_s:.0f} s (raise labelstudio.start_timeout_s):\n{_log_tail(data_dir)}"
    )


def stop_single_server(params: LabelStudioParams) -> int | None:
    """Stop a server of the single-server layout by the PID file at the top of the data dir; return its PID."""
    path = Path(params.data_dir) / "server.pid"
    try:
        pid = int(path.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    _terminate(pid)
    path.unlink(missing_ok=True)
    return pid


def stop(params: LabelStudioParams) -> dict[Role, int | None]:
    """Stop every role's server by its PID; return {role: the PID stopped, None if none ran}."""
    stopped: dict[Role, int | None] = {}
    for role_server in servers(params):
        with _locked(role_server):
            pid = running_pid(role_server)
            if pid is not None:
                _terminate(pid)
            _pid_file(role_server).unlink(missing_ok=True)
            stopped[role_server.role] = pid
    return stopped


def _terminate(pid: int, grace_s: float = 15.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)  # the server's own session: it and the workers it forked
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _log_tail(data_dir: Path, lines: int = 30) -> str:
    log = data_dir / "server.log"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"


def add_user(params: LabelStudioParams, email: str, password: str | None, account: str) -> tuple[RoleServer, str]:
    """Create (or reset the password of) an account of role `account` (ACCOUNTS: writer, verifier) on that
    role's server only, in its admin's organisation; return the server and the password."""
    if account not in ACCOUNTS:
        raise ServerError(f"no account role {account!r}: use one of {', '.join(ACCOUNTS)}")
    check_layout(params)
    role_server = server(params, ACCOUNTS[account])
    password = password or secrets.token_urlsafe(12)
    script = Path(__file__).with_name("accounts.py")
    env = database_env(role_server)
    env["CLIPBLIND_NEW_USER"] = json.dumps({"email": email, "password": password})
    python = executable(params).with_name("python")
    result = subprocess.run([str(python), str(script)], env=env, capture_output=True, text=True,
                            umask=PRIVATE_UMASK)
    if result.returncode != 0:
        raise ServerError(f"could not create {account} {email!r} on the {role_server.role} server: "
                          f"{result.stderr.strip().splitlines()[-1:]}")
    return role_server, password


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `clipblind labelstudio {start,stop,status,add-user}`."""
    parser = argparse.ArgumentParser(prog="clipblind labelstudio", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    sub = parser.add_subparsers(dest="action", required=True)
    start_cmd = sub.add_parser("start", help="start both servers (nothing for one that already runs)")
    start_cmd.add_argument("--display", default="data/display", help="the display-image folder to serve")
    sub.add_parser("stop", help="stop both servers started from this data dir")
    sub.add_parser("status", help="whether each server runs, and where")
    user_cmd = sub.add_parser("add-user", help="create an account on its role's server (signup is closed)")
    user_cmd.add_argument("email")
    user_cmd.add_argument("--role", required=True, choices=tuple(ACCOUNTS),
                          help=", ".join(f"{a}: on the {r} server" for a, r in ACCOUNTS.items()))
    user_cmd.add_argument("--password", help="default: a generated one, printed once")
    args = parser.parse_args(argv)
    params = load_params(args.params, parser)
    if args.action == "start":
        started = start(params, Path(args.display))
        for role, (pid, new) in started.items():
            role_server = server(params, role)
            credentials = (f"env {', '.join(SECRET_ENV.values())}" if all(os.environ.get(v) for v in SECRET_ENV.values())
                           else role_server.data_dir / "admin.json")
            print(f"[{STAGE}] {role} server {'started' if new else 'already running'}: {role_server.url} "
                  f"(pid {pid}); admin credentials: {credentials}")
        summary(STAGE, f"{sum(new for _, new in started.values())} started, "
                       f"{sum(not new for _, new in started.values())} already running")
    elif args.action == "stop":
        single = stop_single_server(params)
        if single is not None:
            print(f"[{STAGE}] stopped the single-server Label Studio of {params.data_dir} (pid {single})")
        stopped = stop(params)
        summary(STAGE, ", ".join(f"{role} server: " + (f"stopped pid {pid}" if pid else "not running")
                                 for role, pid in stopped.items()))
    elif args.action == "status":
        states = []
        for role_server in servers(params):
            running = running_pid(role_server)
            health = "healthy" if running and healthy(role_server) else "not answering"
            states.append(f"{role_server.role} {role_server.url}: "
                          + (f"running (pid {running}), {health}" if running else "not running"))
        summary(STAGE, "; ".join(states))
    else:
        role_server, password = add_user(params, args.email, args.password, args.role)
        summary(STAGE, f"{args.role} {args.email} can log in to the {role_server.role} server at "
                       f"{role_server.url}/user/login/ with password: {password}")
    return 0


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "labelstudio"))
