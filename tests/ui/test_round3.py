"""Issue 27, the window outside Chat: demo state from the model itself, banners that never cover a
view's controls, no-keychain secrets, Preferences' data folder and context, layout limits, Show Log,
`locus photo.png`, and menu items with nothing to act on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtWidgets import QApplication

from app.demo import DEMO_MARKER, is_demo_model
from app.models import ModelManager
from engine import BackendInfo
from tests.fakebackend import FakeBackend, Reply
from ui.main_window import MainWindow


def _backend(path: str, remote: str | None = None) -> FakeBackend:
    info = BackendInfo(name=Path(path).name, context_tokens=262144, vocab_size=1000, remote=remote)
    return FakeBackend([Reply(text="hi")], info=info)


@pytest.fixture
def demo_dir(tmp_path) -> Path:
    d = tmp_path / "demo-model"
    d.mkdir()
    (d / DEMO_MARKER).write_text("{}")
    return d


def _window(qtbot, store, *, demo: bool) -> MainWindow:
    manager = ModelManager(
        opener=lambda path, **kw: _backend(path),
        remote_opener=lambda url, **kw: _backend(kw.get("model") or "served", remote=url),
        measure=lambda path, ctx: 10**9,
        available=lambda: 0,
    )
    w = MainWindow(store, demo=demo, manager=manager)
    qtbot.addWidget(w)
    w.show()
    return w


# -- 1. the demo state follows the model in use -------------------------------------------------------
def test_demo_banner_goes_when_a_remote_or_real_model_is_used(qtbot, store, demo_dir):
    w = _window(qtbot, store, demo=True)
    with qtbot.waitSignal(w.model_loaded, timeout=30000):
        w.load_model(str(demo_dir))
    assert w.demo_banner.isVisible() and w.windowTitle().endswith("demo model")
    with qtbot.waitSignal(w.model_loaded, timeout=30000):
        w.load_remote("http://127.0.0.1:9/v1", "served")
    assert not w.demo_banner.isVisible() and "demo" not in w.windowTitle()
    with qtbot.waitSignal(w.model_loaded, timeout=30000):
        w.load_model(str(demo_dir))
    assert w.demo_banner.isVisible()
    with qtbot.waitSignal(w.model_loaded, timeout=30000):
        w.load_model("/models/real")
    assert not w.demo_banner.isVisible() and w.windowTitle() == "Locus"
    w.shutdown()


def test_demo_model_picked_in_a_normal_session_shows_the_banner(qtbot, store, demo_dir):
    from app.settings import load_ui_settings

    w = _window(qtbot, store, demo=False)
    assert not w.demo_banner.isVisibleTo(w)
    with qtbot.waitSignal(w.model_loaded, timeout=30000):
        w.load_model(str(demo_dir))  # what the picker and Models → Load do
    assert w.demo_banner.isVisible() and "RANDOM" in w.demo_banner.text()
    assert w.windowTitle() == "Locus — demo model"
    # A later plain `locus` reopens it (last_model) and, being the demo model, with the banner.
    assert load_ui_settings()["last_model"] == str(demo_dir)
    w.shutdown()


def test_the_built_demo_model_carries_its_marker(tmp_path):
    from app.demo import demo_model_dir

    d = demo_model_dir(tmp_path)
    assert is_demo_model(d) and not is_demo_model(tmp_path)
    (d / DEMO_MARKER).unlink()  # one built before the marker: marked when it is asked for again
    assert is_demo_model(demo_model_dir(tmp_path))


# -- 2. an error banner never covers the next view's controls -----------------------------------------
def test_banner_does_not_cover_the_server_address_field(qtbot, store):
    w = _window(qtbot, store, demo=False)
    w.resize(1000, 700)
    w.show_view("Locate")
    w.show_message("Could not load the model: " + "a long reason " * 30)
    w.show_view("Server")
    QApplication.processEvents()
    field = w.server.host
    center = field.mapTo(w, field.rect().center())
    # What sits under the field's centre is the field: the first click reaches it.
    assert w.childAt(center) is field or field.isAncestorOf(w.childAt(center))
    qtbot.mouseClick(field, Qt.MouseButton.LeftButton)
    assert field.hasFocus()
    w.shutdown()


def test_banner_sits_above_locates_controls_not_over_them(qtbot, store):
    w = _window(qtbot, store, demo=False)
    w.resize(1000, 700)
    w.show_view("Locate")
    w.show_message("Locate failed: " + "x " * 300)
    QApplication.processEvents()
    assert w.error_banner.isVisible()
    bottom = w.error_banner.mapTo(w, QPoint(0, w.error_banner.height())).y()
    for control in (w.locate.query,):
        top = control.mapTo(w, QPoint(0, 0)).y()
        assert top >= bottom, "the banner lies over a Locate control"
        hit = w.childAt(control.mapTo(w, control.rect().center()))
        assert hit is control or control.isAncestorOf(hit)
    w.shutdown()


# -- 3. no keychain: a private file, said so -----------------------------------------------------------
@pytest.fixture
def no_keychain(memory_keyring):
    import keyring
    from keyring.backends import fail

    keyring.set_keyring(fail.Keyring())  # Linux without a Secret Service
    yield
    keyring.set_keyring(fail.Keyring())  # the memory_keyring fixture puts the original back


def test_without_a_keychain_the_token_and_keys_go_to_a_private_file(qtbot, store, no_keychain):
    from app import secret_store
    from app.backends import remote_key_from_keyring

    w = _window(qtbot, store, demo=False)
    m = w.models
    assert secret_store.uses_file() and "mode 600" in m.token_box.title()
    assert str(secret_store.secrets_file()) in w.statusBar().currentMessage()  # said at first start
    m.token_input.setText("hf_secret")
    errors: list[str] = []
    m.message_for_user.connect(errors.append)
    m.save_token_button.click()
    assert m.token_state.text() == "Token saved" and errors == []
    path = secret_store.secrets_file()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    # A remote API key typed with List models is stored too, and no red error is shown.
    m.remote_url.setText("http://127.0.0.1:9/v1")
    m.remote_key.setText("sk-remote")
    assert m._api_key("http://127.0.0.1:9/v1") == "sk-remote"
    assert errors == [] and not w.error_banner.isVisible()
    assert remote_key_from_keyring("http://127.0.0.1:9/v1") == "sk-remote"
    w.shutdown()


def test_doctor_names_the_private_file(no_keychain):
    from app import doctor, secret_store

    c = doctor.check_keychain()
    assert c.status == "warn" and str(secret_store.secrets_file()) in c.detail and "600" in c.detail


# -- 5. Preferences: the real data folder and the context the model serves ---------------------------
def test_preferences_show_the_data_folder_and_the_toolbars_context(qtbot, store):
    from ui.preferences import PreferencesDialog

    w = _window(qtbot, store, demo=False)
    with qtbot.waitSignal(w.model_loaded, timeout=30000):
        w.load_model("/models/real")
    dlg = PreferencesDialog(w)
    qtbot.addWidget(dlg)
    folder = dlg.fields["data_folder"]
    assert folder.text() == os.environ["LOCUS_DATA_DIR"] and folder.isReadOnly()
    assert "context 256K" in w.model_info.text()
    assert "context 256K" in dlg.model_context.text() and "262,144" in dlg.model_context.text()
    assert dlg.values()["data_folder"] == ""  # LOCUS_DATA_DIR's folder is not saved as a choice
    w.shutdown()


# -- 6. layout ------------------------------------------------------------------------------------------
def test_the_window_can_be_small(qtbot, store):
    w = _window(qtbot, store, demo=False)
    QApplication.processEvents()
    assert w.minimumSizeHint().height() < 500 and w.minimumSizeHint().width() < 800
    w.models._dl_failed("Cannot reach huggingface.co to download " + "a-very-long-name/" * 40)
    QApplication.processEvents()
    assert w.minimumSizeHint().width() < 800  # a long error wraps; it never widens the window
    w.shutdown()


# -- 7. elsewhere ---------------------------------------------------------------------------------------
def test_show_log_without_a_desktop_opener_shows_it(qtbot, store, monkeypatch, tmp_path):
    import ui.main_window as mw

    log = tmp_path / "locus.log"
    log.write_text("first line\nthe last thing that happened\n")
    monkeypatch.setattr(mw, "log_path", lambda: log)
    monkeypatch.setattr(mw, "_has_opener", lambda: False)
    w = _window(qtbot, store, demo=False)
    assert w.show_log()
    assert w.log_dialog.isVisible() and "the last thing that happened" in w.log_dialog.text.toPlainText()
    assert str(log) in " ".join(lbl.text() for lbl in w.log_dialog.findChildren(type(w.model_label)))
    w.log_dialog.close()
    w.shutdown()


def test_edit_menu_greys_out_what_has_nothing_to_act_on(qtbot, store):
    w = _window(qtbot, store, demo=False)
    w.update_edit_menu()
    assert not w.undo_deletion_action.isEnabled()
    assert not w.undo_step_action.isEnabled()
    assert not w.stop_action.isEnabled()
    w.stop_current()  # by its shortcut: a hint says why nothing happens
    assert "Nothing to stop" in w.statusBar().currentMessage()
    w.shutdown()


def test_locus_photo_opens_the_image_in_locate(tmp_path, monkeypatch):
    from PIL import Image

    import ui.main as entry

    img = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(img)
    assert entry.split_image([str(img)]) == ([], str(img))
    assert entry.split_image(["--demo", str(img)]) == (["--demo"], str(img))
    assert entry.split_image(["locate", str(img), "cats"])[1] is None  # a command's argument
    assert entry.split_image(["--model", str(img)])[1] is None  # an option's value
    opened = {}
    monkeypatch.setattr(entry, "open_window", lambda args: opened.setdefault("args", args) and 0)
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert entry.main(["--demo", str(img)]) == 0
    assert entry.window_options(opened["args"])["project"] == str(img)


def test_a_project_argument_that_is_an_image_opens_locate(qtbot, store, tmp_path, monkeypatch):
    from PIL import Image

    import ui

    img = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(img)
    monkeypatch.setattr("ui.main_window.Store", lambda *a, **k: store)
    w = ui._window(False, None, str(img))
    qtbot.addWidget(w)
    assert w.current_view == "Locate" and w.locate.image_path == img
    w.shutdown()
