"""course_lib.weights: finding pretrained weight files in a mirror, weights/, torch hub's cache or online."""
from __future__ import annotations

import functools
import hashlib
import socket
import http.server
import threading
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models import ResNet18_Weights, ResNet50_Weights

import course_lib.weights as course_weights
from course_lib.models import load_torchvision_weights, resnet18
from course_lib.weights import (
    WeightsUnavailable,
    ensure_weights,
    fetch_state_dict,
    find_weights_file,
    weights_file_name,
    try_pretrained,
)

RESNET18 = ResNet18_Weights.IMAGENET1K_V1
RESNET18_FILE = "resnet18-f37072fd.pth"


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Empty mirror, course weights/ folder and torch home, all in tmp_path; offline; no mirror set."""
    folders = {name: tmp_path / name for name in ("mirror", "course-weights", "torch")}
    for folder in folders.values():
        folder.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(folders["torch"]))
    monkeypatch.setattr(course_weights, "COURSE_WEIGHTS_DIR", folders["course-weights"])
    monkeypatch.delenv("COURSE_WEIGHTS_MIRROR", raising=False)
    monkeypatch.setenv("COURSE_OFFLINE", "1")
    folders["hub"] = folders["torch"] / "hub" / "checkpoints"
    return folders


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet18().state_dict()


def save_resnet18(folder: Path, state: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RESNET18_FILE
    torch.save(state, path)
    return path


def assert_same_state(got: dict, expected: dict) -> None:
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
        assert got[key].device.type == "cpu"


def test_file_names_are_torchvisions():
    assert weights_file_name(RESNET18) == RESNET18_FILE
    assert weights_file_name(ResNet50_Weights.IMAGENET1K_V2) == "resnet50-11ad3fa6.pth"
    with pytest.raises(TypeError, match="WeightsEnum"):
        weights_file_name("resnet50")


def test_mirror_folder(places, resnet18_state, monkeypatch):
    path = save_resnet18(places["mirror"], resnet18_state)
    monkeypatch.setenv("COURSE_WEIGHTS_MIRROR", str(places["mirror"]))
    assert find_weights_file(RESNET18) == path
    assert_same_state(fetch_state_dict(RESNET18), resnet18_state)


def test_mirror_file_url(places, resnet18_state, monkeypatch):
    save_resnet18(places["mirror"], resnet18_state)
    monkeypatch.setenv("COURSE_WEIGHTS_MIRROR", places["mirror"].as_uri())
    assert_same_state(fetch_state_dict(RESNET18), resnet18_state)


def test_course_weights_folder(places, resnet18_state):
    path = save_resnet18(places["course-weights"], resnet18_state)
    assert find_weights_file(RESNET18) == path
    assert_same_state(fetch_state_dict(RESNET18), resnet18_state)


def test_hub_cache(places, resnet18_state):
    path = save_resnet18(places["hub"], resnet18_state)
    assert find_weights_file(RESNET18) == path
    assert_same_state(fetch_state_dict(RESNET18), resnet18_state)


def test_sources_are_searched_in_order(places, resnet18_state, monkeypatch):
    mirror = save_resnet18(places["mirror"], resnet18_state)
    course = save_resnet18(places["course-weights"], {"marker": torch.zeros(1)})
    save_resnet18(places["hub"], {"marker": torch.ones(1)})
    assert find_weights_file(RESNET18) == course  # no mirror set
    monkeypatch.setenv("COURSE_WEIGHTS_MIRROR", str(places["mirror"]))
    assert find_weights_file(RESNET18) == mirror


def test_offline_with_nothing_is_one_clear_line(places):
    with pytest.raises(WeightsUnavailable) as info:
        fetch_state_dict(ResNet50_Weights.IMAGENET1K_V2)
    message = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert "\n" not in message
    assert message.startswith("ResNet50_Weights.IMAGENET1K_V2 unavailable (offline, no local resnet50-11ad3fa6.pth)")
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in message
    assert str(places["course-weights"]) in message
    assert "COURSE_WEIGHTS_MIRROR" in message


def test_try_pretrained_prints_notice_and_returns_none(places, resnet18_state, capsys):
    assert try_pretrained(fetch_state_dict, RESNET18) is None
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and RESNET18_FILE in printed and "unavailable" in printed
    save_resnet18(places["course-weights"], resnet18_state)
    assert_same_state(try_pretrained(fetch_state_dict, RESNET18), resnet18_state)
    assert capsys.readouterr().out == ""


def test_fetched_weights_load_into_our_model(places, resnet18_state):
    save_resnet18(places["course-weights"], resnet18_state)
    model = load_torchvision_weights(resnet18(), fetch_state_dict(RESNET18))
    assert torch.equal(model.stem[0].weight, resnet18_state["conv1.weight"])


def test_ensure_weights_feeds_torchvisions_own_weights_path(places, resnet18_state, monkeypatch):
    save_resnet18(places["mirror"], resnet18_state)
    monkeypatch.setenv("COURSE_WEIGHTS_MIRROR", places["mirror"].as_uri())
    cached = ensure_weights(RESNET18)
    assert cached == places["hub"] / RESNET18_FILE and cached.is_file()
    assert ensure_weights(RESNET18) == cached  # idempotent
    # torchvision's builder finds the file in its cache: no download, our tensors
    model = torchvision.models.resnet18(weights=RESNET18)
    assert_same_state(model.state_dict(), resnet18_state)


def test_ensure_weights_offline_with_nothing(places):
    with pytest.raises(WeightsUnavailable, match="resnet18-f37072fd.pth"):
        ensure_weights(RESNET18)


# ---------------------------------------------------------------- downloads, from a local web server


class TinyWeights:
    """Stands in for a torchvision WeightsEnum member: only ``url`` matters."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __str__(self) -> str:
        return "Tiny_Weights.DEFAULT"


