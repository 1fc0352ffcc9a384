"""Every endpoint the README lists answers, and `locus serve --help` names it; the too-long error
says which context is served (issue 31)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from engine import BackendInfo
from tests.fakebackend import FakeBackend

README = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
USER = [{"role": "user", "content": "Hi"}]
BODIES = {
    "/v1/messages": {"model": "m", "max_tokens": 8, "messages": USER},
    "/v1/messages/count_tokens": {"model": "m", "messages": USER},
    "/v1/chat/completions": {"model": "m", "messages": USER},
    "/v1/responses": {"model": "m", "input": "Hi"},
}


def readme_endpoints() -> list[tuple[str, str]]:
    """(method, path) from the README's "Endpoints:" paragraph; "`GET` / `DELETE /x`" gives both."""
    para = README.split("\nEndpoints: ", 1)[1].split("\n\n", 1)[0]
    out, pending = [], []
    for method, path in re.findall(r"`(GET|POST|DELETE)(?: (/[^`\s]*))?`", para):
        pending.append(method)
        if path:
            out += [(m, path) for m in pending]
            pending = []
    return out


def test_every_endpoint_in_the_readme_answers(serve) -> None:  # type: ignore[no-untyped-def]
    listed = readme_endpoints()
    assert ("DELETE", "/v1/responses/{id}") in listed and len(listed) >= 9
    url = serve(FakeBackend(["Hello there."])).url
    with httpx.Client(base_url=url, timeout=60) as client:
        rid = client.post("/v1/responses", json=BODIES["/v1/responses"]).json()["id"]
        name = client.get("/v1/models").json()["data"][0]["id"]
        for method, path in listed:
            concrete = path.replace("{id}", rid).replace("{name}", name)
            r = client.request(method, concrete, json=BODIES[path] if method == "POST" else None)
            assert r.status_code == 200, (method, path, r.text)


def test_serve_help_names_every_endpoint() -> None:
    import contextlib
    import io

    from app.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(["serve", "--help"])
    text = " ".join(out.getvalue().split())
    for method, path in readme_endpoints():
        assert path in text and method in text, (method, path)


def test_too_long_says_which_context_is_served(serve) -> None:  # type: ignore[no-untyped-def]
    info = BackendInfo(name="fake-model", context_tokens=64, vocab_size=1000, model_id="fake-1")
    url = serve(FakeBackend(["x"], info=info)).url
    body = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "word " * 400}]}
    r = httpx.post(f"{url}/v1/messages", json=body, timeout=60)
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert message.startswith("prompt is too long: ") and "> 63 maximum" in message
    assert "the context is 64 tokens" in message  # "> 63" alone read as a wrong limit
