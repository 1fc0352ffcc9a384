"""The agent loop driven by replayed model outputs: tools, errors, approvals, limits, the live
tree, compaction, persistence and resume."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.agent import (
    Agent,
    AgentConfig,
    AgentError,
    AgentEvent,
    ApprovalRequest,
    Approvals,
    Decision,
    ReplayBackend,
)
from app.store import Store

from .helpers import answer, call, make_project


class HookedReplay(ReplayBackend):
    """A replay that runs `hooks[n]` before producing turn n (1-based): external edits etc."""

    def __init__(self, outputs: list[str], hooks: dict[int, Callable[[], None]] | None = None):
        super().__init__(outputs)
        self.hooks = hooks or {}
        self.seen: list[list[dict[str, Any]]] = []

    def turn(self, messages, tools, *, max_tokens, cancel):  # type: ignore[no-untyped-def]
        self.seen.append(messages)
        hook = self.hooks.get(self.position + 1)
        if hook is not None:
            hook()
        yield from super().turn(messages, tools, max_tokens=max_tokens, cancel=cancel)


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    return make_project(tmp_path / "proj")


def _agent(
    proj: Path,
    outputs: list[str] | ReplayBackend,
    *,
    yes: bool = True,
    ask: Any = None,
    watch: bool = False,
    **cfg: Any,
) -> tuple[Agent, list[AgentEvent]]:
    events: list[AgentEvent] = []
    backend = outputs if isinstance(outputs, ReplayBackend) else ReplayBackend(outputs)
    agent = Agent(
        proj,
        backend,
        approvals=Approvals(ask=ask, yes=yes),
        config=AgentConfig(watch=watch, **cfg),
        data_dir=proj.parent / "data",
        on_event=events.append,
    )
    return agent, events


def _results(events: list[AgentEvent]) -> list[dict[str, Any]]:
    return [e.data for e in events if e.type == "tool_result"]


def test_malformed_and_unknown_calls_get_recoverable_errors(proj: Path) -> None:
    outs = [
        "</think>\n<tool_call>\n<function=read_file>\n<parameter=path>\nREADME.md\n</parameter>\n"
        "oops\n</function>\n</tool_call>",
        call("delete_everything", path="."),
        call("read_file", path="README.md", start_line="first"),
        call("read_file"),
        call("read_file", path="README.md"),
        answer("The README is a title."),
    ]
    agent, events = _agent(proj, outs)
    with agent:
        res = agent.run("what is in the README?")
    assert res.status == "answered" and res.answer == "The README is a title." and res.steps == 6
    r = _results(events)
    assert not r[0]["ok"] and r[0]["content"].startswith("Error:")
    assert not r[1]["ok"] and "unknown tool 'delete_everything'" in r[1]["content"]
    assert "read_file" in r[1]["content"]  # lists the tools that exist
    assert not r[2]["ok"] and "integer" in r[2]["content"]
    assert not r[3]["ok"] and "required" in r[3]["content"]
    assert r[4]["ok"] and "# calc" in r[4]["content"]
    # The model saw its own malformed text and each error as tool results.
    tool_msgs = [m for m in agent.messages if m["role"] == "tool"]
    assert len(tool_msgs) == 5 and all(m["tool_call_id"] for m in tool_msgs)
    assert "<function=read_file>" in agent.messages[2]["content"]


def test_session_with_every_call_shape_qwen_writes(proj: Path) -> None:
    """Calls inside the reasoning, JSON bodies, bare <function= blocks, missing closing tags and
    markup in values all run; a reasoning-only turn gets one reminder."""
    html = "<html>\n<p>a </parameter> b</p>\n</html>\n"
    outs = [
        # 1. a complete call inside the reasoning, no </think> at all
        "I need the README.\n<tool_call>\n<function=read_file>\n<parameter=path>\nREADME.md\n"
        "</parameter>\n</function>\n</tool_call>",
        # 2. a JSON body whose arguments are a JSON string
        'Listing.\n</think>\n\n<tool_call>\n{"name": "list_dir", "arguments": "{\\"depth\\": 1}"}'
        "\n</tool_call>",
        # 3. a bare <function= block with an orphan </tool_call>
        "Search.\n</think>\n\nLet me search.\n\n<function=search>\n<parameter=pattern>\ndef add"
        "\n</parameter>\n</function>\n</tool_call>",
        # 4. reasoning only: no answer, no call
        "Hmm, what next? I should write the page",
        # 5. write_file whose value holds markup and </parameter>, </function> and
        #    </tool_call> missing at the end of generation
        "Writing.\n</think>\n\n<tool_call>\n<function=write_file>\n<parameter=path>\n"
        f"page.html\n</parameter>\n<parameter=content>\n{html}\n",
        # 6. a dropped </parameter> before the next parameter, typed value
        "Check.\n</think>\n\n<tool_call>\n<function=read_file>\n<parameter=path>\npage.html\n"
        "<parameter=start_line>\n2\n</parameter>\n</function>\n</tool_call>",
        answer("Done: page.html written."),
    ]
    agent, events = _agent(proj, outs)
    with agent:
        res = agent.run("write a page")
    assert res.status == "answered" and res.answer == "Done: page.html written.", res
    assert res.steps == 7
    r = _results(events)
    assert [x["name"] for x in r] == ["read_file", "list_dir", "search", "write_file", "read_file"]
    assert all(x["ok"] for x in r), r
    assert "# calc" in r[0]["content"] and "calc" in r[1]["content"]
    assert "def add" in r[2]["content"]
    assert (proj / "page.html").read_text() == html
    assert "a </parameter> b" in r[4]["content"] and "<html>" not in r[4]["content"]
    # The reasoning-only turn was answered once with a reminder, and no markup reached text.
    reminders = [m for m in agent.messages if m["role"] == "user" and "[Locus]" in m["content"]]
    assert len(reminders) == 1 and "without an answer or a tool call" in reminders[0]["content"]
    assert any(e.type == "warning" and "reasoning only" in e.data["message"] for e in events)
    said = "".join(e.data["text"] for e in events if e.type == "text")
    assert "<function=" not in said and "</tool_call>" not in said and "<parameter" not in said
    first = next(m for m in agent.messages if m["role"] == "assistant")
    assert first["reasoning_content"] == "I need the README.\n" and first["content"] == ""


def test_reasoning_only_turns_are_nudged_once_then_end(proj: Path) -> None:
    agent, _ = _agent(proj, ["thinking and thinking", "still thinking"])
    with agent:
        res = agent.run("hard question")
    assert res.status == "answered" and res.answer == "" and res.steps == 2
    assert sum(m["role"] == "user" and "[Locus]" in m["content"] for m in agent.messages) == 1


def test_events_and_messages_are_persisted(proj: Path) -> None:
    agent, events = _agent(proj, [call("list_dir"), answer("ok")])
    with agent:
        res = agent.run("look")
        stored = agent.store.events(res.run_id)
        rec = agent.store.run(res.run_id)
        msgs = agent.store.messages(res.run_id)
    types = [e["type"] for e in stored]
    assert types[0] == "run_started" and types[-1] == "done"
    assert {"step", "assistant", "tool_call", "tool_result"} <= set(types)
    assert "text" not in types and "reasoning" not in types  # streaming deltas are not stored
    assert [e.seq for e in events if e.seq] == [e["seq"] for e in stored]
    assert rec.status == "answered" and rec.answer == "ok" and rec.steps == 2 and rec.pid is None
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "assistant"]
    assert msgs[2]["tool_calls"][0]["function"]["name"] == "list_dir"
    assert msgs[2]["reasoning_content"] == ""  # kept for preserve_thinking


def test_approval_paths(proj: Path) -> None:
    asked: list[ApprovalRequest] = []
    answers = iter(
        [
            Decision.reject("use a clearer name"),
            Decision.allow_tool(),
            Decision.allow_prefix("echo"),
        ]
    )

    def ask(req: ApprovalRequest, cancel: threading.Event) -> Decision:
        asked.append(req)
        return next(answers)

    outs = [
        call("write_file", path="x.txt", content="1"),
        call("write_file", path="better.txt", content="1"),
        call("write_file", path="more.txt", content="2"),  # tool allowed: not asked
        call("run_command", command="echo one"),
        call("run_command", command="echo two"),  # prefix allowed: not asked
        answer("done"),
    ]
    agent, events = _agent(proj, outs, yes=False, ask=ask, sandbox="none")
    with agent:
        res = agent.run("write files")
    assert res.status == "answered"
    assert [a.summary for a in asked] == ["create x.txt", "create better.txt", "run: echo one"]
    assert asked[0].diff and "+1" in asked[0].diff and asked[2].sandboxed is False
    r = _results(events)
    assert not r[0]["ok"] and "use a clearer name" in r[0]["content"]
    assert "not carried out" in r[0]["content"] and not (proj / "x.txt").exists()
    assert (proj / "better.txt").exists() and (proj / "more.txt").exists()
    assert "one" in r[3]["content"] and "two" in r[4]["content"]
    needed = [e for e in events if e.type == "approval_needed"]
    assert len(needed) == 3
    autos = [e.data["auto"] for e in events if e.type == "approval"]
    assert autos == [False, False, True, False, True]


def test_no_sandbox_allowing_run_command_does_not_stick(proj: Path) -> None:
    asked: list[str] = []

    def ask(req: ApprovalRequest, cancel: threading.Event) -> Decision:
        asked.append(req.command or "")
        return Decision.allow_tool()

    outs = [call("run_command", command="true"), call("run_command", command="true"), answer("ok")]
    agent, events = _agent(proj, outs, yes=False, ask=ask, sandbox="none")
    with agent:
        agent.run("run")
    assert asked == ["true", "true"]  # each unsandboxed command is asked about again
    warn = [e.data["message"] for e in events if e.type == "warning"]
    assert any("no command sandbox" in w and "approval" in w for w in warn)


def test_step_limit_and_token_budget(proj: Path) -> None:
    loop = [call("list_dir")] * 5
    agent, events = _agent(proj, loop, max_steps=3)
    with agent:
        res = agent.run("loop forever")
    assert res.status == "step_limit" and res.steps == 3
    agent, events = _agent(proj, loop, token_budget=10)
    with agent:
        res = agent.run("loop forever")
    assert res.status == "token_budget" and res.steps == 1
    assert events[-1].type == "done" and events[-1].data["status"] == "token_budget"


def test_replay_running_out_is_an_error_not_a_hang(proj: Path) -> None:
    agent, _events = _agent(proj, [call("list_dir")])
    with agent:
        res = agent.run("x")
    assert res.status == "error" and "no output left" in (res.error or "")


def test_stop_kills_a_running_command(proj: Path) -> None:
    agent, events = _agent(proj, [call("run_command", command="sleep 30"), answer("never")])
    threading.Timer(1.0, agent.stop).start()
    with agent:
        res = agent.run("sleep")
    assert res.status == "stopped" and res.elapsed < 15
    r = _results(events)
    assert "Stopped by the user" in r[0]["content"]


def test_empty_task_and_bad_project(proj: Path, tmp_path: Path) -> None:
    agent, _ = _agent(proj, [])
    with agent, pytest.raises(AgentError, match="empty"):
        agent.run("   ")
    with pytest.raises(AgentError, match="does not exist"):
        Agent(tmp_path / "nope", ReplayBackend([]), data_dir=tmp_path / "d")


def test_compaction_drops_old_tool_outputs(proj: Path) -> None:
    (proj / "big.txt").write_text("".join(f"line {i} " + "x" * 60 + "\n" for i in range(300)))
    outs = [call("read_file", path="big.txt")] * 4 + [answer("read it all")]
    backend = HookedReplay(outs)
    agent, events = _agent(proj, backend, context_tokens=16000, max_turn_tokens=1024)
    with agent:
        res = agent.run("read big.txt")
        stored = agent.store.messages(res.run_id)
    assert res.status == "answered"
    comp = [e.data for e in events if e.type == "compacted"]
    assert comp and comp[0]["tokens_after"] < comp[0]["tokens_before"]
    last_view = backend.seen[-1]
    elided = [m for m in last_view if m["role"] == "tool" and "removed to save context" in m["content"]]
    assert elided and "read_file" in elided[0]["content"]
    assert "line 299" in [m for m in last_view if m["role"] == "tool"][-1]["content"]  # newest kept
    assert stored[3]["content"].count("line ") == 300  # the store keeps every output whole


def test_context_full_when_nothing_left_to_drop(proj: Path) -> None:
    agent, _ = _agent(proj, [answer("x")], context_tokens=64, max_turn_tokens=32)
    with agent:
        res = agent.run("a task " * 200)
    assert res.status == "context_full"


def test_external_edit_noticed_and_stale_edit_refused(proj: Path) -> None:
    target = proj / "calc" / "__init__.py"
    agent_ref: list[Agent] = []

    def external_edit() -> None:
        target.write_text(target.read_text().replace("a - b", "b - a"))
        assert agent_ref[0].watcher is not None and agent_ref[0].watcher.wait_for("calc/__init__.py")

    edit = call("edit_file", path="calc/__init__.py", old_string="return b - a", new_string="return a + b")
    outs = [
        call("read_file", path="calc/__init__.py"),
        edit,
        call("read_file", path="calc/__init__.py"),
        edit,
        answer("fixed"),
    ]
    backend = HookedReplay(outs, hooks={2: external_edit})
    agent, events = _agent(proj, backend, watch=True)
    agent_ref.append(agent)
    with agent:
        res = agent.run("fix add")
    assert res.status == "answered"
    r = _results(events)
    assert not r[1]["ok"] and "changed since you last read it" in r[1]["content"]
    changed = [e.data["paths"] for e in events if e.type == "files_changed"]
    assert ["calc/__init__.py"] in changed
    # The model was told, in its tool result, which file changed outside its own edits.
    tool_msgs = [m["content"] for m in agent.messages if m["role"] == "tool"]
    assert "calc/__init__.py (modified)" in tool_msgs[1]
    assert r[3]["ok"] and "return a + b" in target.read_text()
    started = next(e.data for e in events if e.type == "run_started")
    assert started["watching"] is True


def test_command_changing_a_read_file_is_reported(proj: Path) -> None:
    outs = [
        call("read_file", path="README.md"),
        call("run_command", command="echo more >> README.md"),
        answer("ok"),
    ]
    agent, events = _agent(proj, outs)
    with agent:
        agent.run("x")
    assert "README.md (modified)" in _results(events)[1]["content"]


def test_resume_after_restart(proj: Path, tmp_path: Path) -> None:
    data = proj.parent / "data"
    first = [call("read_file", path="README.md"), call("list_dir")]
    agent, _ = _agent(proj, first, max_steps=2)
    with agent:
        res = agent.run("summarize the project")
    assert res.status == "step_limit"
    run_id = res.run_id
    # Simulate a crash in the middle of the next step: a tool call stored without its result,
    # the run still marked running by a process that no longer exists.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    with Store(data / "locus.db") as store:
        store.add_message(
            run_id,
            {
                "role": "assistant",
                "content": "",
                "reasoning_content": "r",
                "tool_calls": [
                    {
                        "type": "function",
                        "id": "call_lost",
                        "function": {"name": "write_file", "arguments": {"path": "a"}},
                    }
                ],
            },
        )
        store.update_run(run_id, status="running", pid=int(dead))
    (proj / "README.md").write_text("# calc, edited while Locus was down\n")

    events: list[AgentEvent] = []
    agent2 = Agent(
        proj,
        ReplayBackend([answer("It is a calculator.")]),
        approvals=Approvals(yes=True),
        config=AgentConfig(watch=False),
        data_dir=data,
        on_event=events.append,
    )
    with agent2:
        res2 = agent2.resume(run_id)
        msgs = agent2.store.messages(run_id)
    assert res2.run_id == run_id and res2.status == "answered" and res2.steps == 3
    assert events[0].type == "run_started" and events[0].data["resumed"] is True
    lost = [m for m in msgs if m.get("tool_call_id") == "call_lost"]
    assert lost and "result was lost" in lost[0]["content"]
    note = msgs[-2]["content"]
    assert msgs[-2]["role"] == "user" and "README.md (modified)" in note and "not running" in note

    agent3 = Agent(proj, ReplayBackend([answer("more")]), data_dir=data, config=AgentConfig(watch=False))
    with agent3:
        with pytest.raises(AgentError, match="already finished"):
            agent3.resume(run_id)
        assert agent3.resume(run_id, "one more thing?").answer == "more"
        with pytest.raises(AgentError, match="no agent run"):
            agent3.resume("nope")
    other = make_project(tmp_path / "other")
    with (
        Agent(other, ReplayBackend([]), data_dir=data) as a4,
        pytest.raises(AgentError, match="belongs"),
    ):
        a4.resume(run_id)


def test_resume_refuses_a_run_alive_elsewhere(proj: Path) -> None:
    agent, _ = _agent(proj, [answer("x")])
    with agent:
        rid = agent.run("x").run_id
        agent.store.update_run(rid, status="running", pid=1)  # init: alive, not us
        with pytest.raises(AgentError, match="still running"):
            agent.resume(rid, "again")


def test_undo_through_the_agent(proj: Path) -> None:
    before = (proj / "README.md").read_bytes()
    outs = [
        call("read_file", path="README.md"),
        call("write_file", path="README.md", content="new"),
        answer("ok"),
    ]
    agent, events = _agent(proj, outs)
    with agent:
        agent.run("rewrite")
        diff = next(e.data for e in events if e.type == "diff")
        assert diff["files"] == [{"status": "M", "path": "README.md"}]
        assert os.path.exists(proj / "README.md")
        res = agent.undo()
    assert (proj / "README.md").read_bytes() == before and res.steps[0].tool == "write_file"
