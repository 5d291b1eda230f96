"""Lesson 3's decoding sliders in a real browser: JupyterLab, headless Chromium driven by Playwright.

The notebook is lesson 3's own cells (title, Colab set-up, imports, the sliders' cell), run from
JupyterLab's Run menu. Dragging the t_x slider must redraw the picture: the new picture is the one
`YoloDecodingDemo` draws for the slider's new value.

Needs `chromium` (Debian: apt-get install chromium; another path: COURSE_CHROMIUM) and the
`playwright` package (pip install playwright; its own browser download is not used). Missing, the
test is skipped with one line, except as root (CI), where `make test` installs them and a missing
one is a failure.
"""
from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

from course_lib.lab import is_root_user, lab_command

pytestmark = pytest.mark.notebook

LESSON = "notebooks/03_anchors_and_yolo_decoding.ipynb"
WIDGET_CALL = "YoloDecodingDemo().widget("
#: The lesson's sliders cell passes these logits (checked below, so that the redraw can be recomputed).
WIDGET_LOGITS = [2.0, 0.0, 1.0]
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
SERVER_START_S = 120
KERNEL_READY_MS = 120_000
WIDGET_SHOWN_MS = 180_000  # the imports cell loads torch: slow on a busy 2-core machine
REDRAW_MS = 60_000
DRAG_PX = 60
OUTPUT_IMAGE = ".widget-output img, .jupyter-widgets-output-area img"


@pytest.fixture
def chromium() -> str:
    """Chromium's path ($COURSE_CHROMIUM, else Debian's); skips (one line) or, as root, fails when it or
    playwright is missing. Requested before `lab`, so that nothing starts when it skips."""
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install playwright)")
    candidates = [os.environ["COURSE_CHROMIUM"]] if os.environ.get("COURSE_CHROMIUM") else CHROMIUM_CANDIDATES
    chromium = next((p for p in candidates if Path(p).is_file()), None)
    if chromium is None:
        missing.append("chromium (apt-get install chromium)")
    if missing:
        message = "browser test needs " + " and ".join(missing)
        if is_root_user():
            pytest.fail(message + "; as root (CI) `make test` installs them")
        pytest.skip(message)
    return chromium


def _widget_notebook(repo_root: Path, folder: Path) -> Path:
    """Lesson 3's title, set-up and imports cells, then the sliders' explanation and cell."""
    nb = nbformat.read(repo_root / LESSON, as_version=4)
    calls = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and WIDGET_CALL in cell.source]
    assert len(calls) == 1, f"{LESSON}: expected one cell calling {WIDGET_CALL}, found {len(calls)}"
    call = calls[0]
    logits = re.search(r"logits=\[([^\]]*)\]", nb.cells[call].source)
    assert logits and [float(v) for v in logits[1].split(",")] == WIDGET_LOGITS, nb.cells[call].source
    assert "from course_lib.widgets import YoloDecodingDemo" in nb.cells[2].source
    nb.cells = nb.cells[:3] + nb.cells[call - 1: call + 1]
    path = folder / "yolo_decoding_sliders.ipynb"
    nbformat.write(nb, path)
    return path


def _server_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    for var, sub in {"JUPYTER_CONFIG_DIR": "config", "JUPYTER_DATA_DIR": "data", "JUPYTER_RUNTIME_DIR": "runtime",
                     "IPYTHONDIR": "ipython"}.items():
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(home / sub)
    # the kernel is this Python (as `make lab` arranges), whatever other python3 specs exist
    from ipykernel.kernelspec import write_kernel_spec

    write_kernel_spec(home / "path" / "kernels" / "python3")
    env["JUPYTER_PATH"] = str(home / "path")
    # no "Jupyter news?" pop-up over the page
    settings = home / "config" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    return env


