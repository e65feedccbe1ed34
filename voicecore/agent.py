"""What an agent is, apart from the models that run it: instructions, a greeting, tools and the
application's hooks around each turn. A `Session` runs one; `serve` loads one from a file or a
module (`--agent examples/tutor.py`, `--agent package.module:attribute`), and picks one per room
from the configured profiles.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from voicecore.errors import ConfigError
from voicecore.tools import Tool

# the user's words -> the words the LLM sees (retrieval adds context, a guardrail rewrites)
BeforeLlm = Callable[[str], "str | Awaitable[str]"]
AfterReply = Callable[[str, str], "None | Awaitable[None]"]  # (the user's words, the reply heard)


@dataclass
class Agent:
    """`None` fields take the configured default (llm.system_prompt, livekit.greeting)."""

    instructions: str | None = None
    greeting: str | None = None
    tools: Sequence[Tool] = ()
    before_llm: BeforeLlm | None = None  # sees each user turn before the LLM does; returns its text
    after_reply: AfterReply | None = None  # each answered turn, once its reply has played
    name: str = "default"


def with_tools(agent: Agent, tools: Sequence[Tool]) -> Agent:
    """`agent` with `tools` (an MCP server's, say) after its own; a name both have is a
    ConfigError (the model calls a tool by its name: one of the two could never be called)."""
    if not tools:
        return agent
    own = {t.name for t in agent.tools}
    if clash := sorted(own & {t.name for t in tools}):
        raise ConfigError(
            f"agent {agent.name!r} has a tool named {', '.join(clash)} and is given another (an MCP "
            "server's?): the model could call only one of them"
        )
    return replace(agent, tools=[*agent.tools, *tools])


def load_agent(spec: str) -> Agent:
    """An `Agent` from "path/to/file.py", "path/to/file.py:name", "package.module" or
    "package.module:name" (the name defaults to `agent`)."""
    target, _, attribute = spec.partition(":") if not _is_windows_drive(spec) else (spec, "", "")
    attribute = attribute or "agent"
    if target.endswith(".py") or "/" in target:
        path = Path(target).expanduser()
        if not path.is_file():
            raise ConfigError(f"agent {spec}: {path} not found")
        name = f"voicecore_agent_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ConfigError(f"agent {spec}: cannot load {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            raise ConfigError(f"agent {spec}: {path} failed to load: {e!r}") from e
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ConfigError(f"agent {spec}: cannot import {target}: {e}") from None
    agent = getattr(module, attribute, None)
    if not isinstance(agent, Agent):
        raise ConfigError(f"agent {spec}: {attribute!r} is not a voicecore.Agent")
    return agent


def _is_windows_drive(spec: str) -> bool:
    return len(spec) > 2 and spec[1] == ":" and spec[2] in "\\/"
