"""Typed messages from LiveKit's frontends: @livekit/components-react's `useChat` (and so
agent-starter-react's chat box) sends each message as a text stream on topic `lk.chat` from the
person who typed it (livekit-client `sendText`), plus a legacy `lk-chat-topic` data packet marked
`ignoreLegacy` for servers that have text streams, which is not read here.

Bounded: a message is read up to MAX_CHARS (the rest is dropped, with a log line) and within
READ_TIMEOUT; one message per person is read at a time, and another that arrives meanwhile is
ignored (room.py).
"""

from __future__ import annotations

import asyncio
import logging

from livekit import rtc

log = logging.getLogger(__name__)

CHAT_TOPIC = "lk.chat"
# A typed question is a sentence or a paragraph; far more than the LLM's context can use would
# only slow the reply (SmolLM2's 2048 tokens hold about 8000 characters, history and all).
MAX_CHARS = 2000
READ_TIMEOUT = 10.0  # a message arrives in one or a few chunks; a stream left open is given up


async def read_chat(reader: rtc.TextStreamReader, label: str) -> str:
    """The message's text, cut at MAX_CHARS; "" if it failed or took longer than READ_TIMEOUT."""
    parts: list[str] = []
    size = 0
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            async for chunk in reader:
                parts.append(chunk[: MAX_CHARS - size])
                size += len(chunk)
                if size > MAX_CHARS:
                    log.warning("%s: typed message longer than %d characters; cut there", label, MAX_CHARS)
                    break
    except TimeoutError:
        log.warning("%s: typed message not complete after %g s; dropped", label, READ_TIMEOUT)
        return ""
    except rtc.StreamError as e:
        log.warning("%s: typed message failed: %s", label, e)
        return ""
    finally:
        reader.close()  # a no-op once read to the end; else it stops the subscription
    return "".join(parts).strip()
