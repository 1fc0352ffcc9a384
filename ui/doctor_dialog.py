"""`locus doctor` on first launch and after an upgrade: the checks run on a worker, and failures
are shown in a dialog that says what is wrong and what to do."""

from __future__ import annotations

from PySide6.QtWidgets import QMessageBox, QWidget

from app import doctor
from app.settings import load_ui_settings, save_ui_settings

from .bridge import Task, run_in_background

__all__ = ["failure_text", "maybe_run_doctor"]

SETTING = "doctor_checked_version"


def failure_text(checks: list[doctor.Check]) -> str:
    """The dialog's text: one paragraph per failed check with its fix."""
    bad = [c for c in checks if c.status == "fail"]
    return "\n\n".join(f"{c.name}: {c.detail}" + (f"\n→ {c.fix}" if c.fix else "") for c in bad)


def maybe_run_doctor(parent: QWidget, *, force: bool = False) -> Task | None:
    """Run the checks unless this version already passed them; the task, or None if skipped."""
    version = doctor.locus_version()
    if not force and load_ui_settings().get(SETTING) == version:
        return None

    def done(checks: list[doctor.Check]) -> None:
        save_ui_settings({SETTING: version})
        parent.doctor_checks = checks  # type: ignore[attr-defined]
        if doctor.worst(checks) == "fail":
            box = QMessageBox(
                QMessageBox.Icon.Warning,
                "Locus cannot run well on this Mac",
                failure_text(checks),
                QMessageBox.StandardButton.Ok,
                parent,
            )
            box.setInformativeText("Run `locus doctor` in a terminal for the full report.")
            parent.doctor_dialog = box  # type: ignore[attr-defined]
            box.open()  # not exec(): the window stays usable

    return run_in_background(doctor.run_checks, on_done=done, on_error=lambda _m: None)
