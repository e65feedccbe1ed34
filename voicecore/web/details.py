"""POST /api/connection-details: a room and a token for one browser, in the shape LiveKit's
starter frontends use: `{serverUrl, roomName, participantName, participantToken}`.

The optional JSON body may name the person (`participantName`, or `participant_name` as
livekit-client's `TokenSource.endpoint` sends it) and, when the operator allows it
(`http.client_room_names`), the room (`roomName` / `room_name`); `room_config` (what LiveKit's
starters send to pick an agent) is accepted when it names this server's agent. By default every
call gets a fresh room, and the agent comes with it: in worker mode the token carries a dispatch
of this agent (RoomConfiguration.agents), so the room is created, and the agent sent, only when
the person actually joins. With `serve --room NAME` the agent is already in NAME, and that is the
only room handed out.

`agent` names one of the operator's agent profiles (`agent.profiles`, the allow-list); it rides
in the token's dispatch as its metadata, `{"agent": "tutor"}`, which the worker reads when it
joins. Nothing else a browser sends reaches the agent's instructions.
"""

from __future__ import annotations

import datetime
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from voicecore.rtc.token import Credentials, browser_token

ROOM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_NAME = 64
FIELDS = ("roomName", "participantName", "room_config", "room_name", "participant_name", "agent")
# LiveKit's TokenSourceRequest fields that voicecore does not take from a browser: it picks the
# identity itself (a fresh one per token, so nobody can pose as another participant).
REFUSED = ("participant_identity", "participant_metadata", "participant_attributes")


class BadRequest(ValueError):
    """The body is not something we can serve; the message says why."""


@dataclass(frozen=True)
class DetailsRequest:
    room: str | None = None
    participant_name: str | None = None
    agent: str | None = None  # an agent profile's name


@dataclass(frozen=True)
class DetailsIssuer:
    creds: Credentials
    server_url: str  # what the browser connects to (may differ from the agent's own URL)
    ttl: datetime.timedelta
    agent_name: str
    fixed_room: str | None = None  # `serve --room`: the agent is there, hand out only that room
    # Let the caller name the room (`http.client_room_names`). Off: a fresh room per call, so a
    # caller cannot get a token for someone else's existing room by guessing its name.
    client_room_names: bool = False
    profiles: frozenset[str] = field(default_factory=frozenset)  # what `agent` may name

    def parse(self, body: bytes) -> DetailsRequest:
        """Validate the request body (empty, or a JSON object); `BadRequest` says what is wrong."""
        if not body.strip():
            return DetailsRequest()
        try:
            data = json.loads(body)
        except json.JSONDecodeError as e:
            where = f"line {e.lineno} column {e.colno}"
            raise BadRequest(f"the body is not valid JSON: {e.msg} at {where}") from None
        except UnicodeDecodeError:
            raise BadRequest("the body is not valid JSON: not UTF-8 text") from None
        if not isinstance(data, dict):
            raise BadRequest("the body must be a JSON object (or empty)")
        refused = [key for key in data if key in REFUSED]
        if refused:
            raise BadRequest(f"{refused[0]}: not accepted; voicecore gives every token a fresh identity")
        unknown = [key for key in data if key not in FIELDS]
        if unknown:
            raise BadRequest(f"unknown field {unknown[0]!r}; known: {', '.join(FIELDS)}")
        room = _one_of(data, "roomName", "room_name")
        if room is not None and not ROOM_NAME.fullmatch(room):
            raise BadRequest("roomName: 1-64 letters, digits, '-', '_' or '.', not starting with a symbol")
        if room is not None and self.fixed_room is not None and room != self.fixed_room:
            raise BadRequest(f"this server's agent is in room {self.fixed_room!r} only")
        if room is not None and self.fixed_room is None and not self.client_room_names:
            raise BadRequest(
                "roomName: this server gives every call a fresh room; the operator can allow "
                "chosen room names with http.client_room_names = true"
            )
        name = _one_of(data, "participantName", "participant_name")
        if name is not None:
            name = name.strip()
            if not 0 < len(name) <= MAX_NAME or not name.isprintable():
                raise BadRequest(f"participantName: 1-{MAX_NAME} printable characters")
        self._check_room_config(data.get("room_config"))
        return DetailsRequest(room, name, self._check_agent(_optional_str(data, "agent")))

    def issue(self, request: DetailsRequest) -> dict[str, str]:
        room = self.fixed_room or request.room or f"voicecore-{secrets.token_hex(6)}"
        identity = f"user-{secrets.token_hex(6)}"
        name = request.participant_name or "you"
        dispatch = None if self.fixed_room else self.agent_name
        metadata = json.dumps({"agent": request.agent}) if request.agent else ""
        token = browser_token(
            self.creds, room, identity, name, self.ttl, agent_name=dispatch, dispatch_metadata=metadata
        )
        return {
            "serverUrl": self.server_url,
            "roomName": room,
            "participantName": name,
            "participantToken": token,
        }

    def _check_agent(self, agent: str | None) -> str | None:
        if agent is None:
            return None
        if agent not in self.profiles:
            known = ", ".join(sorted(self.profiles)) or "none"
            raise BadRequest(f"agent: no profile {agent[:64]!r} on this server (profiles: {known})")
        if self.fixed_room is not None:
            # the agent is already in that room, with the agent its metadata chose
            raise BadRequest(f"agent: this server's agent is in room {self.fixed_room!r} only, as it is")
        return agent

    def _check_room_config(self, config: Any) -> None:
        if config is None:
            return
        if not isinstance(config, dict):
            raise BadRequest("room_config must be an object")
        agents = config.get("agents", [])
        if not isinstance(agents, list) or not all(isinstance(a, dict) for a in agents):
            raise BadRequest("room_config.agents must be a list of objects")
        for agent in agents:
            wanted = agent.get("agent_name")
            if wanted not in (None, "", self.agent_name):
                raise BadRequest(f"room_config names agent {wanted!r}; this server runs {self.agent_name!r}")


def _one_of(data: dict[str, Any], key: str, alias: str) -> str | None:
    """`key`, or its TokenSourceRequest spelling `alias`; both at once only if they agree."""
    value, other = _optional_str(data, key), _optional_str(data, alias)
    if value is not None and other is not None and value != other:
        raise BadRequest(f"{key} and {alias} disagree")
    return value if value is not None else other


def _optional_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{key} must be a string")
    return value
