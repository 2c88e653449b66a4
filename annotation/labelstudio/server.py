"""labelstudio: start, stop and inspect the local, locked-down Label Studio; create annotators.

The server runs from its own virtual environment (Label Studio >= 1.23.2; `make labelstudio`
builds `.venv-labelstudio/`), bound to 127.0.0.1 only, with the version check, telemetry and
Sentry off, signup closed, SQLite by default (PostgreSQL when `labelstudio.database` says so
and the POSTGRE_* variables are set), and local-files serving confined to the display folder.

The admin account and API token come from CLIPBLIND_LS_EMAIL / CLIPBLIND_LS_PASSWORD /
CLIPBLIND_LS_TOKEN, or from a secret file generated on first start (`<data_dir>/admin.json`,
mode 0600). There is no default password. A second `start` finds the running server by its
PID file and starts nothing.

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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.atomic import write_bytes
from pipeline.core.config import command_params, load_section
from pipeline.core.errors import ClipblindError
from pipeline.core.net import LOOPBACK
from pipeline.params import LabelStudioParams

HOST = LOOPBACK
VENV_ENV = "CLIPBLIND_LABELSTUDIO_VENV"
SECRET_ENV = {"email": "CLIPBLIND_LS_EMAIL", "password": "CLIPBLIND_LS_PASSWORD", "token": "CLIPBLIND_LS_TOKEN"}
POSTGRES_ENV = ("POSTGRE_NAME", "POSTGRE_USER", "POSTGRE_PASSWORD", "POSTGRE_HOST", "POSTGRE_PORT")


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


def admin(params: LabelStudioParams) -> Admin:
    """Admin credentials from the environment, else from (or into) the generated secret file."""
    from_env = {key: os.environ.get(var, "") for key, var in SECRET_ENV.items()}
    if all(from_env.values()):
        return Admin(**from_env)
    if any(from_env.values()):
        missing = [var for key, var in SECRET_ENV.items() if not from_env[key]]
        raise ServerError(f"set all of {list(SECRET_ENV.values())} or none; missing {missing}")
    secret = Path(params.data_dir) / "admin.json"
    if not secret.exists():
        generated = {
            "email": "admin@clipblind.local",
            "password": secrets.token_urlsafe(18),
            "token": secrets.token_hex(20),  # Label Studio keeps tokens of at most 40 characters
        }
        secret.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(secret, json.dumps(generated, indent=2).encode())
        secret.chmod(0o600)
    return Admin(**json.loads(secret.read_text()))


def database_env(params: LabelStudioParams) -> dict[str, str]:
    """Environment that locates the server's state: data dir and database, quiet and offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "CLIPBLIND_LS_"))}
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(Path(params.data_dir).resolve()),
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
    else:
        env["DJANGO_DB"] = "sqlite"
    return env


def server_env(params: LabelStudioParams, display_dir: Path, account: Admin) -> dict[str, str]:
    """The environment the server process runs with."""
    env = database_env(params)
    env.update(
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        LABEL_STUDIO_USERNAME=account.email,
        LABEL_STUDIO_PASSWORD=account.password,
        LABEL_STUDIO_USER_TOKEN=account.token,
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        # Label Studio refuses a storage equal to the document root, so the root is the display
        # folder's parent; only the storage `push` connects (the display folder) is served from it.
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(display_dir.resolve().parent),
    )
    return env


def _pid_file(params: LabelStudioParams) -> Path:
    return Path(params.data_dir) / "server.pid"


def running_pid(params: LabelStudioParams) -> int | None:
    """PID of the server this data dir started, if that process is still alive."""
    path = _pid_file(params)
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


def healthy(params: LabelStudioParams, timeout: float = 2.0) -> bool:
    """Whether the server answers its health check."""
    import requests

    try:
        return requests.get(f"{params.url}/health", timeout=timeout).ok
    except requests.RequestException:
        return False


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


