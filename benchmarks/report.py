"""Turn a results file into figures: statistics, PNG plots and SUMMARY.md.

    .venv/bin/python benchmarks/report.py RESULTS.json [MORE.json ...] [--out DIR]

Several files are merged system by system (e.g. a voicecore-only and a baseline-only run); the
later file wins for a system present in both.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

TARGETS = {"p50_ms": 600.0, "p90_ms": 800.0, "p90_limit_concurrency_ms": 1500.0}
DEFINITIONS = {
    "latency_ms": "client clock: first agent audio sample above the silence threshold (int16 peak "
    "> 300 at 48 kHz) heard by the client, minus the last sample above the threshold (int16 > 300 "
    "at 16 kHz) of the utterance it sent, as it left its microphone",
    "agent stages (voicecore)": "the agent's own TurnRecord, ms after its estimate of the end of "
    "speech (where its VAD's level heard the sound stop); voice_to_voice = first_frame_out - speech_end",
    "agent stages (baseline)": "LiveKit Agents' own ChatMessage.metrics: end_of_turn_delay, "
    "transcription_delay, llm_node_ttft, tts_node_ttfb, e2e_latency (user stopped speaking -> agent "
    "started speaking)",
    "transport_ms": "client-measured latency minus the agent's own voice-to-voice: uplink "
    "(microphone buffer, Opus, network, jitter buffer, the agent's VAD estimate of the end of "
    "speech) plus downlink to the client's first loud sample",
    "cut_off": "the agent's first audio after the first half of a paused question arrives before "
    "the end of the second half + 0.25 s (no endpointer answers the whole question that fast)",
    "interruption stop_ms": "client clock: from the first loud sample of the caller talking over the "
    "agent to the agent's last loud sample before a silence > 0.6 s",
    "memory": "PSS (proportional set size) summed over the system's processes: pages shared "
    "between processes count once; RSS sums also recorded",
    "cpu_cores": "user+system CPU seconds of the system's processes over the window / its length",
}


STAGES_BY_LEVEL = (
    "stt_final_ms", "llm_first_token_ms", "tts_first_audio_ms", "voice_to_voice_ms",  # voicecore
    "end_of_turn_delay_ms", "transcription_delay_ms", "llm_node_ttft_ms", "tts_node_ttfb_ms",  # baseline
    "e2e_latency_ms",
)  # fmt: skip


# -- matching the agents' own records to the client's turns -----------------------------------------
def attach_agent_records(system: str, turns: list[dict[str, Any]], records: list[dict[str, Any]]) -> None:
    """Give each client turn the agent's record of it (same room, nearest end of speech)."""
    if system == "voicecore":
        for turn in turns:
            if "speech_end" not in turn:
                continue
            mine = [r for r in records if r.get("room") == turn["room"]]
            near = [r for r in mine if abs(r["speech_end"] - turn["speech_end"]) < 1.5]
            if near:
                record = min(near, key=lambda r: abs(r["speech_end"] - turn["speech_end"]))
                turn["agent"] = _voicecore_stages(record, turn)
            if turn.get("scenario") in ("turn_taking", "human"):
                window = (turn["first_end"] - 0.5, turn["speech_end"] + 1.5)
                turn["agent_turns"] = sum(1 for r in mine if window[0] <= r["speech_end"] <= window[1])
    else:
        for turn in turns:
            if "speech_end" not in turn:
                continue
            mine = [r for r in records if r.get("room") == turn["room"]]
            users = [
                (i, r) for i, r in enumerate(mine)
                if r["role"] == "user" and "stopped_speaking_at" in r["metrics"]
                and abs(r["metrics"]["stopped_speaking_at"] - turn["speech_end"]) < 2.0
            ]  # fmt: skip
            if not users:
                continue
            i, user = min(
                users, key=lambda p: abs(p[1]["metrics"]["stopped_speaking_at"] - turn["speech_end"])
            )
            reply = next((r for r in mine[i + 1 :] if r["role"] == "assistant"), None)
            turn["agent"] = _baseline_stages(user, reply, turn)


