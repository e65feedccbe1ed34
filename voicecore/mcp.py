"""Tools from MCP servers: every tool a Model Context Protocol server offers becomes a tool of the
agent, as LiveKit Agents and pipecat offer them.

    async with McpServers("python orders_server.py; https://tools.example.com/mcp") as tools:
        session = Session(models, config, sink, agent=Agent(tools=[*my_tools, *tools]))

A server is a command line (run as a child process, spoken to on its stdin and stdout; it gets
the MCP SDK's short list of environment variables, not ours: write `env NAME=value command` to
give it more) or a streamable-HTTP URL. Each is connected to, initialised and asked for its tools
within `connect_timeout`, one after the other; one that fails or does not answer in time is a
`ConfigError` naming it, and the servers opened before it are closed again. Two tools of the same
name (from two servers, or a server's and the agent's own) are a `ConfigError` too: the model
calls a tool by its name, so one of the two could never be called.

A tool's parameters are its input schema; voicecore checks that the required arguments are
there and the server checks the rest. An error result (`isError`) raises, so the model hears it
as it hears any tool that failed. A tool the server says only reads (`readOnlyHint`) is
`speculative`: it may run before the person's turn is certain. Leaving the `async with` closes
every connection; each server process gets its stdin closed, then SIGTERM, then SIGKILL (the
SDK's shutdown, about 2 s per stubborn server), so none is left behind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
from collections.abc import Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from voicecore.errors import ConfigError
from voicecore.tools import Tool

if TYPE_CHECKING:
    from mcp import Client
    from mcp.types import CallToolResult
    from mcp.types import Tool as McpTool

log = logging.getLogger(__name__)

# Seconds one server gets to start, initialise and list its tools: `npx` or `uvx` may first fetch
# the server's package, and a slow server must not hold start-up for ever.
CONNECT_TIMEOUT = 30.0
MAX_PAGES = 100  # of a tool listing: a server that pages for ever does not hang start-up


class McpToolError(Exception):
    """The server ran the tool and said it failed; the text is what the model hears."""


class McpServers:
    """Connections to MCP servers, open inside `async with` (or between `open()` and
    `aclose()`); `tools` are all of theirs. Open and close it in one task: the SDK's connections
    are anyio task groups."""

    def __init__(self, servers: str | Sequence[str], connect_timeout: float = CONNECT_TIMEOUT) -> None:
        """`servers`: command lines and URLs, as a sequence or one string separated by ";"
        (`agent.mcp_servers`)."""
        self.servers = parse_servers(servers)
        self.connect_timeout = connect_timeout
        self.tools: list[Tool] = []
        self._stack = AsyncExitStack()

    async def open(self) -> list[Tool]:
        """Connect to every server (as `async with` does); `aclose()` even if this raised."""
        try:
            owners: dict[str, str] = {}  # tool name -> the server that offers it
            for server in self.servers:
                for tool in await self._open(server):
                    if tool.name in owners:
                        raise ConfigError(
                            f"MCP servers {owners[tool.name]} and {label(server)} both offer a tool "
                            f"named {tool.name!r}: the model could call only one of them"
                        )
                    owners[tool.name] = label(server)
                    self.tools.append(tool)
        except BaseException:
            await self.aclose()
            raise
        return list(self.tools)

    async def aclose(self) -> None:
        self.tools = []
        await self._stack.aclose()

    async def __aenter__(self) -> list[Tool]:
        return await self.open()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _open(self, server: str) -> list[Tool]:
        from mcp import Client

        name, transport = label(server), _transport(server)
        try:
            async with asyncio.timeout(self.connect_timeout):
                client = await self._stack.enter_async_context(Client(transport))
                listed = await _list_tools(client)
        except TimeoutError:
            raise ConfigError(
                f"MCP server {name} did not start and list its tools within {self.connect_timeout:g} s"
            ) from None
        except Exception as e:
            raise ConfigError(f"MCP server {name} could not be used: {_reason(e)}") from e
        tools = [_tool(client, t) for t in listed]
        log.info("MCP server %s: tools %s", name, ", ".join(t.name for t in tools) or "none")
        return tools


def parse_servers(servers: str | Sequence[str]) -> list[str]:
    parts = servers.split(";") if isinstance(servers, str) else servers
    return [part.strip() for part in parts if part.strip()]


def label(server: str) -> str:
    """The server as log lines and errors name it: a URL without its credentials and query, a
    command line without the values of its NAME=value words."""
    if _is_url(server):
        url = urlsplit(server)
        port = f":{url.port}" if url.port else ""
        return f"{url.scheme}://{url.hostname}{port}{url.path}"
    words = [w.split("=", 1)[0] + "=..." if "=" in w else w for w in _split(server)]
    return repr(shlex.join(words))


def _is_url(server: str) -> bool:
    return server.startswith(("http://", "https://"))


def _split(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError as e:  # an unclosed quote
        raise ConfigError(f"MCP server command line {command!r}: {e}") from None


def _transport(server: str) -> Any:
    from mcp import StdioServerParameters

    if _is_url(server):
        return server
    command, *args = _split(server)
    return StdioServerParameters(command=command, args=args)


async def _list_tools(client: Client) -> list[McpTool]:
    tools: list[McpTool] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools += page.tools
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


def _tool(client: Client, listed: McpTool) -> Tool:
    """A voicecore Tool that calls `listed` (an MCP tool description) on `client`."""
    name = listed.name

    async def call(**arguments: Any) -> str:
        result = await client.call_tool(name, arguments)
        text = _text(result)
        if result.is_error:
            raise McpToolError(text or "the server gave no reason")
        return text

    description = (listed.description or listed.title or name.replace("_", " ")).strip()
    read_only = listed.annotations is not None and listed.annotations.read_only_hint is True
    return Tool(name, description, listed.input_schema, call, speculative=read_only)


def _text(result: CallToolResult) -> str:
    """What the model reads of a result: its text parts; its structured content if it has no
    text. Images and audio are left out (the agent speaks; the model reads text)."""
    texts = [block.text for block in result.content if block.type == "text"]
    if texts:
        return "\n".join(texts)
    if result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False, default=str)
    return ""


def _reason(error: BaseException) -> str:
    """The first real error inside the task groups' exception groups."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return str(error) or type(error).__name__
