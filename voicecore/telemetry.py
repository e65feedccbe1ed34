"""Prometheus metrics for `voicecore serve` (GET /metrics): turn latencies, sessions, errors.

Rooms feed them through the `rtc.Observer` hooks (turns from SessionHooks.on_turn, failures from
SessionHooks.on_error and the rooms' own tasks). Each `Telemetry` has a registry of its own, so
several can live in one process.

    voicecore_turn_stage_latency_seconds{stage}  histogram: each TurnRecord stage after speech_end
    voicecore_voice_to_voice_seconds             histogram: first agent frame out - speech_end
    voicecore_active_sessions                    gauge: conversations (one per person in a room)
    voicecore_active_rooms                       gauge: rooms the agent is in
    voicecore_turns_total                        counter: turns over (answered or interrupted)
    voicecore_interruptions_total                counter: turns the person talked over (barge-in)
    voicecore_errors_total{stage}                counter: failures the conversation survived
    voicecore_heap_bytes{kind}                   gauge: the C heap (glibc): in_use, free, mapped

The process_* series (RSS, CPU, open files) and python_gc_* (collections by generation) come
with them.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from voicecore import memory
from voicecore.metrics import STAGES, TurnRecord
from voicecore.rtc.observer import Observer

# Seconds. Fine steps where voice agents live (0.3-1.5 s), coarse beyond.
LATENCY_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
                   1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)  # fmt: skip
ERROR_STAGES = ("stt", "llm", "tts", "room", "job", "send")


class HeapCollector(Collector):
    """Where the RSS goes: bytes in use (a leak grows these) against bytes the allocator holds
    free (fragmentation grows these), read at each scrape. Nothing outside glibc."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        heap = memory.heap_stats()
        if heap is None:
            return
        family = GaugeMetricFamily(
            "voicecore_heap_bytes",
            "The C heap (glibc mallinfo2): in_use = allocated from the arenas, free = held by "
            "them unused, mapped = big blocks with pages of their own (their whole size, "
            "touched or not: llama.cpp's buffers make it far more than the RSS)",
            labels=["kind"],
        )
        for kind in ("in_use", "free", "mapped"):
            family.add_metric([kind], getattr(heap, kind))
        yield family


class Telemetry(Observer):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        reg = self.registry
        self.stage_latency = Histogram(
            "voicecore_turn_stage_latency_seconds",
            "Time from the end of the person's speech to each stage of the reply, per turn",
            ["stage"], buckets=LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.voice_to_voice = Histogram(
            "voicecore_voice_to_voice_seconds",
            "End of the person's speech to the agent's first audio frame out, per answered turn",
            buckets=LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.active_sessions = Gauge(
            "voicecore_active_sessions", "Conversations in progress (one per person in a room)", registry=reg
        )
        self.active_rooms = Gauge("voicecore_active_rooms", "Rooms the agent is in", registry=reg)
        self.turns = Counter("voicecore_turns", "Turns over, answered or interrupted", registry=reg)
        self.interruptions = Counter(
            "voicecore_interruptions", "Turns the person talked over (barge-in)", registry=reg
        )
        self.errors = Counter(
            "voicecore_errors",
            "Failures a conversation went on without, by stage (stt, llm, tts: a model call; "
            "room: a room task; job: a dispatched room; send: a transcript or state update)",
            ["stage"], registry=reg,
        )  # fmt: skip
        self.tool_calls = Counter(
            "voicecore_tool_calls",
            "Tool calls over, by tool and outcome (ok, raised, timed out, unknown tool, bad arguments)",
            ["tool", "outcome"], registry=reg,
        )  # fmt: skip
        self.tool_seconds = Histogram(
            "voicecore_tool_seconds", "How long each tool call ran",
            ["tool"], buckets=LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        for stage in STAGES:  # every series exists from the start, at zero
            self.stage_latency.labels(stage)
        for stage in ERROR_STAGES:
            self.errors.labels(stage)
        ProcessCollector(registry=reg)
        GCCollector(registry=reg)
        reg.register(HeapCollector())

    # -- Observer ---------------------------------------------------------------------------------
    def on_room_joined(self, room: str) -> None:
        self.active_rooms.inc()

    def on_room_left(self, room: str) -> None:
        self.active_rooms.dec()

    def on_conversation_started(self, room: str, identity: str) -> None:
        self.active_sessions.inc()

    def on_conversation_ended(self, room: str, identity: str) -> None:
        self.active_sessions.dec()

    def on_turn(self, room: str, identity: str, record: TurnRecord) -> None:
        self.turns.inc()
        if record.interrupted:
            self.interruptions.inc()
        for stage in STAGES:
            at = getattr(record, stage)
            if at is not None:  # a stage that did not happen is not a latency
                self.stage_latency.labels(stage).observe(at - record.speech_end)
        if (v2v := record.voice_to_voice) is not None:
            self.voice_to_voice.observe(v2v)
        for call in record.extra.get("tools", []):
            self.tool_calls.labels(call["name"], call["error"] or "ok").inc()
            self.tool_seconds.labels(call["name"]).observe(call["seconds"])

    def on_error(self, stage: str) -> None:
        self.errors.labels(stage).inc()

    # -- exposition -------------------------------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        """The Prometheus text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
