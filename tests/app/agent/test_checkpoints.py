"""Checkpoints in a shadow git repository: exact undo, several steps, the user's .git untouched."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.agent import CheckpointError, Checkpoints

from .helpers import git, git_state, make_project, tree_bytes


def test_undo_restores_exact_bytes_created_and_deleted(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    (proj / "bin.dat").write_bytes(bytes(range(256)) + b"\r\n\r\n")  # no EOL conversion
    (proj / "crlf.txt").write_bytes(b"a\r\nb\r\n")
    (proj / "untracked.txt").write_text("the user's own, not committed\n")
    os.chmod(proj / "README.md", 0o755)
    original = tree_bytes(proj)
    before_git = git_state(proj)
    data = tmp_path / "data"
    cps = Checkpoints(proj, data)
    assert data in cps.shadow.parents and proj not in cps.shadow.parents

    b1 = cps.snapshot()
    (proj / "calc" / "__init__.py").write_text("changed\n")
    (proj / "OLD.txt").unlink()
    (proj / "crlf.txt").write_bytes(b"x\r\n")
    (proj / "newdir").mkdir()
    (proj / "newdir" / "created.py").write_text("new\n")
    cp1 = cps.record("run1", 1, "edit_file", "step one", b1, cps.snapshot())
    assert cp1 is not None
    assert {(f["status"], f["path"]) for f in cp1.files} == {
        ("M", "calc/__init__.py"),
        ("D", "OLD.txt"),
        ("M", "crlf.txt"),
        ("A", "newdir/created.py"),
    }
    assert "-to be deleted" in cps.step_diff(cp1)

    b2 = cps.snapshot()
    (proj / "second.txt").write_text("2\n")
    cp2 = cps.record("run1", 2, "write_file", "step two", b2, cps.snapshot())
    # A step that changes nothing is not logged.
    b3 = cps.snapshot()
    assert cps.record("run1", 3, "run_command", "noop", b3, cps.snapshot()) is None
    assert [c.id for c in cps.list()] == [cp1.id, cp2.id]

    res = cps.undo(1)
    assert [c.id for c in res.steps] == [cp2.id] and not (proj / "second.txt").exists()
    res = cps.undo(1)
    assert tree_bytes(proj) == original
    assert not (proj / "newdir" / "created.py").exists()
    assert os.stat(proj / "README.md").st_mode & 0o111  # mode kept
    assert (proj / "build" / "out.txt").read_text() == "ignored\n"  # ignored files left alone
    assert git_state(proj) == before_git
    assert git(proj, "status", "--porcelain") == " M README.md\n?? bin.dat\n?? crlf.txt\n?? untracked.txt\n"
    with pytest.raises(CheckpointError, match="nothing to undo"):
        cps.undo(1)


def test_undo_several_steps_at_once_and_bad_counts(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    original = tree_bytes(proj)
    cps = Checkpoints(proj, tmp_path / "data")
    for i in range(3):
        b = cps.snapshot()
        (proj / f"f{i}.txt").write_text(str(i))
        cps.record("r", i + 1, "write_file", f"f{i}", b, cps.snapshot())
    with pytest.raises(CheckpointError, match="only 3 steps"):
        cps.undo(4)
    with pytest.raises(CheckpointError, match="at least 1"):
        cps.undo(0)
    res = cps.undo(3)
    assert len(res.steps) == 3 and tree_bytes(proj) == original
    # What the undo replaced is kept in the shadow repository.
    assert "f2.txt" in cps.diff(res.restored, res.replaced)


def test_shadow_repo_survives_reopen_and_ignores_user_git_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proj = make_project(tmp_path / "proj")
    decoy = tmp_path / "decoy.git"
    monkeypatch.setenv("GIT_DIR", str(decoy))  # must not redirect the shadow repository
    monkeypatch.setenv("GIT_WORK_TREE", str(tmp_path))
    cps = Checkpoints(proj, tmp_path / "data")
    b = cps.snapshot()
    (proj / "README.md").write_text("changed\n")
    cps.record("r", 1, "edit_file", "e", b, cps.snapshot())
    again = Checkpoints(proj, tmp_path / "data")
    assert [c.summary for c in again.list()] == ["e"]
    again.undo()
    assert (proj / "README.md").read_text() == "# calc\n" and not decoy.exists()


def test_agent_written_ignored_file_is_checkpointed(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    cps = Checkpoints(proj, tmp_path / "data")
    b = cps.snapshot(include=["debug.log"])
    (proj / "debug.log").write_text("agent wrote this ignored file\n")
    cp = cps.record("r", 1, "write_file", "log", b, cps.snapshot(include=["debug.log"]))
    assert cp is not None and cp.files == [{"status": "A", "path": "debug.log"}]
    cps.undo()
    assert not (proj / "debug.log").exists()
