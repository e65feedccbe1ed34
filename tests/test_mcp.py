"""Tools from MCP servers: a real MCP server (the official SDK's MCPServer, run as a child
process over stdio, and over streamable HTTP) whose tools the agent calls, on the bundled models,
in a Session and in a room of `voicecore serve`."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from livekit_fixtures import LiveKitServer, dispatch, heard_by_agent, reply_done
from serve_process import ServeProcesses

from voicecore import Agent, RealtimeSink, Session, SessionHooks
from voicecore.agent import Agents, with_tools
from voicecore.errors import ConfigError
from voicecore.mcp import McpServers, label
from voicecore.metrics import TurnRecord
from voicecore.rtc.worker import DispatchWorker
from voicecore.tools import Tool, ToolCall, ToolResult

# argv: calls-file pid-file [--lookup-only] [streamable HTTP port]; without a port it speaks on
# stdio. --lookup-only: only lookup_order (see test_the_agent_asks_an_mcp_server_and_says_its_answer)
SERVER = '''
import asyncio, os, sys
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

calls, pids, *options = sys.argv[1:]
with open(pids, "a") as f:
    f.write(f"{os.getpid()}\\n")
server = MCPServer("orders")

@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def lookup_order(order_id: str) -> str:
    """The status of a customer's order."""
    with open(calls, "a") as f:
        f.write(f"{order_id}\\n")
    return f"Order {order_id} has shipped."

def cancel_order(order_id: str, reason: str = "") -> str:
    """Cancel a customer's order."""
    raise ToolError(f"order {order_id} has shipped already and cannot be cancelled")

async def count_orders(customer: str) -> int:
    """How many orders a customer placed."""
    await asyncio.sleep(30 if customer == "slow" else 0)
    return 3

if "--lookup-only" not in options:
    server.tool()(cancel_order)
    server.tool()(count_orders)
port = next((int(o) for o in options if o.isdigit()), None)
if port is None:
    server.run()
else:
    server.run("streamable-http", port=port)
