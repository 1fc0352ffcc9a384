"""Host and Origin checks, the API key from the keychain, the body limit, Claude Code's billing line."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

MSG = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}


def test_foreign_host_is_refused_in_each_apis_shape(serve, engine):
    srv = serve(engine)
    r = httpx.post(srv.url + "/v1/messages", json=MSG, headers={"host": "evil.example:8723"})
    assert r.status_code == 403
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "permission_error"
    assert "DNS rebinding" in r.json()["error"]["message"]
    r = httpx.post(srv.url + "/v1/chat/completions", json=MSG, headers={"host": "evil.example"})
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    for ok in (f"localhost:{srv.port}", f"127.0.0.1:{srv.port}", "LOCALHOST"):
        assert httpx.get(srv.url + "/v1/models", headers={"host": ok}).status_code == 200


def test_allowed_host_is_served(serve, engine):
    srv = serve(engine, allowed_hosts=("mybox.local",))
    r = httpx.get(srv.url + "/v1/models", headers={"host": f"mybox.local:{srv.port}"})
    assert r.status_code == 200


def test_cross_origin_requests_are_refused_unless_allowed(serve, engine):
    srv = serve(engine)
    r = httpx.get(srv.url + "/v1/models", headers={"origin": "https://evil.example"})
    assert r.status_code == 403 and "cross-origin" in r.json()["error"]["message"]
    srv2 = serve(engine, allowed_origins=("http://localhost:3000",))
    pre = httpx.options(
        srv2.url + "/v1/messages",
        headers={"origin": "http://localhost:3000", "access-control-request-method": "POST"},
    )
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == "http://localhost:3000"
    r = httpx.get(srv2.url + "/v1/models", headers={"origin": "http://localhost:3000"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
    r = httpx.get(srv2.url + "/v1/models", headers={"origin": "http://localhost:4000"})
    assert r.status_code == 403


def test_api_key_from_the_keychain(serve, engine, memory_keyring):
    from app.server import api_key_from_keyring

    # A command that works without Python: the .app has no `python -m keyring`.
    with pytest.raises(RuntimeError, match=r"store one first: `(security|secret-tool) "):
        api_key_from_keyring()
    memory_keyring[("locus", "api-key")] = "sk-local-123"
    srv = serve(engine, api_key=api_key_from_keyring())
    kw = {"base_url": srv.url, "max_retries": 0}
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(api_key="wrong", **kw).messages.create(**MSG)
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(auth_token="wrong", **kw).messages.create(**MSG)
    assert anthropic.Anthropic(api_key="sk-local-123", **kw).messages.create(**MSG).content is not None
    # Claude Code's ANTHROPIC_AUTH_TOKEN goes out as Authorization: Bearer.
    assert anthropic.Anthropic(auth_token="sk-local-123", **kw).models.list().data
    oa = openai.OpenAI(base_url=srv.url + "/v1", api_key="sk-local-123", max_retries=0)
    assert oa.models.list().data
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=srv.url + "/v1", api_key="nope", max_retries=0).models.list()


def test_body_size_limit(serve, engine):
    srv = serve(engine, max_body_bytes=2000)
    big = {**MSG, "messages": [{"role": "user", "content": "x" * 5000}]}
    c = anthropic.Anthropic(base_url=srv.url, api_key="x", max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as e:
        c.messages.create(**big)
    assert e.value.status_code == 413 and "limit of 2000 bytes" in e.value.message

    # Without a content-length (chunked), the limit still holds while reading.
    def chunks():
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}], "max_tokens": 1}'

    r = httpx.post(srv.url + "/v1/messages", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"


def test_claude_codes_billing_line_is_dropped(serve, scripted):
    eng = scripted("ok")
    srv = serve(eng)
    c = anthropic.Anthropic(base_url=srv.url, api_key="x", max_retries=0)
    for nonce in ("a1b2c", "zz999"):
        c.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=5,
            messages=[{"role": "user", "content": "hi"}],
            system=[
                {"type": "text", "text": f"x-anthropic-billing-header: cc_version=2.1.3; cch={nonce};"},
                {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
            ],
        )
    first, second = (eng.encode(r)[0] for r in eng.requests)
    assert first == second
    assert eng.requests[0].messages[0] == {"role": "system", "content": "You are Claude Code."}


def test_host_rules_for_wildcard_and_named_hosts():
    from app.server.config import ServerConfig
    from app.server.security import Guard

    local = Guard(None, ServerConfig())
    assert local.host_ok("[::1]:8723") and local.host_ok("127.0.0.2") and local.host_ok("localhost.")
    assert not local.host_ok("192.168.1.5:8723") and not local.host_ok(None)
    assert not local.host_ok("localhost.evil.example")
    # Every interface: any IP literal (DNS cannot rebind those), but still no foreign names.
    everywhere = Guard(None, ServerConfig(host="0.0.0.0"))
    assert everywhere.host_ok("192.168.1.5:8723") and everywhere.host_ok("[fe80::1]:8723")
    assert not everywhere.host_ok("attacker.example:8723")
    named = Guard(None, ServerConfig(host="mybox.lan"))
    assert named.host_ok("MyBox.lan:8723") and not named.host_ok("other.lan")
