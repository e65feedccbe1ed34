"""Config precedence (defaults < TOML < environment < flags) and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicecore.config import DEFAULT_SYSTEM_PROMPT, load_config
from voicecore.errors import ConfigError


def test_defaults_use_bundled_models_and_short_prompt():
    config = load_config(env={})
    assert config.llm.engine == "llama.cpp"
    assert config.stt.model is None and config.llm.model is None and config.tts.voice is None
    assert config.llm.system_prompt == DEFAULT_SYSTEM_PROMPT
    assert len(DEFAULT_SYSTEM_PROMPT.split()) < 20  # SmolLM2-135M only answers well with a short one


def test_precedence_toml_then_env_then_flags(tmp_path: Path):
    toml = tmp_path / "voicecore.toml"
    toml.write_text(
        '[llm]\ntemperature = 0.5\nmax_tokens = 50\nmodel = "/from/toml.gguf"\n'
        "[turn]\nmin_endpoint_delay = 0.3\n"
    )
    env = {"VOICECORE_LLM_MAX_TOKENS": "60", "VOICECORE_LLM_MODEL": "/from/env.gguf", "HOME": "/x"}
    config = load_config(toml, env=env, overrides={"llm.model": "/from/flag.gguf", "stt.model": None})
    assert config.llm.temperature == 0.5  # TOML only
    assert config.turn.min_endpoint_delay == 0.3
    assert config.llm.max_tokens == 60  # env beats TOML
    assert config.llm.model == "/from/flag.gguf"  # flag beats env
    assert config.stt.model is None  # an unset flag changes nothing


def test_env_values_are_typed():
    config = load_config(env={"VOICECORE_STT_SHORT_CONTEXT": "false", "VOICECORE_TURN_MAX_UTTERANCE": "10"})
    assert config.stt.short_context is False
    assert config.turn.max_utterance == 10.0


@pytest.mark.parametrize(
    "text,message",
    [
        ("[llm\nmodel=", "not valid TOML"),
        ("[nonsense]\nx = 1\n", "unknown section"),
        ("[llm]\nmodle = 'x'\n", "unknown setting llm.modle"),
        ("[llm]\nmax_tokens = 'many'\n", "llm.max_tokens = 'many' is not a valid int"),
    ],
)
def test_bad_toml_says_what_is_wrong(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, env={})


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/no/such/voicecore.toml", env={})


def test_bad_env_value():
    with pytest.raises(ConfigError, match="VOICECORE|environment"):
        load_config(env={"VOICECORE_LLM_TEMPERATURE": "hot"})
