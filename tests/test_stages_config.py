"""Models chosen and found by config: explicit paths, engine choice, clear errors; history trim."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicecore import ChatHistory, load_config
from voicecore.errors import ConfigError
from voicecore.models import bundled_gguf, bundled_piper_voice, bundled_whisper
from voicecore.pipeline import load_models


async def test_models_load_from_explicit_paths(tmp_path: Path):
    config = load_config(
        env={},
        overrides={
            "stt.model": str(bundled_whisper()),
            "llm.model": str(bundled_gguf()),
            "tts.voice": str(bundled_piper_voice()),
        },
    )
    models = load_models(config)
    try:
        from voicecore import Message

        reply = "".join(
            [
                p
                async for p in models.llm.stream(
                    [
                        Message("system", config.llm.system_prompt),
                        Message("user", "What is the capital of France?"),
                    ]
                )
            ]
        )
        assert "Paris" in reply
    finally:
        models.close()


@pytest.mark.parametrize(
    "override,message",
    [
        ({"llm.model": "/nowhere/model.gguf"}, "LLM model /nowhere/model.gguf not found"),
        ({"stt.model": "/nowhere/whisper"}, "Whisper model /nowhere/whisper not found"),
        ({"tts.voice": "/nowhere/voice.onnx"}, "Piper voice /nowhere/voice.onnx not found"),
        ({"vad.model": "/nowhere/vad.onnx"}, "VAD model /nowhere/vad.onnx not found"),
        ({"llm.engine": "gpt-9"}, "use 'llama.cpp' or 'vllm'"),
    ],
)
def test_wrong_model_settings_say_what_is_wrong(override, message):
    with pytest.raises(ConfigError, match=message):
        load_models(load_config(env={}, overrides=override))


def test_vllm_engine_without_vllm_says_how_to_install():
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vLLM is installed here: its own GPU test covers it")
    from voicecore.config import LlmConfig
    from voicecore.llm.vllm import VllmEngine

    with pytest.raises(ConfigError, match=r"pip install 'voicecore\[gpu\]'"):
        VllmEngine(LlmConfig(engine="vllm", model="Qwen/Qwen2.5-7B-Instruct"))


def test_history_trims_oldest_exchanges_and_keeps_the_system_prompt():
    history = ChatHistory("Be brief.")
    for n in range(10):
        history.commit(f"question {n} " + "word " * 20, f"answer {n} " + "word " * 20)

    def count(text: str) -> int:
        return len(text.split())

    messages = history.prompt("the newest question", 120, count)
    assert messages[0].content == "Be brief."
    assert messages[1].role == "user"  # never starts with an orphan reply
    assert messages[-1].content == "the newest question"
    assert sum(count(m.content) + 6 for m in messages) <= 120
    assert "question 9" in messages[-3].content  # the latest exchange survives


def test_a_monologue_longer_than_the_window_keeps_its_end():
    history = ChatHistory("Be brief.")
    messages = history.prompt(" ".join(f"w{n}" for n in range(1000)), 200, lambda text: len(text.split()))
    last = messages[-1].content.split()
    assert last[-1] == "w999" and len(last) <= 200