def _voicecore_stages(record: dict[str, Any], turn: dict[str, Any]) -> dict[str, Any]:
    ms = dict(record["latency_ms"])
    out: dict[str, Any] = {f"{k}_ms": v for k, v in ms.items()}
    out.update(
        user_text=record.get("user_text", ""),
        agent_text=record.get("agent_text", ""),
        interrupted=record.get("interrupted", False),
        speculative=record.get("speculative"),
        uplink_vad_ms=round((record["speech_end"] - turn["speech_end"]) * 1000, 1),
    )
    if turn.get("latency_ms") is not None and ms.get("voice_to_voice") is not None:
        out["transport_ms"] = round(turn["latency_ms"] - ms["voice_to_voice"], 1)
    if turn.get("first_audio") is not None and record.get("first_frame_out") is not None:
        # includes Piper's own leading near-silence (~30-50 ms) before the first loud sample
        out["downlink_ms"] = round((turn["first_audio"] - record["first_frame_out"]) * 1000, 1)
    return out


def _baseline_stages(
    user: dict[str, Any], reply: dict[str, Any] | None, turn: dict[str, Any]
) -> dict[str, Any]:
    um = user["metrics"]
    out: dict[str, Any] = {
        "user_text": user.get("text", ""),
        "end_of_turn_delay_ms": _ms(um.get("end_of_turn_delay")),
        "transcription_delay_ms": _ms(um.get("transcription_delay")),
        "uplink_vad_ms": round((um["stopped_speaking_at"] - turn["speech_end"]) * 1000, 1),
    }
    if reply is not None:
        rm = reply["metrics"]
        out.update(
            agent_text=reply.get("text", ""),
            interrupted=reply.get("interrupted", False),
            llm_node_ttft_ms=_ms(rm.get("llm_node_ttft")),
            tts_node_ttfb_ms=_ms(rm.get("tts_node_ttfb")),
            e2e_latency_ms=_ms(rm.get("e2e_latency")),
        )
        if turn.get("latency_ms") is not None and out["e2e_latency_ms"] is not None:
            out["transport_ms"] = round(turn["latency_ms"] - out["e2e_latency_ms"], 1)
        if turn.get("first_audio") is not None and rm.get("started_speaking_at") is not None:
            out["downlink_ms"] = round((turn["first_audio"] - rm["started_speaking_at"]) * 1000, 1)
    return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def attach_interruptions(
    system: str, trials: list[dict[str, Any]], records: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Whether the agent itself recorded the reply talked over as interrupted (the trial is then
    valid: the reply did not simply end by itself)."""
    for trial in trials:
        if "barge_start" not in trial:
            continue
        probe = {"room": trial["room"], "speech_end": trial["speech_end"], "latency_ms": None}
        attach_agent_records(system, [probe], records)
        trial["agent_interrupted"] = bool((probe.get("agent") or {}).get("interrupted"))
    return trials


# -- statistics -------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def latencies(turns: list[dict[str, Any]]) -> list[float]:
    return [t["latency_ms"] for t in turns if t.get("latency_ms") is not None and t.get("answered")]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def answered_whole(trial: dict[str, Any]) -> bool:
    """Was the answer after the last word (the agent's record nearest it) to the whole sentence,
    both sides of the hold? Whisper hears the halves a little differently each time: half of
    the first half's words and the last word will do."""
    heard = set(_words(trial.get("agent", {}).get("user_text", "")))
    first, _, second = trial["question"].partition(" ... ")
    before, after = _words(first), _words(second)
    if not before or not after:
        return False
    return sum(w in heard for w in before) >= len(before) / 2 and after[-1] in heard


def human_figures(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Recordings of real people: cut-ins as said and at inserted holds, latency after the last
    word of those answered without a cut-in."""
    said = [t for t in trials if "pause_ms" in t]
    as_recorded = [t for t in said if t["pause_ms"] == 0]
    holds = [t for t in said if t["pause_ms"] > 0]
    long_holds = [t for t in holds if t["pause_ms"] >= 1000]
    lat = [t["latency_ms"] for t in said if t["latency_ms"] is not None and not t["cut_off"]]
    cut_in = [t for t in holds if t["cut_off"]]
    return {
        "recordings": len(said),
        "cut_in_recordings": sum(1 for t in said if t["cut_off"]),
        "as_recorded": len(as_recorded),
        "cut_in_as_recorded": sum(1 for t in as_recorded if t["cut_off"]),
        "holds": len(holds),
        "cut_in_holds": sum(1 for t in holds if t["cut_off"]),
        "long_holds": len(long_holds),
        "cut_in_long_holds": sum(1 for t in long_holds if t["cut_off"]),
        "cut_in_then_whole": sum(1 for t in cut_in if answered_whole(t)),
        "answered": sum(1 for t in said if t["answered"]),
        "p50_ms": pct(lat, 50),
        "p90_ms": pct(lat, 90),
    }


def figures(system: dict[str, Any]) -> dict[str, Any]:
    """The numbers SUMMARY.md shows for one system."""
    turns = system["latency"]
    lat = latencies(turns)
    asked = [t for t in turns if "speech_end" in t]
    out: dict[str, Any] = {
        "turns": len(asked),
        "p50_ms": pct(lat, 50),
        "p90_ms": pct(lat, 90),
        "p99_ms": pct(lat, 99),
        "answered": sum(1 for t in asked if t.get("answered")),
        "correct": sum(1 for t in asked if t.get("correct")),
        "cut_off_complete": sum(1 for t in asked if t.get("cut_off")),
        "no_agent_rooms": sum(1 for t in turns if "error" in t),
    }
    stages: dict[str, list[float]] = {}
    for t in asked:
        for key, value in (t.get("agent") or {}).items():
            if key.endswith("_ms") and isinstance(value, (int, float)):
                stages.setdefault(key, []).append(float(value))
    out["stages"] = {k: {"p50": pct(v, 50), "p90": pct(v, 90), "n": len(v)} for k, v in stages.items()}
    tt = [t for t in system["turn_taking"] if "pause_ms" in t]
    out["turn_taking"] = {
        str(p): {
            "trials": len(at_p),
            "cut_off": sum(1 for t in at_p if t["cut_off"]),
            "answered": sum(1 for t in at_p if t["answered"]),
            "correct": sum(1 for t in at_p if t.get("correct")),
            "p50_ms": pct([t["latency_ms"] for t in at_p if t["latency_ms"] is not None], 50),
        }
        for p in sorted({t["pause_ms"] for t in tt})
        for at_p in [[t for t in tt if t["pause_ms"] == p]]
    }
    out["human"] = human_figures(system.get("human", []))
    trials = [t for t in system["interruption"] if "stop_ms" in t]
    valid = [t for t in trials if t.get("agent_interrupted", True)]
    out["interruption"] = {
        "trials": len(system["interruption"]),
        "talked_over": len(trials),
        "agent_stopped": len(valid),
        "p50_ms": pct([t["stop_ms"] for t in valid], 50),
        "max_ms": max((t["stop_ms"] for t in valid), default=None),
    }
    over = [t for t in system.get("backchannel", []) if "stop_ms" in t]
    out["backchannel"] = {
        "talked_over": len(over),
        "went_on": sum(1 for t in over if not t.get("agent_interrupted", True)),
        "gap_p50_ms": pct([t["gap_ms"] for t in over], 50),
        "gap_max_ms": max((t["gap_ms"] for t in over), default=None),
    }
    levels = []
    idle = None
    for level in system["concurrency"]["levels"]:
        res = level["resources"]
        total = res.get("total", {})
        if level["level"] == 0:
            idle = total.get("peak_pss_mib")
            continue
        here = [t for t in system["concurrency"]["turns"] if t.get("level") == level["level"]]
        lat_n = latencies(here)
        asked_n = [t for t in here if "speech_end" in t]
        levels.append(
            {
                "level": level["level"],
                "served": level["served"],
                "turns": len(asked_n),
                "answered": sum(1 for t in asked_n if t.get("answered")),
                "p50_ms": pct(lat_n, 50),
                "p90_ms": pct(lat_n, 90),
                "cpu_cores": total.get("cpu_cores"),
                "machine_cpu_busy": res.get("machine", {}).get("cpu_busy_fraction"),
                "peak_pss_mib": total.get("peak_pss_mib"),
                "peak_rss_mib": total.get("peak_rss_mib"),
                "processes": total.get("processes"),
                "stages_p50": {
                    key: pct(values, 50)
                    for key in STAGES_BY_LEVEL
                    if (
                        values := [
                            t["agent"][key]
                            for t in asked_n
                            if isinstance((t.get("agent") or {}).get(key), (int, float))
                        ]
                    )
                },  # fmt: skip
                "client_cpu_cores": res.get("benchmark client", {}).get("cpu_cores"),
                "livekit_cpu_cores": res.get("livekit-server", {}).get("cpu_cores"),
            }
        )
    out["concurrency"] = levels
    out["idle_pss_mib"] = idle
    ok = [
        lv["level"] for lv in levels
        if lv["p90_ms"] is not None and lv["p90_ms"] <= TARGETS["p90_limit_concurrency_ms"]
        and lv["served"] == lv["level"] and lv["answered"] == lv["turns"]
    ]  # fmt: skip
    out["max_concurrency_p90_1500"] = max(ok, default=0)
    rooms: dict[str, int] = {}
    for part in (system["warmup"], system["latency"], system["turn_taking"], system["interruption"],
                 system["concurrency"]["turns"], system.get("human", []),
                 system.get("backchannel", [])):  # fmt: skip
        for item in part:
            if "room" in item:
                rooms[item["room"]] = max(rooms.get(item["room"], 0), int(item.get("dispatch_attempts", 1)))
    unserved = {item["room"] for part in (system["latency"], system["concurrency"]["turns"]) for item in part
                if "error" in item}  # fmt: skip
    out["rooms"] = {"total": len(rooms), "redispatched": sum(1 for a in rooms.values() if a > 1),
                    "not_served": len(unserved)}  # fmt: skip
    mem = [(lv["level"], lv["peak_pss_mib"]) for lv in levels if lv["peak_pss_mib"] is not None]
    if len(mem) >= 2:
        x, y = np.array([m[0] for m in mem], float), np.array([m[1] for m in mem], float)
        out["mib_per_added_conversation"] = float(np.polyfit(x, y, 1)[0])
    else:
        out["mib_per_added_conversation"] = None
    out["cold_start_s"] = [c["seconds"] for c in system["cold_start"]]
    return out


# -- output -----------------------------------------------------------------------------------------
def write(doc: dict[str, Any], out_dir: Path) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    offsets = {r["name"]: r.get("vad_end_offset_ms") for r in doc.get("recordings", [])}
    for name, system in doc["systems"].items():
        # from the raw records every time, so a changed definition applies to old files too
        for turns in (system["latency"], system["turn_taking"], system["concurrency"]["turns"],
                      system.get("human", [])):  # fmt: skip
            attach_agent_records(name, turns, system["agent_records"])
        attach_interruptions(name, system["interruption"], system["agent_records"])
        attach_interruptions(name, system.get("backchannel", []), system["agent_records"])
        for turn in system["latency"] + system["concurrency"]["turns"]:
            agent, offset = turn.get("agent"), offsets.get(turn.get("recording", ""))
            if agent and offset is not None and agent.get("uplink_vad_ms") is not None:
                agent["vad_end_offset_ms"] = offset
    figs = {name: figures(system) for name, system in doc["systems"].items()}
    plots = _plots(doc, figs, out_dir)
    summary = _summary(doc, figs, plots)
    (out_dir / "SUMMARY.md").write_text(summary)
    return summary


def _fmt(value: float | None, unit: str = " ms", digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}{unit}"


def _ratio(a: float | None, b: float | None, lower_is_better: bool = True) -> str:
    if a is None or b is None or b <= 0 or a <= 0:
        return "-"
    r = a / b
    if lower_is_better:
        return (
            f"{r:.2f} ({b / a:.1f}x {'lower' if r < 1 else 'higher'})"
            if r < 1
            else f"{r:.2f} ({r:.1f}x higher)"
        )
    return f"{r:.2f}"


def _summary(doc: dict[str, Any], figs: dict[str, dict[str, Any]], plots: list[str]) -> str:
    m = doc["machine"]
    names = list(figs)
    vc, bl = figs.get("voicecore"), figs.get("baseline")
    lines = [
        "# voicecore vs LiveKit Agents 1.8.9: voice-to-voice through a LiveKit server",
        "",
        f"Run {doc['when']} ({'quick' if doc['quick'] else 'full'}), {m['cpu']} x{m['cores']} cores, "
        f"{m['memory_gib']} GiB; load average before {tuple(round(x, 2) for x in m['load_average'])}, "
        f"after {tuple(round(x, 2) for x in m.get('load_average_after', ()))}. Both systems ran one after "
        "the other on this machine, with a LiveKit server on loopback, the same recordings, "
        "the same model files (Silero VAD, Whisper tiny.en int8, SmolLM2-135M Q4_1 "
        "(voicecore loads its Q8_0 copy of that file), Piper joe-medium) "
        "and the same LLM settings (temperature 0, max 96 tokens, same system prompt). Latency is "
        "measured at a client participant (livekit SDK): end of the last spoken sample sent -> first "
        "agent audio sample heard. Raw samples: the JSON file beside this one.",
        "",
    ]
    if doc.get("baseline_from"):
        lines += [
            f"**The baseline's column is not from this run** but from {doc['baseline_from']} (the latest "
            "run of LiveKit Agents; this one measured voicecore alone).",
            "",
        ]
    if doc.get("llm_engine") == "vllm":
        lines += [
            "",
            "**voicecore's LLM here is vLLM's CPU build** (`--llm-engine vllm`: the same SmolLM2-135M "
            "as a float32 Hugging Face folder, not the Q8_0 GGUF): these figures show that the GPU "
            "path's engine works through LiveKit and how it batches, not GPU speed.",
        ]
    header = "| figure | " + " | ".join(names) + (" | voicecore / baseline |" if vc and bl else " |")
    lines += [header, "|---" * (len(names) + 1 + (1 if vc and bl else 0)) + "|"]

    def row(label: str, key: Any, fmt: Any = _fmt, ratio: bool = True, lower: bool = True) -> None:
        values = [key(f) for f in figs.values()]
        cells = [fmt(v) for v in values]
        extra = ""
        if vc and bl:
            extra = " | " + (_ratio(key(vc), key(bl), lower) if ratio else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + extra + " |")

    row("voice-to-voice p50 (client)", lambda f: f["p50_ms"])
    row("voice-to-voice p90 (client)", lambda f: f["p90_ms"])
    row("voice-to-voice p99 (client)", lambda f: f["p99_ms"])
    row("complete questions answered", lambda f: f"{f['answered']}/{f['turns']}", str, ratio=False)
    row("... answer has the expected word", lambda f: f"{f['correct']}/{f['turns']}", str, ratio=False)
    pauses = sorted({p for f in figs.values() for p in f["turn_taking"]}, key=int)
    for p in pauses:
        row(
            f"cut off during a {p} ms pause",
            lambda f, p=p: _share(f["turn_taking"].get(p), "cut_off"),
            str,
            ratio=False,
        )
    row(
        "paused questions answered after the pause",
        lambda f: _share_all(f["turn_taking"], "answered"),
        str,
        ratio=False,
    )
    if any(f["human"]["recordings"] for f in figs.values()):

        def share(f: dict[str, Any], cut: str, of: str) -> str:
            return f"{f['human'][cut]}/{f['human'][of]}"

        h = "real people: "
        row(h + "p50 after the last word (client, no cut-in)", lambda f: f["human"]["p50_ms"])
        row(h + "p90 after the last word", lambda f: f["human"]["p90_ms"])
        row(h + "cut-ins, as recorded", lambda f: share(f, "cut_in_as_recorded", "as_recorded"), str, False)
        row(h + "cut-ins, 0.5-1.5 s hold inserted", lambda f: share(f, "cut_in_holds", "holds"), str, False)
        row(h + "... holds of 1 s or more", lambda f: share(f, "cut_in_long_holds", "long_holds"), str, False)
        whole = ("cut_in_then_whole", "cut_in_holds")
        row(h + "... then the whole sentence answered", lambda f: share(f, *whole), str, False)
        row(h + "answered", lambda f: share(f, "answered", "recordings"), str, False)
    row("interruption: audio stops at client, p50", lambda f: f["interruption"]["p50_ms"])
    row(
        "interruption: agent stopped / talked over",
        lambda f: f"{f['interruption']['agent_stopped']}/{f['interruption']['talked_over']}",
        str,
        ratio=False,
    )
    if any(f["backchannel"]["talked_over"] for f in figs.values()):
        row(
            "backchannel (uh-huh, oh) over the agent: it went on / talked over",
            lambda f: f"{f['backchannel']['went_on']}/{f['backchannel']['talked_over']}",
            str,
            ratio=False,
        )
        row("... its longest silence around the backchannel, p50", lambda f: f["backchannel"]["gap_p50_ms"])
    row(
        "most conversations at once with p90 <= 1.5 s",
        lambda f: f["max_concurrency_p90_1500"],
        str,
        lower=False,
    )
    row(
        "rooms refused by the worker at first (dispatched again) / never served",
        lambda f: f"{f['rooms']['redispatched']}/{f['rooms']['total']} / {f['rooms']['not_served']}",
        str,
        ratio=False,
    )
    row("cold start: process start -> ready (median)", lambda f: _median(f["cold_start_s"]),
        lambda v: _fmt(v, " s", 1))  # fmt: skip
    row("memory, idle (PSS, all processes)", lambda f: f["idle_pss_mib"], lambda v: _fmt(v, " MiB"))
    row("memory per added conversation", lambda f: f["mib_per_added_conversation"], lambda v: _fmt(v, " MiB"))
    lines.append("")
    if vc:
        lines += _targets(vc, bl)
    lines += ["", "## Client latency decomposed (same clock for client and agent; p50 of each part)", ""]
    lines += _decomposition(figs)
    for name, f in figs.items():
        lines += [
            "",
            f"## {name}: where the time goes (the agent's own record of the same turns, p50 / p90)",
            "",
        ]
        lines += ["| stage | p50 | p90 | n |", "|---|---|---|---|"]
        for stage, s in f["stages"].items():
            lines.append(f"| {stage[:-3]} | {_fmt(s['p50'])} | {_fmt(s['p90'])} | {s['n']} |")
    lines += ["", "## Conversations at once", ""]
    lines += [
        "CPU in cores (of the machine's cores) averaged over each level; the benchmark's own client "
        "process and the LiveKit server run on the same machine and are shown apart.",
        "",
    ]
    lines += [
        "| system | at once | served | answered | p50 | p90 | CPU, system | CPU, client / LiveKit "
        "| machine busy | peak PSS | peak RSS (sum) |",
        "|---" * 11 + "|",
    ]
    for name, f in figs.items():
        for lv in f["concurrency"]:
            lines.append(
                f"| {name} | {lv['level']} | {lv['served']}/{lv['level']} | {lv['answered']}/{lv['turns']} "
                f"| {_fmt(lv['p50_ms'])} | {_fmt(lv['p90_ms'])} | {_fmt(lv['cpu_cores'], '', 2)} "
                f"| {_fmt(lv['client_cpu_cores'], '', 2)} / {_fmt(lv['livekit_cpu_cores'], '', 2)} "
                f"| {_fmt((lv['machine_cpu_busy'] or 0) * 100, '%')} | {_fmt(lv['peak_pss_mib'], ' MiB')} "
                f"| {_fmt(lv['peak_rss_mib'], ' MiB')} |"
            )
    lines += ["", "Agent stages by level (p50, ms after the end of speech, the agent's own record):", ""]
    for name, f in figs.items():
        for lv in f["concurrency"]:
            stages = ", ".join(
                f"{k[:-3]} {v:.0f}" for k, v in lv.get("stages_p50", {}).items() if v is not None
            )
            lines.append(f"- {name} x{lv['level']}: {stages}")
    lines += ["", "## How long each part of the run took (s)", ""]
    for name, system in doc["systems"].items():
        timing = ", ".join(f"{k} {v:.0f}" for k, v in system.get("timing_s", {}).items())
        lines.append(f"- {name}: {system.get('seconds', 0):.0f} s in all ({timing})")
    lines += ["", "## Cold start", ""]
    for name, system in doc["systems"].items():
        for i, c in enumerate(system["cold_start"]):
            detail = ", ".join(f"{k} {v:.2f} s" for k, v in c["detail"].items())
            lines.append(f"- {name} #{i + 1}: {c['seconds']:.2f} s ({detail})")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    lines += ["", "## Definitions", ""] + [f"- **{k}**: {v}" for k, v in doc["definitions"].items()]
    lines += ["", "## Versions", ""]
    for name, system in doc["systems"].items():
        versions = ", ".join(f"{k} {v}" for k, v in system["versions"].items() if v)
        lines.append(f"- {name}: {versions}")
    return "\n".join(lines) + "\n"


def _decomposition(figs: dict[str, dict[str, Any]]) -> list[str]:
    parts = [
        ("uplink: the agent's end-of-speech estimate minus the audible end", "uplink_vad"),
        ("... of which the VAD's estimate itself (offline, same recording)", "vad_end_offset"),
        ("agent's own voice-to-voice (voicecore: first_frame_out; baseline: e2e_latency)", "agent_v2v"),
        (
            "... of which the endpoint wait (voicecore: endpoint; baseline: end_of_turn_delay)",
            "agent_endpoint",
        ),
        ("downlink: agent's first frame out -> first loud sample at the client", "downlink"),
        ("client-measured voice-to-voice", "client"),
    ]
    names = list(figs)
    lines = ["| part | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, key in parts:
        cells = []
        for f in figs.values():
            st = f["stages"]
            alias = {
                "agent_v2v": ("voice_to_voice_ms", "e2e_latency_ms"),
                "agent_endpoint": ("endpoint_ms", "end_of_turn_delay_ms"),
            }.get(key, (f"{key}_ms",))
            value = f["p50_ms"] if key == "client" else next((st[a]["p50"] for a in alias if a in st), None)
            cells.append(_fmt(value))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _share(entry: dict[str, Any] | None, key: str) -> str:
    if not entry:
        return "-"
    return f"{entry[key]}/{entry['trials']} ({100 * entry[key] / max(1, entry['trials']):.0f}%)"


def _share_all(by_pause: dict[str, dict[str, Any]], key: str) -> str:
    n = sum(e["trials"] for e in by_pause.values())
    k = sum(e[key] for e in by_pause.values())
    return f"{k}/{n}" if n else "-"


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def _targets(vc: dict[str, Any], bl: dict[str, Any] | None) -> list[str]:
    def check(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "MISSED")

    p50, p90 = vc["p50_ms"], vc["p90_ms"]
    cut = [vc["turn_taking"].get(p, {}).get("cut_off") for p in ("700", "1000")]
    lines = [
        "Targets (voicecore, this 2-core CPU):",
        "",
        f"- p50 <= 600 ms: {_fmt(p50)} -> {check(None if p50 is None else p50 <= 600)}"
        + ("" if p50 is None or p50 <= 600 else f" (by {p50 - 600:.0f} ms)"),
        f"- p90 <= 800 ms: {_fmt(p90)} -> {check(None if p90 is None else p90 <= 800)}"
        + ("" if p90 is None or p90 <= 800 else f" (by {p90 - 800:.0f} ms)"),
        f"- 0% cut off on 700/1000 ms pauses: {cut} -> "
        f"{check(None if any(c is None for c in cut) else not any(cut))}",
    ]
    if bl:
        ratio = None if not (bl["p50_ms"] and p50) else bl["p50_ms"] / p50
        lines.append(f"- >= 2x lower p50 than the baseline: {_fmt(ratio, 'x', 2)} -> "
                     f"{check(None if ratio is None else ratio >= 2)}")  # fmt: skip
        a, b = vc["max_concurrency_p90_1500"], bl["max_concurrency_p90_1500"]
        lines.append(
            f"- >= 2x the conversations at p90 <= 1.5 s: {a} vs {b} -> "
            f"{check(a >= 2 * b if b else (a > 0 if a else None))}"
        )
    return lines


def _plots(doc: dict[str, Any], figs: dict[str, dict[str, Any]], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"voicecore": "#1f77b4", "baseline": "#d62728"}
    made = []

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, system in doc["systems"].items():
        values = sorted(latencies(system["latency"]))
        if values:
            y = np.arange(1, len(values) + 1) / len(values)
            ax.step(values, y, where="post", label=f"{name} (n={len(values)})", color=colors.get(name))
    ax.axvline(600, ls=":", color="gray", label="target p50 600 ms")
    ax.axvline(800, ls="--", color="gray", label="target p90 800 ms")
    ax.set_xlabel("voice-to-voice at the client (ms)")
    ax.set_ylabel("share of turns")
    ax.set_title("End of speech -> first agent audio, through LiveKit")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "latency-cdf.png", dpi=110)
    plt.close(fig)
    made.append("latency-cdf.png")

    segments = {
        "voicecore": [
            ("voicecore: speculation delay + STT final", lambda a: a.get("stt_final_ms")),
            ("voicecore: LLM first token", lambda a: _diff(a, "llm_first_token_ms", "stt_final_ms")),
            ("voicecore: first clause + TTS", lambda a: _diff(a, "tts_first_audio_ms", "llm_first_token_ms")),
            (
                "voicecore: held until the endpoint, out",
                lambda a: _diff(a, "first_frame_out_ms", "tts_first_audio_ms"),
            ),
            ("transport: uplink + downlink (incl. the VAD's end estimate)", lambda a: a.get("transport_ms")),
        ],
        "baseline": [
            (
                "baseline: end of turn (VAD silence, STT, turn detector)",
                lambda a: a.get("end_of_turn_delay_ms"),
            ),
            ("baseline: LLM first token", lambda a: a.get("llm_node_ttft_ms")),
            ("baseline: TTS first audio", lambda a: a.get("tts_node_ttfb_ms")),
            ("baseline: rest of e2e_latency", lambda a: _rest(a)),
            ("transport: uplink + downlink (incl. the VAD's end estimate)", lambda a: a.get("transport_ms")),
        ],
    }
    palettes = {
        "voicecore": ["#4c72b0", "#55a868", "#8172b3", "#64b5cd", "#937860"],
        "baseline": ["#c44e52", "#dd8452", "#ccb974", "#da8bc3", "#937860"],
    }
    fig, ax = plt.subplots(figsize=(9, 4.2))
    labelled: set[str] = set()
    for row, (name, system) in enumerate(doc["systems"].items()):
        agents = [t["agent"] for t in system["latency"] if t.get("agent")]
        left = 0.0
        for i, (label, get) in enumerate(segments.get(name, [])):
            values = [v for a in agents if (v := get(a)) is not None]
            width = max(0.0, float(np.median(values))) if values else 0.0
            ax.barh(row, width, left=left, color=palettes[name][i], edgecolor="white",
                    label=None if label in labelled else label)  # fmt: skip
            labelled.add(label)
            if width >= 90:
                ax.text(left + width / 2, row, f"{width:.0f}", ha="center", va="center", fontsize=8)
            left += width
        p50 = figs[name]["p50_ms"]
        if p50 is not None:
            ax.plot([p50], [row], "k|", markersize=30, label=None if "p50" in labelled else "client p50")
            labelled.add("p50")
        endpoint = figs[name]["stages"].get("endpoint_ms", {}).get("p50")
        if endpoint is not None:  # voicecore computes during the endpoint wait: show where it ends
            ax.plot(
                [endpoint], [row], "w^", markeredgecolor="k", markersize=8, label="voicecore endpoint (p50)"
            )
    ax.set_yticks(range(len(doc["systems"])), list(doc["systems"]))
    ax.set_xlabel("ms after the end of speech (median of each part)")
    ax.set_title("Where the time goes")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(out_dir / "stage-breakdown.png", dpi=110)
    plt.close(fig)
    made.append("stage-breakdown.png")

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, f in figs.items():
        lv = f["concurrency"]
        if not lv:
            continue
        x = [v["level"] for v in lv]
        ax1.plot(x, [v["p50_ms"] or np.nan for v in lv], "o-", color=colors.get(name), label=f"{name} p50")
        ax1.plot(x, [v["p90_ms"] or np.nan for v in lv], "s--", color=colors.get(name), label=f"{name} p90")
        ax2.plot(x, [v["peak_pss_mib"] or np.nan for v in lv], "o-", color=colors.get(name), label=name)
    ax1.axhline(1500, ls=":", color="gray")
    ax1.set_xlabel("conversations at once")
    ax1.set_ylabel("voice-to-voice at the client (ms)")
    ax1.set_xscale("log", base=2)
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    ax2.set_xlabel("conversations at once")
    ax2.set_ylabel("peak memory, PSS of all processes (MiB)")
    ax2.set_xscale("log", base=2)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle("Latency and memory vs concurrent conversations")
    fig.tight_layout()
    fig.savefig(out_dir / "concurrency.png", dpi=110)
    plt.close(fig)
    made.append("concurrency.png")
    return made


def _diff(a: dict[str, Any], later: str, earlier: str) -> float | None:
    if a.get(later) is None or a.get(earlier) is None:
        return None
    return float(a[later] - a[earlier])


def _rest(a: dict[str, Any]) -> float | None:
    keys = ("e2e_latency_ms", "end_of_turn_delay_ms", "llm_node_ttft_ms", "tts_node_ttfb_ms")
    parts = [a.get(k) for k in keys]
    if any(p is None for p in parts):
        return None
    e2e, eot, llm, tts = (float(p) for p in parts if p is not None)
    return e2e - eot - llm - tts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument(
        "--out", type=Path, help="folder for SUMMARY.md and plots (default: the first file's)"
    )
    args = parser.parse_args()
    doc: dict[str, Any] = {}
    for path in args.results:
        part = json.loads(path.read_text())
        if not doc:
            doc = part
        else:
            doc["systems"].update(part["systems"])
    print(write(doc, args.out or args.results[0].parent))


if __name__ == "__main__":
    main()
