"""Where the LiveKit server is and the JWTs voicecore mints for it (livekit-api's AccessToken).

Secrets and tokens are never logged: `Credentials` hides the secret from its repr.
"""

from __future__ import annotations

import asyncio
import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from livekit import api

from voicecore.config import LiveKitConfig
from voicecore.errors import ConfigError

AGENT_TTL = datetime.timedelta(hours=24)  # a fixed-room agent stays for a long time
WORKER_TTL = datetime.timedelta(minutes=10)  # only checked when the /agent websocket opens
USER_TTL = datetime.timedelta(hours=6)
# livekit-server --dev's built-in pair: anyone knows it, so only `--dev` may use it.
DEV_API_KEY, DEV_API_SECRET = "devkey", "secret"
CHECK_TIMEOUT = 5.0  # seconds for the start-up check of the key pair


@dataclass(frozen=True)
class Credentials:
    url: str  # ws:// or wss:// (http(s):// is accepted and converted)
    api_key: str
    api_secret: str = field(repr=False)

    @property
    def ws_url(self) -> str:
        return _with_scheme(self.url, {"http": "ws", "https": "wss"})

    @property
    def http_url(self) -> str:
        return _with_scheme(self.url, {"ws": "http", "wss": "https"})


def credentials(
    config: LiveKitConfig, env: Mapping[str, str] | None = None, need_url: bool = True
) -> Credentials:
    """The config's values, else LiveKit's standard LIVEKIT_* environment variables."""
    env = os.environ if env is None else env
    url = config.url or env.get("LIVEKIT_URL") or ("" if need_url else "unset")
    key = config.api_key or env.get("LIVEKIT_API_KEY")
    secret = config.api_secret or env.get("LIVEKIT_API_SECRET")
    missing = [name for name, value in (("url", url), ("api key", key), ("api secret", secret)) if not value]
    if missing:
        raise ConfigError(
            f"LiveKit {', '.join(missing)} not set: use --url/--api-key/--api-secret, "
            "LIVEKIT_URL/LIVEKIT_API_KEY/LIVEKIT_API_SECRET, or [livekit] in the config file"
        )
    assert key and secret
    return Credentials(url, key, secret)


def refuse_dev_keys(creds: Credentials) -> None:
    """LiveKit's public development key pair is for `--dev` only: refuse it anywhere else."""
    if creds.api_key == DEV_API_KEY or creds.api_secret == DEV_API_SECRET:
        raise ConfigError(
            "the LiveKit API key/secret is livekit-server's public development pair "
            f"({DEV_API_KEY}/{DEV_API_SECRET}): pass --dev to use it on your own machine"
        )


async def check_credentials(creds: Credentials) -> None:
    """Fail at once, in one line, if the LiveKit server refuses this key pair. A server that is
    down or slow is not an error here: the agent waits for it."""
    lk = api.LiveKitAPI(creds.http_url, creds.api_key, creds.api_secret)
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await lk.room.list_rooms(api.ListRoomsRequest(names=["-"]))
    except api.TwirpError as e:
        if e.status in (401, 403):
            raise ConfigError(
                f"the LiveKit server at {creds.http_url} refused API key {creds.api_key!r} "
                f"({e.status}): check LIVEKIT_API_KEY and LIVEKIT_API_SECRET (or --api-key/--api-secret)"
            ) from None
    except Exception:  # noqa: BLE001 - unreachable, timed out: the agent retries on its own
        pass
    finally:
        await lk.aclose()


def agent_token(creds: Credentials, room: str, identity: str, name: str = "") -> str:
    """Join `room` as an agent participant (kind "agent": frontends find it by that)."""
    grants = api.VideoGrants(
        room_join=True,
        room=room,
        can_publish=True,
        can_subscribe=True,
        can_publish_data=True,
        can_update_own_metadata=True,  # lk.agent.state is a participant attribute
        agent=True,
    )
    return (
        api.AccessToken(creds.api_key, creds.api_secret)
        .with_identity(identity)
        .with_name(name or identity)
        .with_kind("agent")
        .with_grants(grants)
        .with_ttl(AGENT_TTL)
        .to_jwt()
    )


def user_token(
    creds: Credentials,
    room: str,
    identity: str,
    name: str = "",
    ttl: datetime.timedelta = USER_TTL,
) -> str:
    """Join `room` as a person: publish a microphone, subscribe to the agent, send text."""
    grants = api.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True)
    return (
        api.AccessToken(creds.api_key, creds.api_secret)
        .with_identity(identity)
        .with_name(name or identity)
        .with_grants(grants)
        .with_ttl(ttl)
        .to_jwt()
    )


def browser_token(
    creds: Credentials,
    room: str,
    identity: str,
    name: str,
    ttl: datetime.timedelta,
    agent_name: str | None = None,
    dispatch_metadata: str = "",
) -> str:
    """What a browser gets from /api/connection-details: join `room` only (no admin, create or
    list grants), publish a microphone (no camera or screen: the agent only listens) and data,
    hear the agent; for `ttl`. Data is what LiveKit's frontends send text with: the starters'
    chat box (`sendText` on `lk.chat`) and the pre-connect audio buffer livekit-client streams to
    the agent. With `agent_name`, creating the room dispatches that agent to it
    (RoomConfiguration.agents), with `dispatch_metadata` as the job's metadata."""
    grants = api.VideoGrants(
        room_join=True,
        room=room,
        can_publish=True,
        can_subscribe=True,
        can_publish_data=True,
        can_publish_sources=["microphone"],
    )
    token = (
        api.AccessToken(creds.api_key, creds.api_secret)
        .with_identity(identity)
        .with_name(name)
        .with_grants(grants)
        .with_ttl(ttl)
    )
    if agent_name:
        dispatch = api.RoomAgentDispatch(agent_name=agent_name, metadata=dispatch_metadata)
        token = token.with_room_config(api.RoomConfiguration(agents=[dispatch]))
    return token.to_jwt()


def worker_token(creds: Credentials) -> str:
    """Register on the server's /agent websocket (the `agent` video grant)."""
    return (
        api.AccessToken(creds.api_key, creds.api_secret)
        .with_grants(api.VideoGrants(agent=True))
        .with_ttl(WORKER_TTL)
        .to_jwt()
    )


def _with_scheme(url: str, mapping: Mapping[str, str]) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme=mapping.get(parts.scheme, parts.scheme)))
