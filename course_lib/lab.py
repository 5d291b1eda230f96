"""Open the course in JupyterLab: what `make lab` runs (``python -m course_lib.lab``).

It starts JupyterLab on the course folder, waits until the server answers, reads the address,
port and token the server really got (from its ``jpserver-<pid>.json`` file in Jupyter's runtime
folder) and prints them with an ``ssh -L`` line for remote machines and how to stop it. It works
where a plain ``jupyter lab`` stops or misleads:

* as root (containers, cloud machines, classroom images) it passes ``--allow-root`` and says so;
* with no display or over SSH it opens no browser (a text browser would take over the terminal);
* when the port is taken JupyterLab moves to another one, and the port printed is the one it got;
* lessons run on this Python: the server is given a ``python3`` kernel spec naming
  ``sys.executable``, ahead of any other ``python3`` spec (a user-wide ``ipykernel install --user``
  or a ``JUPYTER_PATH`` entry would otherwise win and start a Python without the course).

Ctrl-C (or SIGTERM/SIGHUP) stops the server the way Jupyter stops itself: kernels shut down,
its runtime files removed. JupyterLab runs in its own session, so only this process sees Ctrl-C
and JupyterLab never asks "Shut down this Jupyter server (y/[n])?".
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

from .config import LESSON_GLOB, LESSONS_DIR

__all__ = [
    "DEFAULT_PORT",
    "course_root",
    "start_page",
    "is_root_user",
    "wants_browser",
    "lab_command",
    "summary_lines",
    "main",
]

#: Where JupyterLab starts looking for a free port (it tries the next ones when this one is taken).
DEFAULT_PORT = 8888
#: The kernel name the lessons' notebook metadata ask for.
KERNEL_NAME = "python3"
STARTUP_TIMEOUT_S = 120.0  # a first start on a slow laptop imports a lot
STOP_TIMEOUT_S = 30.0  # Jupyter shuts every kernel down before it exits
POLL_S = 0.2
LOG_TAIL_LINES = 25
#: Environment variables a login over SSH sets.
SSH_ENV = ("SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY")
#: Addresses that mean "this machine": an SSH tunnel then targets localhost.
_ANY_OR_LOOPBACK = {"", "0.0.0.0", "::", "localhost", "127.0.0.1", "::1"}


class _Stop(Exception):
    """Raised by the SIGTERM/SIGHUP handler, so that they stop the server as Ctrl-C does."""


def course_root() -> Path:
    """The course folder (the one holding notebooks/): this package's parent."""
    return Path(__file__).resolve().parents[1]


def start_page(root: Path) -> str:
    """What JupyterLab opens, relative to ``root``: the first lesson, or notebooks/ if it has none."""
    lessons_dir = Path(root) / LESSONS_DIR
    if not lessons_dir.is_dir():
        raise FileNotFoundError(f"root: {lessons_dir} does not exist; expected the course's lessons there")
    lessons = sorted(lessons_dir.glob(LESSON_GLOB))
    return f"{LESSONS_DIR}/{lessons[0].name}" if lessons else LESSONS_DIR


