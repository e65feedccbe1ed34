"""No secret in what is printed or logged: tokens and this run's secrets are replaced."""

from __future__ import annotations

import logging
import re

# A JWT: base64url of '{"' starts every header and payload. LiveKit's server echoes a token it
# rejects in its error ("401 Unauthorized - invalid token: eyJ..."), and the SDK logs that error
# and raises it: without this, a refused join would print the agent's token.
JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_hidden: set[str] = set()  # secrets of this run (LiveKit API secret, HTTP API key)


def hide(*secrets: str | None) -> None:
    """Never print these (8 characters or more: shorter ones would mangle ordinary words; the
    public dev pair is no secret)."""
    from voicecore.rtc.token import DEV_API_SECRET

    _hidden.update(s for s in secrets if s and len(s) >= 8 and s != DEV_API_SECRET)


def redact(text: str) -> str:
    text = JWT.sub("[token hidden]", text)
    for secret in _hidden:
        text = text.replace(secret, "[secret hidden]")
    return text


class _Redact(logging.Filter):
    """On the log handlers: every record, from voicecore or a library (the LiveKit SDK logs its
    Rust side through Python logging), its traceback included, goes out redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def log_redacted() -> None:
    """Redact every record of the root logger's handlers from now on."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_Redact())
