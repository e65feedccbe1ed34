"""Function tools: a Python function with type hints and a docstring, which the agent may call.

    @voicecore.tool
    async def get_weather(city: str) -> str:
        "The current weather in a city."
        ...

The tool's name is the function's, its description the docstring's first paragraph, its
parameters a JSON schema derived from the signature (Pydantic models welcome as types). A `Tool`
built by hand around a `**arguments` function (an MCP server's, voicecore.mcp) has only a schema:
its required arguments are checked, their types are left to whoever runs it. Sync
functions run on a thread (they cannot be stopped: their result is dropped on barge-in); async
ones are cancelled, so they see `asyncio.CancelledError`. A tool that raises or times out gives
the model an error result, never the conversation an exception.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, get_type_hints, overload

from voicecore.errors import ConfigError

_ids = itertools.count(1)


@dataclass(frozen=True)
class ToolCall:
    """The model asks for `name(**arguments)`."""

    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: f"call_{next(_ids)}")

    def as_json(self) -> str:
        return json.dumps({"name": self.name, "arguments": self.arguments}, ensure_ascii=False)


@dataclass(frozen=True)
class ToolResult:
    call: ToolCall
    content: str  # what the model reads: the function's result as text, or the error
    seconds: float
    error: str | None = None  # "raised", "timed out", "unknown tool", "bad arguments"


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments (an object)
    function: Callable[..., Any]
    speculative: bool = False  # may run before the turn is certain (it changes nothing)

    def spec(self) -> dict[str, Any]:
        """The OpenAI-style function description chat templates and vLLM read."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    async def __call__(self, call: ToolCall, limit: float) -> ToolResult:
        """Run it for `call`: always a result (errors included); cancellation passes through."""
        start = time.perf_counter()

        def result(content: Any, error: str | None = None) -> ToolResult:
            text = (
                content if isinstance(content, str) else json.dumps(content, ensure_ascii=False, default=str)
            )
            return ToolResult(call, text, time.perf_counter() - start, error)

        try:
            arguments = self._validate(call.arguments)
        except ValueError as e:
            return result(f"error: bad arguments for {self.name}: {e}", "bad arguments")
        try:
            async with asyncio.timeout(limit):
                if inspect.iscoroutinefunction(self.function):
                    value = await self.function(**arguments)
                else:
                    value = await asyncio.to_thread(self.function, **arguments)
        except TimeoutError:
            return result(f"error: {self.name} took longer than {limit:g} s", "timed out")
        except Exception as e:  # the model hears what went wrong, the person gets an answer
            return result(f"error: {self.name} failed: {e}", "raised")
        return result(_plain(value))

    def _validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        from pydantic import TypeAdapter, ValidationError

        hints = _hints(self.function)
        takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(self.function).parameters.values())
        out: dict[str, Any] = {}
        for name, value in arguments.items():
            if name not in hints:
                if not takes_any:
                    raise ValueError(f"no parameter {name!r}")
                out[name] = value  # a schema-only tool (`**arguments`, MCP's): its server checks types
                continue
            try:
                out[name] = TypeAdapter(hints[name]).validate_python(value)
            except ValidationError as e:
                error = e.errors()[0]
                where = ".".join([name, *(str(part) for part in error["loc"])])
                raise ValueError(f"{where}: {error['msg']}") from None
        missing = set(self.parameters.get("required", [])) - set(out)
        if missing:
            raise ValueError(f"missing {', '.join(sorted(missing))}")
        return out


@overload
def tool(function: Callable[..., Any], /) -> Tool: ...
@overload
def tool(*, name: str | None = None, speculative: bool = False) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    function: Callable[..., Any] | None = None, /, *, name: str | None = None, speculative: bool = False
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make `function` a tool. `speculative=True`: it only reads (weather, time), so it may run
    while the person might still go on, which saves the wait for the end of their turn."""

    def make(fn: Callable[..., Any]) -> Tool:
        doc = inspect.getdoc(fn) or ""
        description = doc.split("\n\n")[0].replace("\n", " ").strip()
        if not description:
            raise ConfigError(f"tool {fn.__name__}: give it a docstring (the model reads it to choose)")
        return Tool(name or fn.__name__, description, parameters_schema(fn), fn, speculative)

    return make(function) if function is not None else make


def parameters_schema(fn: Callable[..., Any]) -> dict[str, Any]:
    """The JSON schema of `fn`'s keyword arguments, from its type hints (via Pydantic)."""
    from pydantic import TypeAdapter

    hints = _hints(fn)
    properties: dict[str, Any] = {}
    required: list[str] = []
    defs: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.name not in hints:
            raise ConfigError(f"tool {fn.__name__}: parameter {param.name!r} needs a type hint")
        schema = TypeAdapter(hints[param.name]).json_schema(ref_template="#/$defs/{model}")
        defs.update(schema.pop("$defs", {}))
        schema.pop("title", None)
        properties[param.name] = schema
        if param.default is param.empty:
            required.append(param.name)
        else:
            properties[param.name]["default"] = param.default
    out: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
    if defs:
        out["$defs"] = defs
    return out


def find(tools: Sequence[Tool], name: str) -> Tool | None:
    return next((t for t in tools if t.name == name), None)


def unknown(call: ToolCall) -> ToolResult:
    return ToolResult(call, f"error: there is no tool named {call.name}", 0.0, "unknown tool")


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    hints = get_type_hints(fn)
    hints.pop("return", None)
    return hints


def _plain(value: Any) -> Any:
    """A Pydantic model as its JSON data; anything else as it is."""
    dump = getattr(value, "model_dump", None)
    return dump(mode="json") if callable(dump) else value