@pytest.fixture
def server(tmp_path):
    """A local web server over tmp_path/www; yields (base URL, list of requested paths)."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):  # keep the test output quiet
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root, requests
    finally:
        httpd.shutdown()
        httpd.server_close()


def tiny_file(folder: Path) -> tuple[str, dict]:
    """Save a small state dict under a name carrying its hash, like torchvision's files."""
    state = {"weight": torch.arange(6.0).reshape(2, 3)}
    scratch = folder / "scratch.pth"
    torch.save(state, scratch)
    name = f"tiny-{hashlib.sha256(scratch.read_bytes()).hexdigest()[:8]}.pth"
    scratch.rename(folder / name)
    return name, state


def test_download_from_remote_mirror_into_hub_cache(places, server, monkeypatch):
    base, root, requests = server
    (root / "mirror").mkdir()
    name, state = tiny_file(root / "mirror")
    weights = TinyWeights(f"{base}/canonical/{name}")
    monkeypatch.setenv("COURSE_WEIGHTS_MIRROR", f"{base}/mirror/")
    monkeypatch.setenv("COURSE_OFFLINE", "0")
    assert_same_state(fetch_state_dict(weights), state)
    assert requests == [f"/mirror/{name}"]
    assert (places["hub"] / name).is_file()
    assert_same_state(fetch_state_dict(weights), state)  # now from the cache
    assert len(requests) == 1


def test_download_from_canonical_url(places, server, monkeypatch):
    base, root, requests = server
    (root / "canonical").mkdir()
    name, state = tiny_file(root / "canonical")
    monkeypatch.setenv("COURSE_OFFLINE", "0")
    assert ensure_weights(TinyWeights(f"{base}/canonical/{name}")) == places["hub"] / name
    assert requests == [f"/canonical/{name}"]


def test_failed_downloads_are_one_line(places, server, monkeypatch):
    base, root, requests = server
    weights = TinyWeights(f"{base}/canonical/tiny-0123abcd.pth")
    monkeypatch.setenv("COURSE_WEIGHTS_MIRROR", f"{base}/mirror")
    monkeypatch.setenv("COURSE_OFFLINE", "0")
    with pytest.raises(WeightsUnavailable) as info:
        fetch_state_dict(weights)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("Tiny_Weights.DEFAULT unavailable (download failed: 127.0.0.1")
    assert "404" in message and "tiny-0123abcd.pth" in message
    assert requests == ["/mirror/tiny-0123abcd.pth", "/canonical/tiny-0123abcd.pth"]


def test_wrong_hash_is_refused(places, server, monkeypatch):
    base, root, requests = server
    (root / "canonical").mkdir()
    name, _ = tiny_file(root / "canonical")
    (root / "canonical" / name).rename(root / "canonical" / "tiny-00000000.pth")
    monkeypatch.setenv("COURSE_OFFLINE", "0")
    with pytest.raises(WeightsUnavailable, match="hash"):
        fetch_state_dict(TinyWeights(f"{base}/canonical/tiny-00000000.pth"))
    assert not (places["hub"] / "tiny-00000000.pth").exists()


def test_offline_never_touches_the_network(places, server, monkeypatch):
    base, root, requests = server
    (root / "mirror").mkdir()
    name, _ = tiny_file(root / "mirror")
    monkeypatch.setenv("COURSE_WEIGHTS_MIRROR", f"{base}/mirror")
    with pytest.raises(WeightsUnavailable, match="offline"):
        fetch_state_dict(TinyWeights(f"{base}/canonical/{name}"))
    assert requests == []


# ---------------------------------------------------------------- what a learner sees without network


def closed_port_url(path: str) -> str:
    """An http URL on this machine where nothing listens: the connection is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


@pytest.mark.parametrize("progress", [False, True])
def test_unreachable_network_shows_the_notice_and_nothing_else(places, monkeypatch, capfd, progress):
    """torch's loader prints 'Downloading: ...' before it connects; the course's notice must be all there is."""
    monkeypatch.setenv("COURSE_OFFLINE", "0")
    monkeypatch.setenv("COURSE_WEIGHTS_MIRROR", closed_port_url("/mirror/"))
    weights = TinyWeights(closed_port_url("/canonical/tiny-0123abcd.pth"))
    assert try_pretrained(fetch_state_dict, weights, progress=progress) is None
    out, err = capfd.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert len(lines) == 1, out
    assert lines[0].startswith("\u26a0 Tiny_Weights.DEFAULT unavailable (download failed: 127.0.0.1:")
    assert lines[0].count("refused") == 2  # the mirror and the canonical address, both reported
    assert not any(places["hub"].iterdir())  # no partial file left in the cache


def test_offline_notice_is_the_only_output(places, capfd):
    assert try_pretrained(ensure_weights, ResNet50_Weights.IMAGENET1K_V2) is None
    out, err = capfd.readouterr()
    assert err == "" and out.count("\n") == 1 and out.startswith("\u26a0 ResNet50_Weights.IMAGENET1K_V2 unavailable")


def test_a_successful_download_prints_no_download_line(places, server, monkeypatch, capfd):
    base, root, requests = server
    (root / "canonical").mkdir()
    name, state = tiny_file(root / "canonical")
    monkeypatch.setenv("COURSE_OFFLINE", "0")
    assert_same_state(try_pretrained(fetch_state_dict, TinyWeights(f"{base}/canonical/{name}")), state)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert requests == [f"/canonical/{name}"]
