"""The LLM engine protocol, chat history; engines (llama.cpp, vLLM) beside them."""

from voicecore.llm.base import LLMEngine, Message
from voicecore.llm.history import ChatHistory

__all__ = ["ChatHistory", "LLMEngine", "Message"]