def is_root_user() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def wants_browser(environ: Mapping[str, str], platform: str = sys.platform) -> bool:
    """Whether JupyterLab should open a browser here.

    An explicit ``BROWSER`` (VS Code's remote sessions set one that opens the local browser) wins;
    over SSH the browser would open on the wrong machine; on Linux with no display Python's
    ``webbrowser`` would start a text browser in this terminal.
    """
    if environ.get("BROWSER"):
        return True
    if any(environ.get(name) for name in SSH_ENV):
        return False
    if platform.startswith("linux") and not (environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY")):
        return False
    return True


def lab_command(
    root: Path,
    page: str,
    *,
    port: int = DEFAULT_PORT,
    as_root: bool = False,
    open_browser: bool = True,
    extra_args: Sequence[str] = (),
    python: str = sys.executable,
) -> list[str]:
    """The JupyterLab command line: serve ``root``, open ``page`` (relative to it), start at ``port``.

    ``python -m jupyterlab`` rather than the ``jupyter`` launcher, which runs whichever
    ``jupyter-lab`` comes first on PATH.
    """
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port: got {port!r}, expected an integer in 0..65535")
    cmd = [python, "-m", "jupyterlab", f"--ServerApp.root_dir={Path(root).resolve()}", f"--port={port}"]
    if as_root:
        cmd.append("--allow-root")
    if not open_browser:
        cmd.append("--no-browser")
    return [*cmd, *extra_args, page]


def summary_lines(
    info: Mapping[str, object],
    root: Path,
    page: str,
    *,
    requested_port: int,
    as_root: bool,
    open_browser: bool,
    log_path: Path | None = None,
) -> list[str]:
    """What `make lab` prints once the server is up; ``info`` is the server's jpserver-<pid>.json."""
    port = int(info["port"])  # type: ignore[arg-type]
    token = str(info.get("token") or "")
    address = f"{info['url']}lab/tree/{quote(page)}" + (f"?token={token}" if token else "")
    host = str(info.get("hostname") or "")
    tunnel_target = "localhost" if host in _ANY_OR_LOOPBACK else host
    moved = f" ({requested_port} was taken, so JupyterLab chose this one)" if port != requested_port else ""
    lines = [
        "The course is open in JupyterLab.",
        f"  Course:   {Path(root).resolve()} (lessons in {LESSONS_DIR}/, opening {page})",
        f"  Address:  {address}",
        f"  Port:     {port}{moved}",
    ]
    if as_root:
        lines.append("  Root:     you are root, so JupyterLab was started with --allow-root")
    lines.append(
        "  Browser:  opening the address in your browser"
        if open_browser
        else "  Browser:  none opened here (no display, or over SSH): open the address in your browser"
    )
    lines.append(
        f"  Over SSH: run `ssh -N -L {port}:{tunnel_target}:{port} {_user()}@{socket.gethostname()}` "
        "on your own computer, then open the address there"
    )
    log = f" (JupyterLab's messages: {log_path})" if log_path else ""
    lines.append(f"  Stop:     press Ctrl-C here{log}")
    return lines


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid with no passwd entry (some container platforms)
        return "USER"


def _runtime_dir() -> Path:
    from jupyter_core.paths import jupyter_runtime_dir

    return Path(jupyter_runtime_dir())


def _course_kernel_env(scratch: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The server's environment: a ``python3`` kernel spec naming this Python, first on JUPYTER_PATH."""
    from ipykernel.kernelspec import write_kernel_spec

    data_dir = scratch / "jupyter-data"
    write_kernel_spec(data_dir / "kernels" / KERNEL_NAME)  # argv: [sys.executable, "-m", "ipykernel_launcher", ...]
    env = dict(environ)
    env["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(data_dir), environ.get("JUPYTER_PATH", "")) if p)
    return env


def _answers(info: Mapping[str, object]) -> bool:
    """True when the server answers an authenticated request."""
    url = str(info.get("url", ""))
    if not url.startswith(("http://", "https://")):
        return True  # a Unix socket (--sock): the info file is all there is to wait for
    request = urllib.request.Request(f"{url}api/status", headers={"Authorization": f"token {info.get('token', '')}"})
    context = ssl._create_unverified_context() if url.startswith("https://") else None  # its own certificate
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _wait_until_up(proc: subprocess.Popen, info_file: Path, timeout: float) -> dict | None:
    """The server's info once it answers; None if it exited first or took longer than ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if info_file.exists():
            try:
                info = json.loads(info_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):  # caught while being written
                info = None
            if info and _answers(info):
                return info
        time.sleep(POLL_S)
    return None


def _stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()  # SIGTERM: Jupyter shuts its kernels down and removes its runtime files
        try:
            proc.wait(STOP_TIMEOUT_S)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):  # hung, or a second Ctrl-C: no more waiting
            proc.kill()  # its kernels notice their parent is gone and exit
            proc.wait()


def _log_tail(log_path: Path) -> str:
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-LOG_TAIL_LINES:])


def _failure(code: int | None) -> int:
    """An exit status for a server that failed: its own, or 1 when it was killed or hung."""
    return code if code is not None and code > 0 else 1


def _raise_stop(signum, frame):  # noqa: ARG001 - signal handler signature
    raise _Stop(signum)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.lab",
        description="Open the course in JupyterLab and print its address (what `make lab` runs).",
        epilog="Arguments after `--` go to JupyterLab unchanged, e.g.\n  python -m course_lib.lab -- --ServerApp.ip=0.0.0.0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"first port to try (default {DEFAULT_PORT}); JupyterLab moves on if it is taken")
    browser = parser.add_mutually_exclusive_group()
    browser.add_argument("--no-browser", dest="browser", action="store_false", default=None,
                         help="do not open a browser (default: open one if this machine has a display)")
    browser.add_argument("--browser", dest="browser", action="store_true", help="open a browser")
    parser.add_argument("--course-dir", type=Path, default=None, help="the course folder (default: this checkout)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args, extra = _parser().parse_args(argv[:split]), argv[split + 1:]
    root = (args.course_dir or course_root()).resolve()
    page = start_page(root)
    as_root = is_root_user()
    open_browser = wants_browser(os.environ) if args.browser is None else args.browser
    cmd = lab_command(root, page, port=args.port, as_root=as_root, open_browser=open_browser, extra_args=extra)

    scratch = Path(tempfile.mkdtemp(prefix="course-lab-"))
    log_path = scratch / "jupyterlab.log"
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if sig}
    proc = None
    try:
        env = _course_kernel_env(scratch, os.environ)
        print(f"Starting JupyterLab on {root} ...", flush=True)
        with open(log_path, "wb") as log:
            # Its own session: Ctrl-C reaches only this process, which then stops the server.
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=(os.name == "posix"))
        info = _wait_until_up(proc, _runtime_dir() / f"jpserver-{proc.pid}.json", STARTUP_TIMEOUT_S)
        if info is None:
            code = proc.poll()
            reason = f"exited with status {code}" if code is not None else f"did not answer within {STARTUP_TIMEOUT_S:.0f} s"
            print(f"JupyterLab {reason}. Its last messages:\n{_log_tail(log_path)}", file=sys.stderr, flush=True)
            return _failure(code)
        lines = summary_lines(info, root, page, requested_port=args.port, as_root=as_root,
                              open_browser=open_browser, log_path=log_path)
        print("\n".join(lines), flush=True)
        code = proc.wait()
        if code == 0:  # File > Shut Down in JupyterLab
            print("JupyterLab was shut down.", flush=True)
            return 0
        print(f"JupyterLab exited with status {code}. Its last messages:\n{_log_tail(log_path)}",
              file=sys.stderr, flush=True)
        return _failure(code)
    except (KeyboardInterrupt, _Stop):
        print("\nStopping JupyterLab (its kernels are shut down) ...", flush=True)
        if proc is not None:
            _stop_server(proc)
        print("JupyterLab stopped.", flush=True)
        return 0
    finally:
        if proc is not None:
            _stop_server(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
