"""voicecore: a self-hosted voice agent in one asyncio process.

Embedding the pipeline::

    import asyncio
    from voicecore import AudioFrame, Session, load_config, load_models

    config = load_config()            # defaults < TOML < VOICECORE_* env < overrides
    models = load_models(config)      # load once, share between sessions
    session = Session(models, config, sink=my_sink, hooks=my_hooks)
    session.push_audio(AudioFrame(samples_int16, 16000))   # 20 ms at a time
"""

from voicecore.agent import Agent, load_agent, with_tools
from voicecore.audio.frames import FRAME_MS, AudioFrame, split_frames
from voicecore.audio.wav import load_for_recognition, read_wav, write_wav
from voicecore.config import Config, load_config
from voicecore.errors import AudioFormatError, ConfigError, VoicecoreError
from voicecore.llm.base import LLMEngine, Message
from voicecore.llm.history import ChatHistory
from voicecore.mcp import McpServers
from voicecore.metrics import TurnRecord
from voicecore.pipeline import Models, load_models
from voicecore.session import AudioSink, Session, SessionHooks
from voicecore.stt.base import STT, Transcript
from voicecore.talk import RealtimeSink, TalkResult, talk
from voicecore.tools import Tool, ToolCall, ToolResult, tool
from voicecore.tts.base import TTS
from voicecore.turn.state import AgentState

__version__ = "0.1.0"

__all__ = [
    "FRAME_MS",
    "Agent",
    "STT",
    "TTS",
    "Tool",
    "ToolCall",
    "ToolResult",
    "AgentState",
    "AudioFormatError",
    "AudioFrame",
    "AudioSink",
    "ChatHistory",
    "Config",
    "ConfigError",
    "LLMEngine",
    "McpServers",
    "Message",
    "Models",
    "RealtimeSink",
    "Session",
    "SessionHooks",
    "TalkResult",
    "Transcript",
    "TurnRecord",
    "VoicecoreError",
    "load_agent",
    "load_config",
    "load_for_recognition",
    "load_models",
    "read_wav",
    "split_frames",
    "talk",
    "tool",
    "with_tools",
    "write_wav",
]
