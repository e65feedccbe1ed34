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
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match="cannot append"):
        TurnLog(tmp_path / "a-file" / "turns.jsonl")


def test_turn_log_is_owner_only_and_survives_a_torn_last_line(tmp_path: Path):
    from voicecore.history import read_history

    path = tmp_path / "private" / "turns.jsonl"
    log = TurnLog(path)
    log.write(TurnRecord(turn=1, speech_end=1.0, user_text="secret words"), room="r")
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    with path.open("a") as out:
        out.write('{"turn": 2, "user_te')  # what a kill -9 mid-write could leave
    turns, bad = read_history(path)
    assert [t["user_text"] for t in turns] == ["secret words"] and bad == 1


def test_turn_log_setting_from_the_environment(tmp_path: Path):
    config = load_config(env={"VOICECORE_METRICS_TURN_LOG": str(tmp_path / "t.jsonl")})
    assert config.metrics.turn_log == str(tmp_path / "t.jsonl")
    assert load_config(env={}).metrics.turn_log is None


def test_history_command_reads_turns_back(tmp_path: Path):
    import subprocess
    import sys

    path = tmp_path / "turns.jsonl"
    log = TurnLog(path)
    record = TurnRecord(turn=1, speech_end=1.0, user_text="What is the capital of France?")
    record.agent_text, record.first_frame_out = "The capital of France is Paris.", 1.5
    log.write(record, room="r1", participant="alice")
    out = subprocess.run(
        [sys.executable, "-m", "voicecore", "history", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "r1/alice turn 1: 500.0 ms" in out.stdout and "Paris" in out.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "voicecore", "history", str(tmp_path / "none.jsonl")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "not found" in missing.stderr and "Traceback" not in missing.stderr
