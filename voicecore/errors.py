"""Errors a user can act on. The CLI prints their message as one line, without a traceback."""


class VoicecoreError(Exception):
    """Base class: the message says what is wrong and, where possible, how to fix it."""


class AudioFormatError(VoicecoreError):
    """An input file or frame that voicecore cannot read as audio."""


class ConfigError(VoicecoreError):
    """A configuration value, file or model path that is wrong."""
