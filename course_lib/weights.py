"""Pretrained weight files for torchvision models, online or offline.

torchvision describes each set of pretrained weights with a ``WeightsEnum`` member (for example
``ResNet50_Weights.IMAGENET1K_V2``) whose ``url`` ends in the file name, e.g. ``resnet50-11ad3fa6.pth``.
The course looks for that file, in order, in:

1. a classroom mirror named by the ``COURSE_WEIGHTS_MIRROR`` environment variable: a folder, a
   ``file://`` URL or an ``http(s)://`` base URL holding the files under torchvision's own names;
2. the ``weights/`` folder at the course root;
3. torch hub's cache (``<torch.hub.get_dir()>/checkpoints``), where torchvision keeps its downloads;
4. the internet, with torch hub's downloader (the one behind torchvision's ``weights.get_state_dict``),
   into torch hub's cache (skipped when ``COURSE_OFFLINE=1``).

When none has it, `WeightsUnavailable` says so in one line, with the file name and how to provide it.

Two ways to use the weights:

* ``fetch_state_dict(weights)`` returns the state dict, e.g. to load into a course model with
  `course_lib.models.load_torchvision_weights`;
* ``ensure_weights(weights)`` puts the file into torch hub's cache, after which torchvision's real
  code path, ``builder(weights=weights)``, finds it there and does not download anything.

In a notebook, ``try_pretrained(fn, ...)`` runs either and turns `WeightsUnavailable` into a printed
notice and ``None``, so the lesson can carry on without the weights. Without network access that
notice is all a learner sees: nothing is printed before a download has really started.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import torch

from . import config

__all__ = [
    "WeightsUnavailable",
    "weights_file_name",
    "local_weights_dirs",
    "find_weights_file",
    "fetch_state_dict",
    "ensure_weights",
    "try_pretrained",
    "COURSE_WEIGHTS_DIR",
]

#: The course's own folder for weight files (ignored by git); ``COURSE_WEIGHTS_DIR`` moves it.
COURSE_WEIGHTS_DIR = Path(os.environ.get(config.WEIGHTS_DIR_ENV) or Path(__file__).resolve().parents[1] / "weights")

T = TypeVar("T")


class WeightsUnavailable(RuntimeError):
    """No source holds the requested weight file; the message is one line saying how to provide it."""


def _weights_url(weights) -> str:
    url = getattr(weights, "url", None)
    if not isinstance(url, str) or not url:
        raise TypeError(
            f"weights must be a torchvision WeightsEnum member such as ResNet50_Weights.IMAGENET1K_V2, "
            f"got {weights!r}"
        )
    return url


def weights_file_name(weights) -> str:
    """torchvision's file name for ``weights``, e.g. ``"resnet50-11ad3fa6.pth"``."""
    return os.path.basename(urlparse(_weights_url(weights)).path)


def _mirror() -> str | None:
    value = os.environ.get(config.WEIGHTS_MIRROR_ENV, "").strip()
    return value or None


def _is_remote(location: str) -> bool:
    return urlparse(location).scheme in ("http", "https")


def _as_folder(location: str) -> Path:
    """A mirror given as a folder path or a ``file://`` URL, as a local path."""
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(url2pathname(unquote(parsed.path)))
    return Path(location).expanduser()


def _hub_checkpoints_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def local_weights_dirs() -> list[Path]:
    """Folders searched for weight files, in order: the local mirror (if any), ``weights/``, torch hub's cache."""
    dirs = []
    mirror = _mirror()
    if mirror is not None and not _is_remote(mirror):
        dirs.append(_as_folder(mirror))
    dirs += [COURSE_WEIGHTS_DIR, _hub_checkpoints_dir()]
    return dirs


def find_weights_file(weights) -> Path | None:
    """The first local copy of ``weights``' file (see `local_weights_dirs`), or None."""
    name = weights_file_name(weights)
    for folder in local_weights_dirs():
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def _unavailable(weights, reason: str) -> WeightsUnavailable:
    return WeightsUnavailable(
        f"{weights} unavailable ({reason}): download {_weights_url(weights)} into {COURSE_WEIGHTS_DIR}/ "
        f"or set {config.WEIGHTS_MIRROR_ENV} to a folder or URL holding {weights_file_name(weights)}."
    )


def _one_line(error: BaseException, limit: int = 100) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _hash_prefix(file_name: str) -> str | None:
    """The hash prefix a torchvision file name carries (``resnet50-11ad3fa6.pth`` -> ``"11ad3fa6"``), or None."""
    match = torch.hub.HASH_REGEX.search(file_name)
    return match.group(1) if match else None


def _download(weights, *, progress: bool) -> dict[str, Any]:
    """Fetch the file from the remote mirror, else torchvision's URL, into torch hub's cache; load it.

    Uses torch hub's downloader directly rather than ``torch.hub.load_state_dict_from_url``: the
    latter prints ``Downloading: "<url>" to <path>`` before it knows whether the network is there, so
    a learner without network access would see that line ahead of the course's one-line notice.
    The downloader itself prints nothing until the connection is open (then a progress bar, if
    ``progress``), checks the hash that the file name carries, and never leaves a partial file behind.
    """
    name = weights_file_name(weights)
    if config.offline():
        raise _unavailable(weights, f"offline, no local {name}")
    mirror = _mirror()
    urls = [mirror.rstrip("/") + "/" + name] if mirror is not None and _is_remote(mirror) else []
    urls.append(_weights_url(weights))
    cached = _hub_checkpoints_dir() / name
    errors = []
    for url in urls:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(cached), _hash_prefix(name), progress=progress)
            return torch.load(cached, map_location="cpu", weights_only=True)
        except Exception as error:  # network, HTTP or hash errors: try the next source, report them all
            errors.append(f"{urlparse(url).netloc}: {_one_line(error)}")
    raise _unavailable(weights, "download failed: " + "; ".join(errors))


def fetch_state_dict(weights, *, progress: bool = False) -> dict[str, Any]:
    """The state dict of torchvision ``weights`` (tensors on the CPU), from the first source that has it.

    Raises `WeightsUnavailable` (one line: what is missing, its file name, how to provide it) when no
    source has the file.
    """
    path = find_weights_file(weights)
    if path is not None:
        return torch.load(path, map_location="cpu", weights_only=True)
    return _download(weights, progress=progress)


def ensure_weights(weights, *, progress: bool = False) -> Path:
    """Make sure ``weights``' file is in torch hub's cache and return its path there.

    Afterwards torchvision's own code path, ``builder(weights=weights)`` (e.g.
    ``torchvision.models.resnet50``), loads it from the cache without touching the network. A file
    found in the mirror or in ``weights/`` is linked into the cache (copied where links are not
    possible). Raises `WeightsUnavailable` like `fetch_state_dict`.
    """
    cached = _hub_checkpoints_dir() / weights_file_name(weights)
    if cached.is_file():
        return cached
    source = find_weights_file(weights)
    if source is None:
        _download(weights, progress=progress)  # leaves the file in the cache
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    if cached.is_symlink():  # a dangling link left behind by a mirror that moved
        cached.unlink()
    try:
        cached.symlink_to(source.resolve())
    except OSError:  # e.g. Windows without the right to create links
        shutil.copyfile(source, cached)
    return cached


def try_pretrained(load: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``load(*args, **kwargs)``, or None after printing the one-line notice if the weights are unavailable.

    >>> state_dict = try_pretrained(fetch_state_dict, ResNet50_Weights.IMAGENET1K_V2)  # doctest: +SKIP
    """
    try:
        return load(*args, **kwargs)
    except WeightsUnavailable as error:
        print(f"\u26a0 {error}")
        return None
