"""A small MCP server written with the official SDK, for the tests: stdio by default, or Streamable
HTTP with `http PORT`. `crash` and `env` tools let tests see a crash and the server's environment."""

from __future__ import annotations

import base64
import io
import os
import sys

from mcp.server.mcpserver import MCPServer
from mcp.types import ImageContent, TextContent

server = MCPServer("pytest-server")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def env() -> str:
    """The server's environment, one NAME=value per line."""
    return "\n".join(f"{k}={v}" for k, v in sorted(os.environ.items()))


@server.tool()
def red_square(size: int = 8) -> list[ImageContent | TextContent]:
    """A red square PNG of the given size."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (255, 0, 0)).save(buf, "PNG")
    data = base64.b64encode(buf.getvalue()).decode()
    return [
        TextContent(type="text", text="a red square"),
        ImageContent(type="image", data=data, mimeType="image/png"),
    ]


@server.tool()
def noisy() -> str:
    """Text with terminal escapes and other control characters."""
    return "before\x1b[2Jafter\x07\u202eevil\nnext line"


@server.tool()
def crash() -> str:
    """Exit the server process at once, as a crash would."""
    os._exit(3)


@server.tool()
def touch(path: str) -> str:
    """Write a file (and its folders) under the working directory and say where."""
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            f.write("x")
    except OSError as e:
        return f"failed: {e}"
    return os.path.abspath(path)


if __name__ == "__main__":
    if sys.argv[1:2] == ["http"]:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    elif sys.argv[1:2] == ["fail"]:
        print("pytest-server: refusing to start (asked to fail)", file=sys.stderr)
        sys.exit(2)
    else:
        server.run()