@contextmanager
def _locked(params: LabelStudioParams) -> Iterator[None]:
    """Serialise start/stop of one data dir across processes."""
    lock = Path(params.data_dir) / "server.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def start(params: LabelStudioParams, display_dir: Path) -> tuple[int, bool]:
    """Start the server unless this data dir's server already runs; return (pid, started)."""
    with _locked(params):
        pid = running_pid(params)
        if pid is not None:
            return pid, False
        if not _port_free(params.port):
            raise ServerError(
                f"port {params.port} on {HOST} is taken by another program: stop it or set labelstudio.port"
            )
        display_dir.mkdir(parents=True, exist_ok=True)
        account = admin(params)
        env = server_env(params, display_dir, account)
        data_dir = Path(params.data_dir).resolve()
        cmd = [
            str(executable(params)), "start", "--no-browser", "--internal-host", HOST, "--port", str(params.port),
            "--data-dir", str(data_dir), "--enable-legacy-api-token", "--log-level", "WARNING",
        ]
        log = open(data_dir / "server.log", "ab")
        process = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        _pid_file(params).write_text(f"{process.pid}\n")
        deadline = time.monotonic() + params.start_timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                _pid_file(params).unlink(missing_ok=True)
                raise ServerError(f"Label Studio exited with code {process.returncode}:\n{_log_tail(data_dir)}")
            if healthy(params):
                return process.pid, True
            time.sleep(1.0)
        _terminate(process.pid)
        _pid_file(params).unlink(missing_ok=True)
        raise ServerError(
            f"Label Studio did not answer on {params.url} within {params.start_timeout_s:.0f} s "
            f"(raise labelstudio.start_timeout_s):\n{_log_tail(data_dir)}"
        )


def stop(params: LabelStudioParams) -> int | None:
    """Stop this data dir's server by its PID; return the PID stopped, None if none ran."""
    with _locked(params):
        pid = running_pid(params)
        if pid is not None:
            _terminate(pid)
        _pid_file(params).unlink(missing_ok=True)
        return pid


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


def add_user(params: LabelStudioParams, email: str, password: str | None) -> str:
    """Create (or reset the password of) an annotator account in the admin's organisation; return the password."""
    password = password or secrets.token_urlsafe(12)
    script = Path(__file__).with_name("accounts.py")
    env = database_env(params)
    env["CLIPBLIND_NEW_USER"] = json.dumps({"email": email, "password": password})
    python = executable(params).with_name("python")
    result = subprocess.run([str(python), str(script)], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise ServerError(f"could not create annotator {email!r}: {result.stderr.strip().splitlines()[-1:]}")
    return password


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `clipblind labelstudio {start,stop,status,add-user}`."""
    parser = argparse.ArgumentParser(prog="clipblind labelstudio", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    sub = parser.add_subparsers(dest="action", required=True)
    start_cmd = sub.add_parser("start", help="start the server (nothing if it already runs)")
    start_cmd.add_argument("--display", default="data/display", help="the display-image folder to serve")
    sub.add_parser("stop", help="stop the server started from this data dir")
    sub.add_parser("status", help="whether the server runs, and where")
    user_cmd = sub.add_parser("add-user", help="create an annotator account (signup is closed)")
    user_cmd.add_argument("email")
    user_cmd.add_argument("--password", help="default: a generated one, printed once")
    args = parser.parse_args(argv)
    params = load_params(args.params, parser)
    if args.action == "start":
        pid, started = start(params, Path(args.display))
        state = "started" if started else "already running"
        print(f"[labelstudio] {state}: {params.url} (pid {pid}); admin credentials in "
              f"{Path(params.data_dir) / 'admin.json'} unless set in {list(SECRET_ENV.values())}")
    elif args.action == "stop":
        stopped = stop(params)
        print(f"[labelstudio] stopped pid {stopped}" if stopped else "[labelstudio] not running")
    elif args.action == "status":
        running = running_pid(params)
        state = f"running (pid {running}), {'healthy' if healthy(params) else 'not answering'}" if running else "not running"
        print(f"[labelstudio] {params.url}: {state}")
    else:
        password = add_user(params, args.email, args.password)
        print(f"[labelstudio] annotator {args.email} can log in at {params.url}/user/login/ "
              f"with password: {password}")
    return 0


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "labelstudio"))
