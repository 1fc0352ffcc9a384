"""The API key without a keychain: LOCUS_API_KEY or a private key file; a clear error when the
keychain has no backend (headless Linux)."""

from __future__ import annotations

import os

import httpx
import pytest

from app.cli import build_parser, main
from app.cli_serve import config_from_args


def _config(*argv: str):
    return config_from_args(build_parser().parse_args(["serve", "--demo", *argv]))


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "locus.key"
    path.write_text("s3cret-key\n")
    path.chmod(0o600)
    return path


@pytest.mark.skipif(os.name != "posix", reason="file modes")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_readable_by_others_is_refused(key_file, mode, capsys, monkeypatch):
    monkeypatch.delenv("LOCUS_API_KEY", raising=False)
    key_file.chmod(mode)
    assert main(["serve", "--demo", "--api-key-file", str(key_file)]) == 2
    err = capsys.readouterr().err
    assert f"chmod 600 {key_file}" in err and "other users" in err


def test_key_file_and_environment(key_file, serve, scripted, monkeypatch):
    monkeypatch.delenv("LOCUS_API_KEY", raising=False)
    assert _config().api_key is None
    cfg = _config("--api-key-file", str(key_file))
    assert cfg.api_key == "s3cret-key"
    monkeypatch.setenv("LOCUS_API_KEY", "from-env")
    assert _config().api_key == "from-env"
    assert _config("--api-key-file", str(key_file)).api_key == "s3cret-key"  # the option wins
    monkeypatch.setenv("LOCUS_API_KEY", " ")
    with pytest.raises(RuntimeError, match="LOCUS_API_KEY is set but empty"):
        _config()
    (key_file.parent / "empty.key").write_text("\n")
    (key_file.parent / "empty.key").chmod(0o600)
    with pytest.raises(RuntimeError, match="the API key alone"):
        _config("--api-key-file", str(key_file.parent / "empty.key"))

    srv = serve(scripted("ok"), api_key=cfg.api_key)
    assert httpx.get(f"{srv.url}/v1/models").status_code == 401
    ok = httpx.get(f"{srv.url}/v1/models", headers={"x-api-key": "s3cret-key"})
    assert ok.status_code == 200


def test_no_keychain_backend_says_what_to_do_instead(capsys, monkeypatch):
    import keyring
    from keyring.backends import fail

    monkeypatch.delenv("LOCUS_API_KEY", raising=False)
    old = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        assert main(["serve", "--demo", "--api-key-from-keyring"]) == 2
    finally:
        keyring.set_keyring(old)
    err = capsys.readouterr().err
    assert "no OS keychain here" in err
    assert "LOCUS_API_KEY" in err and "--api-key-file" in err
