"""The repository the book is published from: its address (`repository.url` in _config.yml), and every install
line and Colab link that names it, kept in step (`python -m cifar_tl.book sync-url`)."""

from __future__ import annotations

import re
from pathlib import Path

from cifar_tl.core.files import CHECKOUT, atomic_path

ROOT = CHECKOUT  # notebooks/, book/, _config.yml
CONFIG_FILE = "_config.yml"
# The address the book is published from when no _config.yml is at hand (an installed package): the same
# value _config.yml holds; tests/test_course.py checks they agree.
PUBLISHED_REPOSITORY = "https://github.com/cifar-tl/cifar-tl"


def repository_url(root: Path = ROOT) -> str:
    """The book's repository, from `repository.url` in _config.yml (the one setting to change when the book is
    published elsewhere); the published address where no _config.yml is at hand."""
    path = root / CONFIG_FILE
    if not path.is_file():
        return PUBLISHED_REPOSITORY
    # The `url:` key of the top-level `repository:` block (read without a YAML parser, which the library does not
    # depend on: the block is two-space indented, as Jupyter Book's own template writes it).
    found = re.search(r"(?m)^repository:[ \t]*\n(?:[ \t]+.*\n|[ \t]*\n)*?[ \t]+url:[ \t]*[\"']?([^\s\"'#]+)",
                      path.read_text())
    return found.group(1).rstrip("/") if found else PUBLISHED_REPOSITORY


_INSTALL = re.compile(r"cifar-tl @ git\+(https?://[^@\s\"']+)@v")
# An "open in Colab" link to a notebook of the repository (GitHub addresses only: Colab opens those).
_COLAB = re.compile(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/blob/")


def repository_mentions(root: Path = ROOT) -> dict[str, list[str]]:
    """Every file that names the repository in an install line or a Colab link, and the addresses it names."""
    files = [*sorted((root / "notebooks").glob("*.ipynb")), root / "book" / "setup.md", root / "README.md"]
    found = {}
    for path in files:
        if path.is_file():
            text = path.read_text()
            urls = _INSTALL.findall(text) + [f"https://github.com/{repo}" for repo in _COLAB.findall(text)]
            if urls:
                found[str(path.relative_to(root))] = urls
    return found


def sync_repository_url(root: Path = ROOT) -> list[str]:
    """Rewrite every install line (the chapters' Colab cell, the set-up page, the README) and every Colab link
    to the repository in _config.yml. Returns the files changed. Run it after changing `repository.url`:
    `python -m cifar_tl.book sync-url`."""
    url = repository_url(root)
    changed = []
    for name in repository_mentions(root):
        path = root / name
        text = path.read_text()
        new = _INSTALL.sub(f"cifar-tl @ git+{url}@v", text)
        if url.startswith("https://github.com/"):
            new = _COLAB.sub(f"colab.research.google.com/github/{url.removeprefix('https://github.com/')}/blob/", new)
        if new != text:
            with atomic_path(path) as tmp:
                tmp.write_text(new)
            changed.append(name)
    return changed
