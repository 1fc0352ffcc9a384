"""The chat's settings panel: the conversation's system prompt and its sampling (temperature,
top-p, max tokens) shown as the numbers the model gets, each remembered with the conversation."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from app.chat_session import ChatSettings
from engine import preset

__all__ = ["ChatSettingsPanel"]


class ChatSettingsPanel(QFrame):
    """System prompt, temperature, top-p and max tokens; `changed` carries the settings' fields
    the user changed (ChatSession.update_settings takes them)."""

    changed = Signal(dict)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("chatSettings")
        self._showing = False
        form = QFormLayout(self)
        form.setContentsMargins(8, 4, 8, 4)
        self.system = QPlainTextEdit()
        self.system.setPlaceholderText("System prompt for this conversation (optional)")
        self.system.setFixedHeight(60)
        # Typing is saved after a pause, not at each key.
        self._system_timer = QTimer(self, interval=400, singleShot=True)
        self._system_timer.timeout.connect(self._system_changed)
        self.system.textChanged.connect(lambda: self._showing or self._system_timer.start())
        form.addRow("System prompt", self.system)
        row = QHBoxLayout()
        self.temperature = QDoubleSpinBox(decimals=2, minimum=0.0, maximum=2.0, singleStep=0.05)
        self.temperature.setToolTip("Temperature: 0 always picks the likeliest token; higher is more varied")
        self.top_p = QDoubleSpinBox(decimals=2, minimum=0.01, maximum=1.0, singleStep=0.05)
        self.top_p.setToolTip("Top-p: sample only from the likeliest tokens that make up this share")
        self.max_tokens = QSpinBox(minimum=1, maximum=262144, singleStep=256)
        self.max_tokens.setToolTip("The most tokens a reply may use, reasoning included")
        for label, w in (
            ("Temperature", self.temperature),
            ("Top-p", self.top_p),
            ("Max tokens", self.max_tokens),
        ):
            row.addWidget(QLabel(label))
            row.addWidget(w)
        self.reset_button = QPushButton("Profile defaults")
        self.reset_button.setToolTip("Use the sampling profile's temperature and top-p")
        self.reset_button.clicked.connect(lambda *_: self.changed.emit({"temperature": None, "top_p": None}))
        row.addWidget(self.reset_button)
        row.addStretch(1)
        form.addRow("Sampling", row)
        self.temperature.valueChanged.connect(lambda v: self._number("temperature", v))
        self.top_p.valueChanged.connect(lambda v: self._number("top_p", v))
        self.max_tokens.valueChanged.connect(lambda v: self._number("max_tokens", v))

    def show_settings(self, s: ChatSettings) -> None:
        """Show a conversation's settings (the profile's numbers where none of its own are set)."""
        self._showing = True
        try:
            sampling = s.effective_sampling
            # A prompt being typed (saved after its pause) is not overwritten by the echo of another change.
            if not self._system_timer.isActive() and self.system.toPlainText() != s.system:
                self.system.setPlainText(s.system)
            self.temperature.setValue(sampling.temperature)
            self.top_p.setValue(sampling.top_p)
            self.max_tokens.setValue(s.max_tokens)
            own = s.temperature is not None or s.top_p is not None
            self.reset_button.setEnabled(own)
        finally:
            self._showing = False
        self._profile = s.sampling or preset(s.preset)

    def _number(self, name: str, value: Any) -> None:
        if self._showing:
            return
        if name != "max_tokens" and abs(getattr(self._profile, name) - value) < 1e-9:
            value = None  # the profile's own value: follow the profile
        self.changed.emit({name: value})

    def _system_changed(self) -> None:
        self.changed.emit({"system": self.system.toPlainText().strip()})

    def flush(self) -> None:
        """Save a system prompt still waiting for its pause (before sending or switching)."""
        if self._system_timer.isActive():
            self._system_timer.stop()
            self._system_changed()
