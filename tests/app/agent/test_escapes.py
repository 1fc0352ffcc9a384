"""The escape battery: every trick to reach outside the project, through every tool, refused,
with nothing read or written outside."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from app.agent import PathError, ProjectRoot
from app.agent.paths import is_git_name
from app.agent.sandbox import Sandbox
from app.agent.tools import Toolbox, ToolError
from app.agent.watch import FileTracker

SECRET = "TOP-SECRET-OUTSIDE"


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    """A project with every kind of escape hatch planted in it, and a secret next door."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET + "\n")
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "src" / "ok.py").write_text("x = 1\n")
    (proj / ".git").mkdir()
    (proj / ".git" / "config").write_text("[core]\n")
    os.symlink(outside / "secret.txt", proj / "link_file")
    os.symlink(outside, proj / "link_dir")
    os.symlink("../../outside/secret.txt", proj / "src" / "rel_link")
    os.symlink(outside / "not-yet.txt", proj / "dangling")  # writing it would create outside
    os.symlink("ok.py", proj / "src" / "inner_link")  # inside: allowed
    os.link(outside / "secret.txt", proj / "hard.txt")
    os.mkfifo(proj / "fifo")
    return {"proj": proj, "outside": outside}


def _toolbox(proj: Path) -> Toolbox:
    return Toolbox(ProjectRoot(proj), FileTracker(), Sandbox("none"), use_ripgrep=False)


ESCAPES = [
    "../outside/secret.txt",
    "src/../../outside/secret.txt",
    "link_file",
    "link_dir/secret.txt",
    "src/rel_link",
    "dangling",
    "hard.txt",
    "fifo",
    ".git/config",
    ".GIT/config",
    ".git./config",
    ".g\u200cit/config",
    "src/../.git/config",
    "/etc/passwd",
    "/dev/zero",
    "bad\0name",
]


def test_is_git_name_catches_spellings() -> None:
    for name in (".git", ".GIT", ".Git ", ".git.", ".g\u200dit", "GIT~1"):
        assert is_git_name(name), name
    for name in (".gitignore", "git", ".github"):
        assert not is_git_name(name), name


@pytest.mark.parametrize("path", ESCAPES)
def test_read_refused(world: dict[str, Path], path: str) -> None:
    tb = _toolbox(world["proj"])
    with pytest.raises(ToolError) as e:
        tb.read_file({"path": path})
    assert SECRET not in str(e.value)
    assert str(e.value)  # a message the model can act on


@pytest.mark.parametrize("path", ESCAPES)
def test_write_and_edit_refused(world: dict[str, Path], path: str) -> None:
    tb = _toolbox(world["proj"])
    with pytest.raises(ToolError):
        tb.prepare("write_file", {"path": path, "content": "pwned"})
    with pytest.raises(ToolError):
        tb.prepare("edit_file", {"path": path, "old_string": SECRET, "new_string": "pwned"})
    assert (world["outside"] / "secret.txt").read_text() == SECRET + "\n"


def test_write_into_symlinked_dir_refused(world: dict[str, Path]) -> None:
    tb = _toolbox(world["proj"])
    for path in ("link_dir/new.txt", "link_dir/sub/new.txt", "../outside/new.txt"):
        with pytest.raises(ToolError, match="outside"):
            tb.prepare("write_file", {"path": path, "content": "x"})
    assert sorted(os.listdir(world["outside"])) == ["secret.txt"]


@pytest.mark.parametrize("path", ["../outside", "link_dir", "/", "/etc", ".git"])
def test_list_and_search_refused(world: dict[str, Path], path: str) -> None:
    tb = _toolbox(world["proj"])
    with pytest.raises(ToolError):
        tb.list_dir({"path": path})
    with pytest.raises(ToolError):
        tb.search({"pattern": "SECRET", "path": path})


def test_whole_project_search_and_listing_do_not_leak(world: dict[str, Path]) -> None:
    tb = _toolbox(world["proj"])
    assert "No matches" in tb.search({"pattern": "SECRET"})
    listing = tb.list_dir({"depth": 6})
    assert ".git" not in listing and "link_dir/" not in listing  # links are never entered
    assert "link_dir -> " in listing  # only shown as a link


def test_inside_paths_still_work(world: dict[str, Path]) -> None:
    tb = _toolbox(world["proj"])
    assert "x = 1" in tb.read_file({"path": "src/inner_link"})
    assert "x = 1" in tb.read_file({"path": str(world["proj"] / "src" / "ok.py")})  # absolute, inside
    assert "x = 1" in tb.read_file({"path": "./src//ok.py"})


def test_non_string_and_missing_paths(world: dict[str, Path]) -> None:
    root = ProjectRoot(world["proj"])
    with pytest.raises(PathError, match="must be a string"):
        root.resolve(["a"])
    with pytest.raises(PathError, match="required"):
        root.resolve("")
    with pytest.raises(PathError, match="does not exist"):
        ProjectRoot(world["proj"] / "nope")


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a device node needs root")
def test_device_node_inside_project_refused(world: dict[str, Path]) -> None:
    dev = world["proj"] / "zero"
    try:
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 5))
    except OSError as e:
        pytest.skip(f"mknod not permitted here: {e}")
    tb = _toolbox(world["proj"])
    with pytest.raises(ToolError, match="not a regular file"):
        tb.read_file({"path": "zero"})
    with pytest.raises(ToolError, match="not a regular file"):
        tb.prepare("write_file", {"path": "zero", "content": "x"})


def test_swap_to_symlink_after_approval_is_caught(world: dict[str, Path]) -> None:
    """A file replaced by a symlink between the check and the write is not followed."""
    proj = world["proj"]
    tb = _toolbox(proj)
    tb.read_file({"path": "src/ok.py"})
    plan = tb.prepare("write_file", {"path": "src/ok.py", "content": "y = 2\n"})
    os.unlink(proj / "src" / "ok.py")
    os.symlink(world["outside"] / "secret.txt", proj / "src" / "ok.py")
    with pytest.raises(ToolError):
        tb.apply(plan, threading.Event())
    assert (world["outside"] / "secret.txt").read_text() == SECRET + "\n"
