"""`make lab`: the JupyterLab command line it builds, and the server it starts as the tests' user.

The server tests run `python -m course_lib.lab`, the recipe of the Makefile's `lab` target, with
Jupyter's folders in a temporary directory (see conftest.py) and no browser.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from course_grader import colab
from course_lib import lab

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 40.0
DECOY_PYTHON = "/nonexistent/python-without-the-course"
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ---------------------------------------------------------------- the command line, the printed lines

def test_makefile_lab_target_runs_the_lab_module():
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^lab:[^\n]*\n((?:\t[^\n]*\n)+)", makefile, re.M)
    assert recipe, "no `lab` target in the Makefile"
    assert recipe.group(1).strip().splitlines() == ["$(PY) -m course_lib.lab $(LAB_ARGS)"]


@pytest.mark.parametrize("as_root", [True, False])
@pytest.mark.parametrize("open_browser", [True, False])
def test_lab_command_flags(as_root, open_browser, tmp_path):
    cmd = lab.lab_command(tmp_path, "notebooks/01_x.ipynb", port=9123, as_root=as_root,
                          open_browser=open_browser, extra_args=["--ServerApp.ip=0.0.0.0"])
    assert cmd[:3] == [sys.executable, "-m", "jupyterlab"]
    assert f"--ServerApp.root_dir={tmp_path.resolve()}" in cmd
    assert "--port=9123" in cmd
    assert ("--allow-root" in cmd) is as_root
    assert ("--no-browser" in cmd) is (not open_browser)
    # extra arguments reach JupyterLab; the page to open is the one positional argument, last
    assert cmd[-2:] == ["--ServerApp.ip=0.0.0.0", "notebooks/01_x.ipynb"]


@pytest.mark.parametrize("port", [-1, 65536, 8888.0, "8888", True])
def test_lab_command_rejects_bad_ports(port, tmp_path):
    with pytest.raises(ValueError, match="port"):
        lab.lab_command(tmp_path, "notebooks", port=port)


@pytest.mark.parametrize(("environ", "platform", "expected"), [
    ({}, "linux", False),                                       # a container or server: no display
    ({"DISPLAY": ":0"}, "linux", True),
    ({"WAYLAND_DISPLAY": "wayland-0"}, "linux", True),
    ({"DISPLAY": ":0", "SSH_CONNECTION": "1.2.3.4 5 6.7.8.9 22"}, "linux", False),  # ssh -X
    ({"SSH_TTY": "/dev/pts/0"}, "darwin", False),
    ({}, "darwin", True),
    ({}, "win32", True),
    ({"SSH_CLIENT": "1.2.3.4 5 22", "BROWSER": "/vscode/browser.sh"}, "linux", True),  # an explicit choice wins
    ({"DISPLAY": ""}, "linux", False),
])
def test_wants_browser(environ, platform, expected):
    assert lab.wants_browser(environ, platform) is expected


def test_start_page_is_the_first_lesson_of_the_readme_table():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index(colab.README_START):readme.index(colab.README_END)]
    first_lesson = re.search(r"\[(notebooks/[^\]]+\.ipynb)\]", table).group(1)
    page = lab.start_page(ROOT)
    assert page == first_lesson and page.startswith("notebooks/01_")


def test_start_page_orders_lessons_and_falls_back_to_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="root"):
        lab.start_page(tmp_path)
    (tmp_path / "notebooks").mkdir()
    assert lab.start_page(tmp_path) == "notebooks"
    for name in ("10_ten.ipynb", "02_two.ipynb", "scratch.ipynb", "1_short.ipynb", "01_one.ipynb", "00_notes.txt"):
        (tmp_path / "notebooks" / name).write_text("{}")
    assert lab.start_page(tmp_path) == "notebooks/01_one.ipynb"


def _info(port=8889, token="abc", hostname="localhost"):
    return {"port": port, "token": token, "url": f"http://{hostname}:{port}/", "hostname": hostname}


def test_summary_lines_say_where_the_course_is_and_how_to_stop(tmp_path):
    page = "notebooks/01 first.ipynb"
    lines = lab.summary_lines(_info(), tmp_path, page, requested_port=8888, as_root=True, open_browser=False,
                              log_path=tmp_path / "jupyterlab.log")
    text = "\n".join(lines)
    assert f"  Course:   {tmp_path.resolve()} " in text and page in text
    assert "  Address:  http://localhost:8889/lab/tree/notebooks/01%20first.ipynb?token=abc" in lines
    assert "  Port:     8889 (8888 was taken, so JupyterLab chose this one)" in lines
    assert sum("--allow-root" in line for line in lines) == 1
    assert re.search(r"ssh -N -L 8889:localhost:8889 \S+@\S+", text)
    assert lines[-1] == f"  Stop:     press Ctrl-C here (JupyterLab's messages: {tmp_path / 'jupyterlab.log'})"


def test_summary_lines_without_root_token_or_moved_port(tmp_path):
    lines = lab.summary_lines(_info(port=8888, token="", hostname="10.0.0.5"), tmp_path, "notebooks",
                              requested_port=8888, as_root=False, open_browser=True)
    text = "\n".join(lines)
    assert "  Address:  http://10.0.0.5:8888/lab/tree/notebooks" in lines  # no token configured: none printed
    assert "  Port:     8888" in lines
    assert "--allow-root" not in text and not any(line.startswith("  Root:") for line in lines)
    assert "ssh -N -L 8888:10.0.0.5:8888" in text  # a server on a given address is tunnelled to that address
    assert "opening the address in your browser" in text
    assert lines[-1] == "  Stop:     press Ctrl-C here"


# ---------------------------------------------------------------- the server, started as `make lab` does

class _LabRun:
    """`python -m course_lib.lab ...` (the Makefile's recipe) with its output collected line by line."""

    def __init__(self, args, env):
        self.proc = subprocess.Popen([sys.executable, "-m", "course_lib.lab", *args], cwd=ROOT, env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for_summary(self) -> list[str]:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if any(line.startswith("  Stop:") for line in self.lines):
                return list(self.lines)
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        pytest.fail("`make lab` printed no address:\n" + "\n".join(self.lines))

    def finish(self) -> int:
        """Wait until it exits by itself (a failed start)."""
        code = self.proc.wait(STARTUP_TIMEOUT_S)
        self._reader.join(5)
        return code

    def stop(self) -> int:
        """Ctrl-C, as a terminal sends it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self._reader.join(5)
        return code


def _field(lines, label):
    return next(line.split(":", 1)[1].strip() for line in lines if line.startswith(f"  {label}:"))


def _get(url, **headers):
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=20) as response:
        return response.status, response.read().decode("utf-8", errors="replace")


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def lab_env(tmp_path, monkeypatch):
    """Jupyter folders of the test's own, and a `python3` kernel spec that names a Python without the course.

    It stands for a learner's earlier `python3 -m ipykernel install --user` (or a JUPYTER_PATH entry):
    with user folders preferred to the environment's, Jupyter alone would pick it.
    """
    env = dict(os.environ)
    for key in ("BROWSER", "SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY"):
        env.pop(key, None)
    decoys = []
    for var, sub in {"JUPYTER_DATA_DIR": "data", "JUPYTER_PATH": "path", "JUPYTER_RUNTIME_DIR": "runtime"}.items():
        (tmp_path / sub).mkdir()
        env[var] = str(tmp_path / sub)
        if var != "JUPYTER_RUNTIME_DIR":
            spec = tmp_path / sub / "kernels" / "python3"
            spec.mkdir(parents=True)
            (spec / "kernel.json").write_text(json.dumps({
                "argv": [DECOY_PYTHON, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (another environment)", "language": "python"}))
            decoys.append(spec)
    env["JUPYTER_PREFER_ENV_PATH"] = "0"
    # the decoys do win without the course's kernel spec: the test below would catch a regression
    from jupyter_client.kernelspec import KernelSpecManager

    for key in ("JUPYTER_DATA_DIR", "JUPYTER_PATH", "JUPYTER_PREFER_ENV_PATH"):
        monkeypatch.setenv(key, env[key])
    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == DECOY_PYTHON
    return env


def test_make_lab_serves_the_course_and_a_second_one_moves_port(lab_env):
    runtime = Path(lab_env["JUPYTER_RUNTIME_DIR"])
    port = _free_port()
    first = _LabRun(["--port", str(port), "--no-browser"], lab_env)
    runs = [first]
    try:
        lines = first.wait_for_summary()
        address = _field(lines, "Address")
        assert address.startswith(f"http://localhost:{port}/lab/tree/{lab.start_page(ROOT)}?token=")
        assert _field(lines, "Port") == str(port)
        assert any(line.startswith("  Root:") and "--allow-root" in line for line in lines) is AS_ROOT
        assert f"ssh -N -L {port}:localhost:{port} " in _field(lines, "Over SSH")
        assert _field(lines, "Browser").startswith("none opened here")
        assert _field(lines, "Stop").startswith("press Ctrl-C")

        status, page = _get(address)  # the printed address, token included, opens JupyterLab
        assert status == 200 and "<title>JupyterLab" in page
        base, token = address.split("/lab/tree/")[0], address.rsplit("token=", 1)[1]
        status, body = _get(f"{base}/api/kernelspecs", Authorization=f"token {token}")
        specs = json.loads(body)
        assert specs["default"] == "python3"  # the name the lessons' notebook metadata ask for
        assert specs["kernelspecs"]["python3"]["spec"]["argv"][0] == sys.executable

        second = _LabRun(["--port", str(port), "--no-browser"], lab_env)
        runs.append(second)
        lines2 = second.wait_for_summary()
        moved = re.fullmatch(rf"(\d+) \({port} was taken, so JupyterLab chose this one\)", _field(lines2, "Port"))
        assert moved, lines2
        port2 = int(moved.group(1))
        assert port2 != port
        address2 = _field(lines2, "Address")
        assert address2.startswith(f"http://localhost:{port2}/lab/tree/")
        assert f"ssh -N -L {port2}:localhost:{port2} " in _field(lines2, "Over SSH")
        assert _get(address2)[0] == 200

        server_pids = [json.loads(p.read_text())["pid"] for p in runtime.glob("jpserver-*.json")]
        assert len(server_pids) == 2 and all(map(_alive, server_pids))
        scratch = [Path(_field(out, "Stop").split("messages: ")[1].rstrip(")")).parent for out in (lines, lines2)]
        assert all(p.is_dir() for p in scratch)
        # the second is shut down from JupyterLab (File > Shut Down), the first with Ctrl-C
        token2 = address2.rsplit("token=", 1)[1]
        request = urllib.request.Request(f"http://localhost:{port2}/api/shutdown", method="POST",
                                         headers={"Authorization": f"token {token2}"})
        urllib.request.urlopen(request, timeout=20).close()
        assert second.finish() == 0 and "JupyterLab was shut down." in second.lines
    finally:
        codes = [run.stop() for run in reversed(runs)]
    assert codes == [0] * len(runs)
    assert "JupyterLab stopped." in first.lines
    assert not any(map(_alive, server_pids)), "a JupyterLab server outlived Ctrl-C"
    assert not list(runtime.glob("jpserver-*")), "a server's runtime files were left behind"
    assert not any(p.exists() for p in scratch)


def test_make_lab_reports_a_server_that_cannot_start(lab_env):
    with socket.socket() as holder:  # the port is taken and JupyterLab is told not to look further
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        run = _LabRun(["--port", str(port), "--no-browser", "--", "--ServerApp.port_retries=0"], lab_env)
        code = run.finish()
    output = "\n".join(run.lines)
    assert code != 0
    assert "JupyterLab exited with status" in output and "already in use" in output
    assert not any(line.startswith("  Address:") for line in run.lines)
    assert not list(Path(lab_env["JUPYTER_RUNTIME_DIR"]).glob("jpserver-*"))
