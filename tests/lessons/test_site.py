"""The course site (`make site`, book/build.py): its table of contents, its configuration, and lesson 1
built for real: executed outputs, pictures and the lesson's printed facts in the HTML."""
from __future__ import annotations

import html
import importlib.util
import re

import pytest
import yaml

from course_lib import config

LESSON_1 = "notebooks/01_blocks_and_resnets"


@pytest.fixture(scope="module")
def site(repo_root):
    """book/build.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("course_site_build", repo_root / "book" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_toc_lists_every_lesson_in_order(repo_root):
    toc = yaml.safe_load((repo_root / "book" / "_toc.yml").read_text(encoding="utf-8"))
    lessons = sorted((repo_root / config.LESSONS_DIR).glob(config.LESSON_GLOB))
    assert lessons, "no lessons found"
    expected = [p.relative_to(repo_root).with_suffix("").as_posix() for p in lessons]
    assert [c["file"] for c in toc["chapters"]] == expected
    assert (repo_root / f"{toc['root']}.md").is_file()


def test_lesson_selection(site):
    assert site.lesson_files(["01"]) == [LESSON_1]
    assert site.lesson_files(["03", "01"]) == [LESSON_1, "notebooks/03_anchors_and_yolo_decoding"]
    with pytest.raises(SystemExit, match="--lesson 99: no lesson file starts with that"):
        site.lesson_files(["99"])


def test_config_takes_the_repository_from_course_config(site):
    quick = site.site_config(quick=True, offline=True)
    assert quick["repository"]["url"] == config.repository_url()
    assert quick["repository"]["branch"] == config.BRANCH
    assert quick["execute"]["execute_notebooks"] == "force"  # lessons are committed without outputs
    assert "quick configuration" in quick["parse"]["myst_substitutions"]["run_mode"]
    assert "without network" in quick["parse"]["myst_substitutions"]["run_mode"]
    full = site.site_config(quick=False, offline=False)["parse"]["myst_substitutions"]["run_mode"]
    assert "full configuration" in full and "without network" not in full


@pytest.mark.notebook
def test_lesson_1_site_has_executed_outputs(site, tmp_path):
    out = site.build(tmp_path, [LESSON_1])  # quick and offline, as tests/conftest.py also sets
    page = (out / f"{LESSON_1}.html").read_text(encoding="utf-8")
    text = html.unescape(page)
    # printed facts of lesson 1, computed while the site was built
    count = "25,557,032"
    assert f"ResNet50: ours {count} | course_lib {count} | torchvision {count} parameters; all equal: True" in text
    assert "5 halvings: 224 / 2 ** 5 = 7; the total downsampling factor is 2 ** 5 = 32" in text
    assert "ResNet50_Weights.IMAGENET1K_V2 unavailable (offline" in text  # ran offline
    # its figures: <img> tags pointing at PNG files the build wrote
    figures = re.findall(r'<img[^>]+src="\.\./(_images/[0-9a-f]+\.png)"', page)
    assert len(figures) >= 5, figures
    for figure in figures:
        assert (out / figure).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "Traceback" not in text
    # the page's "Launch on Colab" button opens the same notebook as the lesson's badge
    launch = re.search(r'<a href="([^"]+)"[^>]*title="Launch on Colab"', page)
    assert launch and launch[1] == config.colab_url(f"{LESSON_1}.ipynb")
    intro = html.unescape((out / "book" / "intro.html").read_text(encoding="utf-8"))
    assert "in their quick configuration" in intro and "{{" not in intro
    assert "book/intro.html" in (out / "index.html").read_text(encoding="utf-8")
