"""The app is staged for ``flwr run`` without what its .gitignore ignores: the same
FAB as Flower builds from the folder itself, without Flower listing a .venv first."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from flwr.cli.build import build_fab_from_disk

from fl_app.launch.flower_cli import staged_app

APP_DIR = Path(__file__).resolve().parents[1]


def _files(root: Path) -> set[str]:
    return {
        str(Path(folder, name).relative_to(root))
        for folder, _, names in os.walk(root)
        for name in names
    }


def test_ignored_files_and_folders_stay_behind(tmp_path: Path) -> None:
    app = tmp_path / "app"
    for name in [
        "pyproject.toml",
        ".gitignore",
        "pkg/__init__.py",
        "pkg/sub/mod.py",
        "pkg/__pycache__/mod.cpython-311.pyc",
        ".venv/lib/site.py",
        "outputs/run/history.csv",
        ".git/HEAD",
        "notes.log",
        "keep/outputs.py",
    ]:
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text(name)
    (app / ".gitignore").write_text("__pycache__/\n.venv/\noutputs/\n*.log\n")
    (app / "pkg" / "link.py").symlink_to(app / "pkg" / "__init__.py")
    with staged_app(app) as staged:
        assert staged.name == "app"
        assert _files(staged) == {
            "pyproject.toml",
            ".gitignore",
            "pkg/__init__.py",
            "pkg/sub/mod.py",
            "keep/outputs.py",
        }
        assert (staged / "pkg/sub/mod.py").read_text() == "pkg/sub/mod.py"
    assert not staged.exists()  # removed once the run is submitted and done


def test_the_staged_app_packs_to_the_same_fab(tmp_path: Path) -> None:
    """Flower's own build of a folder (which lists everything, then applies the
    .gitignore) and its build of our staged copy are the same bytes: this repo's
    files, beside the kinds of folder a checkout grows (a venv, outputs, caches)."""
    app = tmp_path / APP_DIR.name
    shutil.copytree(
        APP_DIR,
        app,
        ignore=shutil.ignore_patterns(".git", ".venv", "outputs", "__pycache__"),
    )
    for name in [
        ".venv/lib/python3.11/site-packages/torch/__init__.py",
        ".venv/bin/python",
        "outputs/20260101-000000-run1/history.csv",
        "fl_app/__pycache__/config.cpython-311.pyc",
        ".secrets/ca.key",
    ]:
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text(name)
    with staged_app(app) as staged:
        from_stage = build_fab_from_disk(staged)
    direct = build_fab_from_disk(app)
    assert hashlib.sha256(from_stage).digest() == hashlib.sha256(direct).digest()
