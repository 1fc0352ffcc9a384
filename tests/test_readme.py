"""What the README shows, the program has: every `locus …` command and flag in its code blocks and
inline code is in that command's `--help`, and every benchmark flag in the script's (issue 31).
The API endpoints it lists are checked against a server in tests/app/server/test_readme_api.py."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.S | re.M)
FLAG = re.compile(r"(?<![\w-])(--?[a-zA-Z][\w-]*)")
PROSE = FENCE.sub("", README)


def shown_commands() -> list[str]:
    """Each `locus …` command line the README shows: in code blocks (comments cut) and inline."""
    found = []
    for block in FENCE.finditer(README):
        for line in block.group(1).splitlines():
            line = line.split(" #", 1)[0]
            if (m := re.search(r"(?:^|[\s(|;&])(locus .*)", line)) and not line.lstrip().startswith("#"):
                found.append(m.group(1))
    found += re.findall(r"`(locus [^`]+)`", PROSE)
    return [re.sub(r'"[^"]*"', "", c) for c in found]  # quoted arguments are not flags


@cache
def help_text(*argv: str) -> str:
    """`locus ARGV --help`, in this process."""
    from app.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([*argv, "--help"])
    return out.getvalue()


def subcommands() -> set[str]:
    listing = help_text().split("positional arguments:", 1)[1].split("options:", 1)[0]
    return set(re.findall(r"^    ([a-z][a-z-]*)\b", listing, re.M))


def test_the_readme_shows_commands() -> None:
    subs = subcommands()
    assert {"generate", "chat", "serve", "agent", "locate", "convert", "doctor"} <= subs
    assert len(shown_commands()) > 40


def test_every_command_and_flag_in_the_readme_is_in_help() -> None:
    subs, missing = subcommands(), []
    for cmd in shown_commands():
        words = cmd.split()
        first = words[1] if len(words) > 1 else ""
        if re.fullmatch(r"[a-z][a-z-]*", first) and first not in subs:
            missing.append(f"{cmd!r}: no command {first!r}")
            continue
        argv = (first,) if first in subs else ()
        if argv and len(words) > 2 and re.fullmatch(r"[a-z][a-z-]*", words[2]):
            nested = help_text(first).split("positional arguments:", 1)[-1].split("options:", 1)[0]
            if re.search(rf"^    {words[2]}\b", nested, re.M):  # `locus mcp list`: its own flags
                argv = (first, words[2])
        known = set(FLAG.findall(help_text(*argv)))
        missing += [f"{cmd!r}: {flag}" for flag in FLAG.findall(cmd) if flag not in known]
    assert missing == []


def test_common_options_exist_on_each_command_they_name() -> None:
    para = re.search(r"^Common options \((.*?)\):(.*?)\n\n", README, re.S | re.M)
    assert para is not None
    subs = re.findall(r"`(\w+)`", para.group(1))
    flags = {f for span in re.findall(r"`([^`]+)`", para.group(2)) for f in FLAG.findall(span)}
    assert len(subs) >= 5 and {"--demo", "--context", "--remote"} <= flags
    missing = [f"{s} {f}" for s in subs for f in sorted(flags) if f not in FLAG.findall(help_text(s))]
    assert missing == []


def bench_flags() -> dict[str, set[str]]:
    """Script -> flags the README gives it: inline with `python bench/X.py`, and in the
    Benchmarks section, anywhere in the paragraph that starts with that script."""
    out: dict[str, set[str]] = {}
    for span in re.findall(r"`python bench/(\w+)\.py([^`]*)`", PROSE):
        out.setdefault(span[0], set()).update(FLAG.findall(span[1]))
    section = PROSE.split("\n## Benchmarks\n", 1)[1].split("\n## ", 1)[0]
    for para in section.split("\n\n"):
        if m := re.match(r"`python bench/(\w+)\.py", para.strip()):
            spans = " ".join(re.findall(r"`([^`]+)`", para))
            out.setdefault(m.group(1), set()).update(FLAG.findall(spans))
    return out


def test_every_benchmark_flag_in_the_readme_is_in_its_help() -> None:
    flags, missing = bench_flags(), []
    assert {"decode", "pipeline", "mtp", "agent_session", "grounding", "agent_eval"} <= set(flags)
    for script, wanted in sorted(flags.items()):
        r = subprocess.run(
            [sys.executable, str(ROOT / "bench" / f"{script}.py"), "--help"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert r.returncode == 0, r.stderr
        known = set(FLAG.findall(r.stdout))
        missing += [f"bench/{script}.py {f}" for f in sorted(wanted - known)]
    assert missing == []