'''


def orders_server(
    tmp_path: Path, name: str = "orders_server.py", options: str = ""
) -> tuple[str, Path, Path]:
    """The server's command line, the file it appends each lookup to, the file of its pids."""
    script = tmp_path / name
    script.write_text(SERVER)
    calls, pids = tmp_path / "calls.txt", tmp_path / "pids.txt"
    return f"{sys.executable} {script} {calls} {pids} {options}".strip(), calls, pids


def running(pids: Path) -> list[int]:
    alive = []
    for pid in map(int, pids.read_text().split()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 0)
            alive.append(pid)
    return alive


async def test_tools_of_a_stdio_server_are_called_and_the_server_ends_with_them(tmp_path):
    command, calls, pids = orders_server(tmp_path)
    async with McpServers(command) as tools:
        assert len(running(pids)) == 1
        assert [t.name for t in tools] == ["lookup_order", "cancel_order", "count_orders"]
        lookup, cancel, count = tools
        assert lookup.description == "The status of a customer's order."
        assert lookup.parameters["properties"]["order_id"]["type"] == "string"
        assert lookup.parameters["required"] == ["order_id"]
        assert lookup.speculative and not cancel.speculative  # readOnlyHint: it only reads

        result = await lookup(ToolCall("lookup_order", {"order_id": "1234"}), limit=5)
        assert (result.content, result.error) == ("Order 1234 has shipped.", None)
        assert calls.read_text().split() == ["1234"]
        assert (await count(ToolCall("count_orders", {"customer": "ann"}), limit=5)).content == "3"

        # the server's error result is what the model hears, not an exception
        result = await cancel(ToolCall("cancel_order", {"order_id": "1234"}), limit=5)
        assert result.error == "raised"
        assert "has shipped already and cannot be cancelled" in result.content
        # required arguments are checked here; their types by the server
        result = await lookup(ToolCall("lookup_order", {}), limit=5)
        assert result.error == "bad arguments"
        assert result.content == "error: bad arguments for lookup_order: missing order_id"
        result = await lookup(ToolCall("lookup_order", {"order_id": ["1234"]}), limit=5)
        assert result.error == "raised" and "valid string" in result.content

        # a call past the tool timeout is cancelled; the connection still serves the next one
        start = time.monotonic()
        result = await count(ToolCall("count_orders", {"customer": "slow"}), limit=0.5)
        assert result.error == "timed out" and time.monotonic() - start < 2
        result = await lookup(ToolCall("lookup_order", {"order_id": "77"}), limit=5)
        assert result.content == "Order 77 has shipped."
    assert running(pids) == []


async def test_a_server_that_dies_gives_the_model_an_error_at_once(tmp_path):
    command, _, pids = orders_server(tmp_path)
    async with McpServers(command) as tools:
        [pid] = running(pids)
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.5)  # the loop carries on: the connection's tasks end quietly
        result = await tools[0](ToolCall("lookup_order", {"order_id": "1234"}), limit=5)
        assert result.error == "raised" and result.seconds < 1, result
        assert result.content == "error: lookup_order failed: Connection closed"
    assert running(pids) == []


async def test_a_server_that_fails_or_does_not_answer_is_a_config_error_naming_it(tmp_path):
    command, _, pids = orders_server(tmp_path)
    with pytest.raises(ConfigError, match="MCP server 'no-such-mcp-server --port 1' could not be used"):
        async with McpServers([command, "no-such-mcp-server --port 1"]):
            pass
    assert len(pids.read_text().split()) == 1 and running(pids) == []  # the one opened is closed

    silent = tmp_path / "silent_server.py"
    silent.write_text(
        f"import os, time\nopen({str(pids)!r}, 'a').write(f'{{os.getpid()}}\\n')\ntime.sleep(60)\n"
    )
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"MCP server '.*silent_server\.py' did not start .* within 1 s"):
        async with McpServers(f"{sys.executable} {silent}", connect_timeout=1):
            pass
    # bounded: 1 s to give up, then the SDK's shutdown (stdin closed, 2 s, SIGTERM)
    assert time.monotonic() - start < 8
    assert len(pids.read_text().split()) == 2 and running(pids) == []

    with pytest.raises(ConfigError, match=r"MCP server '.*' could not be used: Connection closed"):
        async with McpServers(f"{sys.executable} {tmp_path / 'missing.py'}"):
            pass


async def test_two_tools_of_one_name_are_a_config_error(tmp_path):
    command, _, pids = orders_server(tmp_path)
    other = orders_server(tmp_path, "other_server.py")[0]
    with pytest.raises(ConfigError, match="both offer a tool named 'lookup_order'"):
        async with McpServers(f"{command}; {other}"):
            pass
    assert running(pids) == []

    def lookup_order(order_id: str) -> str:
        return "mine"

    own = Tool("lookup_order", "The status of an order.", {"type": "object"}, lookup_order)
    async with McpServers(command) as tools:
        with pytest.raises(ConfigError, match="lookup_order"):
            with_tools(Agent(tools=[own]), tools)
        assert [t.name for t in with_tools(Agent(), tools).tools] == [t.name for t in tools]


def test_logs_name_a_server_without_its_secrets():
    assert label("https://user:pw@tools.example.com:8443/mcp?key=abc") == "https://tools.example.com:8443/mcp"
    assert label("env GITHUB_TOKEN=ghp_x npx -y server") == "'env GITHUB_TOKEN=... npx -y server'"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_tools_of_a_streamable_http_server(tmp_path):
    command, calls, pids = orders_server(tmp_path)
    port = free_port()
    server = await asyncio.create_subprocess_exec(*command.split(), str(port), stderr=subprocess.DEVNULL)
    try:
        async with asyncio.timeout(30):
            while True:  # until it listens
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                await asyncio.sleep(0.1)
        async with McpServers(f"http://127.0.0.1:{port}/mcp") as tools:
            result = await tools[0](ToolCall("lookup_order", {"order_id": "42"}), limit=5)
        assert result.content == "Order 42 has shipped."
        assert calls.read_text().split() == ["42"]
    finally:
        server.kill()
        await server.wait()


class Heard(SessionHooks):
    def __init__(self) -> None:
        self.tools: list[ToolResult] = []
        self.turns: list[TurnRecord] = []

    def on_tool(self, result: ToolResult) -> None:
        self.tools.append(result)

    def on_turn(self, record: TurnRecord) -> None:
        self.turns.append(record)


async def test_the_agent_asks_an_mcp_server_and_says_its_answer(models, config, tmp_path):
    # One tool: given the server's three, SmolLM2-135M's tool chooser takes count_orders for
    # these words (gains in nats: lookup 8.6, count 9.9, cancel 6.1; the threshold is 1.5).
    command, calls, pids = orders_server(tmp_path, options="--lookup-only")
    await models.warm_up(config.llm.system_prompt)
    hooks = Heard()
    async with McpServers(command) as tools:
        sink = RealtimeSink(config.audio.output_sample_rate)
        session = Session(models, config, sink, hooks, agent=Agent(tools=tools))
        try:
            # For "What is the status of order 1234?" the tool is chosen too (gain 10.9), but
            # SmolLM2-135M writes its order id as "{{order_id}}", as it does for a
            # @voicecore.tool: the small model's arguments, not MCP's.
            session.push_text("Where is my order 1234?")
            async with asyncio.timeout(60):
                await session.wait_for_idle()
        finally:
            await session.aclose()
    assert calls.read_text().split() == ["1234"]
    assert [(r.call.name, r.call.arguments, r.error) for r in hooks.tools] == [
        ("lookup_order", {"order_id": "1234"}, None)
    ]
    # the status reaches the words heard (SmolLM2-135M says them inside JSON-like text, as it
    # does after a @voicecore.tool's result)
    assert len(hooks.turns) == 1 and "shipped" in hooks.turns[0].agent_text.lower(), hooks.turns
    assert running(pids) == []


# -- voicecore serve -------------------------------------------------------------------------------
def serve_env(livekit_server: LiveKitServer, mcp_servers: str) -> dict[str, str]:
    creds = livekit_server.creds
    return {
        "LIVEKIT_URL": creds.ws_url,
        "LIVEKIT_API_KEY": creds.api_key,
        "LIVEKIT_API_SECRET": creds.api_secret,
        "VOICECORE_AGENT_MCP_SERVERS": mcp_servers,
    }


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_serve_stops_at_once_naming_a_server_that_fails(
    livekit_server: LiveKitServer, serve_processes: ServeProcesses, tmp_path: Path
):
    command, _, pids = orders_server(tmp_path)
    env = serve_env(livekit_server, f"{command}; no-such-mcp-server")
    serve = serve_processes(["--dev", "--room", "mcp-fails", "--no-http"], env, tmp_path / "serve.log")
    start = time.monotonic()
    await serve.start()
    assert await asyncio.wait_for(serve.proc.wait(), 60) == 2
    assert "MCP server 'no-such-mcp-server' could not be used" in serve.output()
    assert "loading models" not in serve.output()  # before the models, not after a minute of them
    print(f"\nserve exited {time.monotonic() - start:.1f} s after it started")
    assert running(pids) == []


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_serve_gives_every_room_the_tools_of_its_mcp_servers(
    livekit_server: LiveKitServer, serve_processes: ServeProcesses, callers, say, tmp_path: Path
):
    command, calls, pids = orders_server(tmp_path, options="--lookup-only")
    env = serve_env(livekit_server, command)
    serve = serve_processes(["--dev", "--room", "mcp-orders", "--no-http"], env, tmp_path / "serve.log")
    await serve.start()
    await serve.wait_for("joined room mcp-orders")
    assert "tools from MCP servers: lookup_order" in serve.output()
    caller = callers("alice")
    await asyncio.wait_for(caller.join(livekit_server.creds, "mcp-orders"), 15)
    await heard_by_agent(caller)
    await caller.speak(say("Where is my order 1234?"))
    await reply_done(caller, finals=1)
    # the room's agent called the server's tool once; what it wrote for the order id is the small
    # model's (from Whisper's "Where is my order 1234?" SmolLM2-135M writes "{{order_id}}"; the
    # typed words of test_the_agent_asks_an_mcp_server_and_says_its_answer give 1234)
    heard = [t.text for t in caller.transcripts if t.final]
    print(f"\nlookups {calls.read_text().split()}; transcripts {heard}")
    assert len(calls.read_text().split()) == 1, (serve.output()[-3000:], heard)
    assert await serve.stop(signal.SIGTERM) == 0
    assert running(pids) == []  # serve closed its MCP server on the way out


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_a_dispatch_worker_gives_the_rooms_it_takes_the_tools(
    livekit_server: LiveKitServer, models, config, callers, tmp_path: Path
):
    command, _, pids = orders_server(tmp_path, options="--lookup-only")
    config = copy.deepcopy(config)
    config.livekit.agent_name = "vc-mcp-dispatch"
    async with McpServers(command) as tools:
        agents = Agents.load(config.agent).with_tools(tools)
        worker = DispatchWorker(models, config, livekit_server.creds, agents=agents)
        running_worker = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(worker.registered.wait(), 10)
            await dispatch(livekit_server, worker.agent_name, "mcp-dispatched")
            caller = callers("bob")
            await asyncio.wait_for(caller.join(livekit_server.creds, "mcp-dispatched"), 15)
            await heard_by_agent(caller)
            [job] = worker.jobs.values()
            assert job.agent is not None
            session = job.agent.conversations["bob"].session
            assert [t.name for t in session.agent.tools] == ["lookup_order"]
        finally:
            await asyncio.wait_for(worker.aclose(), 15)
            await asyncio.wait_for(running_worker, 10)
    assert running(pids) == []