def _wait_for_server(proc: subprocess.Popen, runtime: Path, token: str, log: Path) -> str:
    """The server's base URL once it answers (its port is read from its jpserver-<pid>.json)."""
    info_file = runtime / f"jpserver-{proc.pid}.json"
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with status {proc.returncode}:\n{log.read_text()[-3000:]}")
        if info_file.exists():
            try:
                url = json.loads(info_file.read_text())["url"]
                request = urllib.request.Request(f"{url}api/status", headers={"Authorization": f"token {token}"})
                with urllib.request.urlopen(request, timeout=5):
                    return url
            except (ValueError, KeyError, urllib.error.URLError, OSError):
                pass
        time.sleep(0.2)
    pytest.fail(f"JupyterLab did not answer within {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def lab(repo_root, tmp_path):
    """A JupyterLab serving a folder that holds the sliders notebook: (base URL, token, notebook name)."""
    folder = tmp_path / "course"
    folder.mkdir()
    notebook = _widget_notebook(repo_root, folder)
    env = _server_env(tmp_path / "home")
    token = secrets.token_hex(16)
    cmd = lab_command(folder, notebook.name, port=8890, as_root=is_root_user(), open_browser=False,
                      extra_args=[f"--IdentityProvider.token={token}", "--ServerApp.ip=127.0.0.1"])
    log = tmp_path / "jupyterlab.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield _wait_for_server(proc, Path(env["JUPYTER_RUNTIME_DIR"]), token, log), token, notebook.name
    finally:
        proc.terminate()  # Jupyter shuts its kernels down on SIGTERM
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _png(src: str | None) -> bytes:
    assert src and src.startswith("data:image/png;base64,"), f"the output is not a PNG: {str(src)[:60]!r}"
    return base64.b64decode(src.split(",", 1)[1])


def test_slider_redraws_the_decoded_box(chromium, lab, tmp_path):
    import matplotlib.pyplot as plt
    from playwright.sync_api import sync_playwright

    from course_lib.widgets import YoloDecodingDemo
    from course_lib.widgets.output_area import figure_record

    base, token, name = lab
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.goto(f"{base}lab/tree/{name}?token={token}")
            page.get_by_text(re.compile(r"\| Idle$")).first.wait_for(timeout=KERNEL_READY_MS)
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile("^Run$")).click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile("^Run All Cells$")).click()
            image = page.locator(OUTPUT_IMAGE).first
            try:
                image.wait_for(timeout=WIDGET_SHOWN_MS)
            except Exception:
                page.screenshot(path=str(tmp_path / "no-widget.png"), full_page=True)
                raise
            assert "device: cpu, quick mode: True" in page.locator(".jp-Notebook").inner_text()
            assert page.get_by_text("Traceback").count() == 0
            before = _png(image.get_attribute("src"))

            slider = page.locator(".widget-slider", has=page.locator("label", has_text=re.compile("^t_x$")))
            readout, handle = slider.locator(".widget-readout"), slider.locator(".noUi-handle")
            assert readout.inner_text().strip() == "0.00"
            handle.scroll_into_view_if_needed()
            box = handle.bounding_box()
            x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(x, y)
            page.mouse.down()
            page.mouse.move(x + DRAG_PX, y, steps=6)
            page.mouse.up()
            page.wait_for_function(
                "([selector, old]) => { const img = document.querySelector(selector);"
                " return img !== null && img.src !== old; }",
                arg=[OUTPUT_IMAGE, image.get_attribute("src")], timeout=REDRAW_MS)
            after = _png(image.get_attribute("src"))
            t_x = float(handle.get_attribute("aria-valuenow"))
            shown = readout.inner_text().strip()
        finally:
            browser.close()

    assert 0 < t_x <= 4.0 and shown == f"{t_x:.2f}"
    assert after != before
    demo = YoloDecodingDemo()
    pictures = []
    for value in (0.0, t_x):  # what the demo draws here, in this process, for the two slider values
        fig = demo.draw(demo.decode(t_x=value, logits=WIDGET_LOGITS))
        pictures.append(figure_record(fig))
        plt.close(fig)
    unmoved, expected = pictures
    assert base64.b64decode(unmoved["data"]["image/png"]) == before
    assert base64.b64decode(expected["data"]["image/png"]) == after
