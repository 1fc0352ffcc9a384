"""`locus doctor`: the real checks pass on this machine, and each failure path (driven by fakes:
no Metal, an old macOS, a missing metallib, Apple's git stub, …) says what to do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app import doctor
from app.agent.sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_cli_doctor_passes_here_and_prints_json():
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "doctor", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    checks = {c["name"]: c for c in json.loads(out.stdout)}
    assert list(checks) == [name for name, _ in doctor.CHECKS]
    assert all(c["status"] in ("pass", "warn") for c in checks.values()), checks
    for name in ("versions", "metal", "matmul", "demo model", "git", "disk"):
        assert checks[name]["status"] == "pass", checks[name]
    assert "4 tokens" in checks["demo model"]["detail"]
    assert f"Locus {doctor.locus_version()}" in checks["versions"]["detail"]


def test_text_report_shows_fixes_and_exit_code(monkeypatch, capsys):
    from app import cli

    fake = [
        doctor.Check("metal", "fail", "Metal is not available", "use a Mac"),
        doctor.Check("git", "pass", "git 2"),
    ]
    monkeypatch.setattr(doctor, "run_checks", lambda skip=(): fake)
    assert cli.main(["doctor"]) == 1
    text = capsys.readouterr().out
    assert "FAIL  metal" in text and "→ use a Mac" in text and "PASS  git" in text


def test_a_crashing_check_is_a_failure_not_a_traceback(monkeypatch):
    def boom() -> doctor.Check:
        raise RuntimeError("no device")

    monkeypatch.setattr(doctor, "CHECKS", [("metal", boom)])
    [c] = doctor.run_checks()
    assert c.status == "fail" and "RuntimeError: no device" in c.detail


def test_old_macos_fails_with_the_fix():
    c = doctor.check_versions(system="darwin", mac_ver="13.6.1")
    assert c.status == "fail" and "macOS 14.0 or newer" in c.detail and "Sonoma" in c.fix
    assert doctor.check_versions(system="darwin", mac_ver="14.5").status == "pass"
    assert doctor.check_versions(system="darwin", mac_ver="26.0").status == "pass"


def test_no_metal_fails():
    c = doctor.check_metal(
        system="darwin", metal_available=lambda: False, metallib=lambda: Path("/app/mlx/lib/mlx.metallib")
    )
    assert c.status == "fail" and c.detail.startswith("Metal is not available")
    assert "Apple Silicon" in c.fix
    ok = doctor.check_metal(
        system="darwin", metal_available=lambda: True, metallib=lambda: Path("/app/mlx/lib/mlx.metallib")
    )
    assert ok.status == "pass" and "/app/mlx/lib/mlx.metallib" in ok.detail


def test_missing_metallib_fails():
    c = doctor.check_metal(system="darwin", metal_available=lambda: True, metallib=lambda: None)
    assert c.status == "fail" and "mlx.metallib was not found" in c.detail
    assert "reinstall" in c.fix


def test_linux_uses_the_cpu_backend():
    c = doctor.check_metal(system="linux", metal_available=lambda: False)
    assert c.status == "pass" and "CPU" in c.detail


def test_git_stub_is_detected_before_it_is_run():
    calls: list[list[str]] = []

    def run(argv: list[str]) -> tuple[int, str]:
        calls.append(argv)
        if argv[0] == "xcode-select":
            return 2, "xcode-select: error: unable to get active developer directory"
        raise AssertionError("the stub must not be run: it opens an install dialog")

    c = doctor.check_git(system="darwin", which=lambda _: "/usr/bin/git", run=run)
    assert c.status == "warn" and "stub" in c.detail and "xcode-select --install" in c.fix
    assert calls == [["xcode-select", "-p"]]


def test_git_with_command_line_tools_and_missing_git():
    def run(argv: list[str]) -> tuple[int, str]:
        return (
            (0, "/Library/Developer/CommandLineTools")
            if argv[0] == "xcode-select"
            else (0, "git version 2.39.5 (Apple Git-154)")
        )

    c = doctor.check_git(system="darwin", which=lambda _: "/usr/bin/git", run=run)
    assert c.status == "pass" and "2.39.5" in c.detail
    missing = doctor.check_git(which=lambda _: None)
    assert missing.status == "warn" and "not installed" in missing.detail
    real = doctor.check_git()  # the real git on this machine
    assert real.status == "pass" and real.detail.startswith("git version")


def test_memory_small_machine_warns_and_reports_wired_limit():
    c = doctor.check_memory(system="darwin", total=16 * doctor.GB, recommended=11 * doctor.GB, wired_mb=0)
    assert c.status == "warn" and "16.0 GB total" in c.detail and "working set 11.0" in c.detail
    assert "smaller model" in c.fix
    big = doctor.check_memory(
        system="darwin", total=64 * doctor.GB, recommended=48 * doctor.GB, wired_mb=40000
    )
    assert big.status == "pass" and "wired limit 40000 MB" in big.detail


def test_keychain_missing_warns():
    from keyring.backends import fail

    c = doctor.check_keychain(backend=fail.Keyring())
    assert c.status == "warn" and "Secret Service" in c.fix


def test_sandbox_missing_warns():
    c = doctor.check_sandbox(detect=lambda: Sandbox("none", reason="bwrap is not installed"))
    assert c.status == "warn" and "bwrap is not installed" in c.detail
    ok = doctor.check_sandbox(detect=lambda: Sandbox("bwrap", "/usr/bin/bwrap"))
    assert ok.status == "pass"


def test_disk_space_levels(tmp_path):
    dirs = {"data": tmp_path / "data", "models": tmp_path / "hf"}
    full = doctor.check_disk(dirs=dirs, free=lambda p: (p, 200 * 1024**2))
    assert full.status == "fail" and "free some space" in full.fix
    tight = doctor.check_disk(dirs=dirs, free=lambda p: (p, 10 * doctor.GB))
    assert tight.status == "warn" and "HF_HUB_CACHE" in tight.fix
    real = doctor.check_disk(dirs=dirs)  # missing dirs: their nearest existing parent is measured
    assert real.status in ("pass", "warn") and str(tmp_path / "hf") in real.detail


def test_doctor_shows_the_sandbox_rules_as_data(tmp_path):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    env = {**__import__("os").environ, "HOME": str(home)}
    r = subprocess.run(
        [sys.executable, "-m", "app.cli", "doctor", "--quick", "--json", "--sandbox-rules"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = json.loads(r.stdout)
    assert {c["name"] for c in out["checks"]} >= {"sandbox", "git"}
    rules = out["sandbox_rules"]
    assert str(home / ".ssh") in rules["hidden"]
    assert "PATH" in rules["env_allowlist"]
    text = subprocess.run(
        [sys.executable, "-m", "app.cli", "doctor", "--quick", "--sandbox-rules"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    assert "Command sandbox, for a project in this folder:" in text and "~/.ssh" in text
