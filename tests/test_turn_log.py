"""The per-turn JSONL log `voicecore serve --turn-log` writes (the benchmarks read it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voicecore import ConfigError, TurnRecord, load_config
from voicecore.metrics import TurnLog


def test_turns_are_appended_one_json_line_each(tmp_path: Path):
    path = tmp_path / "turns.jsonl"
    path.write_text('{"earlier": true}\n')
    log = TurnLog(path)
    record = TurnRecord(turn=1, speech_end=10.0, user_text="hi", agent_text="hello", endpoint=10.4)
    record.first_frame_out = 10.55
    log.write(record, room="r1", participant="alice")
    log.write(TurnRecord(turn=2, speech_end=20.0), room="r1", participant="alice")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {"earlier": True}
    first, second = lines[1], lines[2]
    assert (first["room"], first["participant"], first["turn"]) == ("r1", "alice", 1)
    assert first["speech_end"] == 10.0 and first["latency_ms"]["voice_to_voice"] == 550.0
    assert first["latency_ms"]["endpoint"] == 400.0 and first["latency_ms"]["stt_final"] is None
    assert second["turn"] == 2 and second["latency_ms"]["voice_to_voice"] is None


def test_a_turn_log_that_cannot_be_written_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="turn log"):
        TurnLog(tmp_path / "missing-dir" / "turns.jsonl")


def test_turn_log_setting_from_the_environment(tmp_path: Path):
    config = load_config(env={"VOICECORE_METRICS_TURN_LOG": str(tmp_path / "t.jsonl")})
    assert config.metrics.turn_log == str(tmp_path / "t.jsonl")
    assert load_config(env={}).metrics.turn_log is None
