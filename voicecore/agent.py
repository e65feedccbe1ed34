"""What an agent is, apart from the models that run it: instructions, a greeting, tools and the
application's hooks around each turn. A `Session` runs one; `serve` loads one from a file or a
module (`--agent examples/tutor.py`, `--agent package.module:attribute`), and picks one per room
from the configured profiles (`Agents`).

    Agents.load(config.agent)     at start-up: the default agent and every profile, once
    agents.choose(metadata...)    per person who joins: the room's and the dispatch's metadata,
                                  JSON such as {"agent": "tutor"}, name a profile
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import logging
import re
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from voicecore.config import AgentConfig
from voicecore.errors import ConfigError
from voicecore.tools import Tool

log = logging.getLogger(__name__)

PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

# the user's words -> the words the LLM sees (retrieval adds context, a guardrail rewrites)
BeforeLlm = Callable[[str], "str | Awaitable[str]"]
AfterReply = Callable[[str, str], "None | Awaitable[None]"]  # (the user's words, the reply heard)


@dataclass
class Agent:
    """`None` fields take the configured default (llm.system_prompt, livekit.greeting,
    tts.voice)."""

    instructions: str | None = None
    greeting: str | None = None
    voice: str | None = None  # a Piper .onnx voice file (loaded with the models: Models.add_voice)
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


def profile_specs(profiles: str) -> dict[str, str]:
    """ "tutor=examples/tutor.py,helper=pkg.mod:agent" -> {"tutor": "examples/tutor.py", ...}."""
    specs: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in profiles.split(","))):
        name, equals, spec = (part.strip() for part in entry.partition("="))
        if not equals or not spec:
            raise ConfigError(f"agent.profiles: {entry!r} is not name=spec (e.g. tutor=examples/tutor.py)")
        if not PROFILE_NAME.fullmatch(name):
            raise ConfigError(f"agent.profiles: {name!r}: 1-64 letters, digits, '-', '_' or '.'")
        if name in specs:
            raise ConfigError(f"agent.profiles: {name!r} is named twice")
        specs[name] = spec
    return specs


@dataclass(frozen=True)
class Agents:
    """The agent every room gets and the profiles a room may ask for by name, loaded once at
    start-up so that a bad one fails there and no room waits for an import."""

    default: Agent = field(default_factory=Agent)
    profiles: Mapping[str, Agent] = field(default_factory=dict)
    # Free-text {"instructions": ...} in metadata becomes the system prompt (agent.metadata_instructions)
    metadata_instructions: bool = False

    @classmethod
    def load(cls, config: AgentConfig) -> Agents:
        """The configured default (`agent.definition`; none: instructions and greeting from the
        config) and profiles (`agent.profiles`); ConfigError names the one that failed."""
        default = load_agent(config.definition) if config.definition else Agent()
        profiles = {}
        for name, spec in profile_specs(config.profiles).items():
            agent = load_agent(spec)
            profiles[name] = dataclasses.replace(agent, name=name) if agent.name == "default" else agent
        return cls(default, profiles, config.metadata_instructions)

    def choose(self, *metadata: str, where: str = "") -> Agent:
        """The agent `metadata` asks for (JSON objects, later ones win: the room's, then the
        dispatch's); the default when none does, or (with a warning) when the name is unknown.
        `where` names the room in log lines."""
        wanted: dict[str, object] = {}
        for text in metadata:
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                continue  # metadata another application put there for its own use
            if isinstance(data, dict):
                wanted.update(data)
        agent = self.default
        name = wanted.get("agent")
        if isinstance(name, str) and name:
            if name in self.profiles:
                agent = self.profiles[name]
            else:
                known = ", ".join(self.profiles) or "none configured"
                log.warning("%s: no agent profile %r (profiles: %s); using the default", where, name, known)
        instructions = wanted.get("instructions")
        if isinstance(instructions, str) and instructions.strip():
            if self.metadata_instructions:
                agent = dataclasses.replace(agent, instructions=instructions.strip())
            else:
                log.warning(
                    "%s: metadata sets instructions; ignored (agent.metadata_instructions is off)", where
                )
        return agent

    @property
    def voices(self) -> set[str]:
        """The Piper voices the agents speak with besides the configured one."""
        return {a.voice for a in [self.default, *self.profiles.values()] if a.voice}

    def with_tools(self, tools: Sequence[Tool]) -> Agents:
        """Every agent with `tools` (an MCP server's) besides its own (see `with_tools`)."""
        profiles = {name: with_tools(agent, tools) for name, agent in self.profiles.items()}
        return dataclasses.replace(self, default=with_tools(self.default, tools), profiles=profiles)
