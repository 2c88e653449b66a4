"""One error convention for every command: a mistake the user can fix reads as one line.

Every exception class the project defines derives from `ClipblindError` (and keeps its builtin
base, so `except ValueError` still catches a `ParamsError`). `run_command(main, command, argv)` calls a
command's `main`: a `ClipblindError`, or a named input that does not exist (`FileNotFoundError`),
becomes `clipblind <command>: <message>` on stderr and exit code 1, without a traceback. With
`CLIPBLIND_DEBUG=1` in the environment the traceback is printed first. Anything else is a bug and
keeps its traceback; argparse's usage errors and params errors (`config.command_params`) exit 2.
`clipblind <command>` (pipeline/cli.py) and `python -m <module>` (what `dvc repro` runs) both go
through `run_command`, so an error reads the same from either.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence

DEBUG_ENV = "CLIPBLIND_DEBUG"
USER_ERROR_EXIT = 1  # a ClipblindError or a missing input
USAGE_EXIT = 2  # argparse's usage errors and bad params

Main = Callable[[Sequence[str] | None], int | None]


class ClipblindError(Exception):
    """A mistake the user can fix (an input, a param, a release, a server): its message names the
    item, the value and the fix, and a command prints it as one line, exit code 1, no traceback."""


USER_ERRORS: tuple[type[BaseException], ...] = (ClipblindError, FileNotFoundError)


def debugging() -> bool:
    """Whether `CLIPBLIND_DEBUG` asks for tracebacks (set, and neither empty nor "0")."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def error_line(command: str, message: str) -> str:
    """`clipblind <command>: <message>`: how every command states an error."""
    return f"clipblind {command}: {message}"


def command_of(prog: str) -> str:
    """The command an argparse `prog` names: "clipblind push-verification" → "push-verification"."""
    return prog.removeprefix("clipblind ").strip()


def report(command: str, message: str) -> None:
    """Print `error_line(command, message)` to stderr."""
    print(error_line(command, message), file=sys.stderr, flush=True)


def message(err: BaseException) -> str:
    """What went wrong, as the error line says it (a missing file: its path, not errno's wording)."""
    if isinstance(err, FileNotFoundError) and err.filename is not None:
        return f"no such file or directory: {err.filename}"
    return str(err)


# The import name of each optional dependency and the extra of pyproject.toml that installs it
# (tests/core/test_errors.py checks this table against pyproject.toml's extras).
EXTRA_OF_MODULE: dict[str, str] = {
    "torch": "pipeline", "torchvision": "pipeline", "open_clip": "pipeline", "transformers": "pipeline",
    "faiss": "pipeline", "braceexpand": "pipeline", "fsspec": "pipeline", "matplotlib": "pipeline",
    "label_studio_sdk": "annotation", "httpx": "annotation", "requests": "annotation", "ray": "ray",
}


def missing_extra(err: ImportError) -> str | None:
    """What to install when `err` is an optional dependency that is not installed; None otherwise."""
    top = (err.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(top) if isinstance(err, ModuleNotFoundError) else None
    if extra is None:
        return None
    return f"needs the '{extra}' extra ({top} is not installed): pip install 'clipblind[{extra}]'"


def quiet_broken_pipe() -> int:
    """The reader of stdout went away (`clipblind status | head -1`): stop quietly, as Python's docs advise."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return USER_ERROR_EXIT


def run_command(main: Main, command: str, argv: Sequence[str] | None = None) -> int:
    """Call `main(argv)` for `clipblind <command>` and return its exit code; a user mistake
    (`USER_ERRORS`, or an optional dependency that is not installed) is reported as one line on
    stderr and returns 1; a closed stdout ends the command quietly."""
    try:
        code = int(main(argv) or 0)
        sys.stdout.flush()  # here, so a reader that went away is seen inside the try
        return code
    except USER_ERRORS as err:
        if debugging():
            traceback.print_exc()
        report(command, message(err))
        return USER_ERROR_EXIT
    except ModuleNotFoundError as err:
        hint = missing_extra(err)
        if hint is None:
            raise
        if debugging():
            traceback.print_exc()
        report(command, hint)
        return USER_ERROR_EXIT
    except BrokenPipeError:
        return quiet_broken_pipe()
