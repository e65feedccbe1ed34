"""Shared fixtures: the real bundled models, loaded once, speech made with Piper, a real LiveKit
server, the people who join it and `voicecore serve` processes."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from helpers import join, transcribe, words  # noqa: F401  (re-exported for tests)
from livekit_fixtures import Caller, LiveKitServer, livekit_binary
from serve_process import ServeProcess, ServeProcesses

from voicecore import AudioFrame, Config, Models, load_config, load_models
from voicecore.audio.resample import resample
from voicecore.cli import exit_past_livekit

ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture(scope="session")
def config() -> Config:
    return load_config(env={})


@pytest.fixture(scope="session")
def models(config: Config) -> Iterator[Models]:
    loaded = load_models(config)
    yield loaded
    loaded.close()


@pytest.fixture(scope="session")
def say(models: Models):
    """say("text") -> 16 kHz AudioFrame of Piper speaking it (cached)."""
    cache: dict[tuple[str, float], AudioFrame] = {}

    def speak(text: str, length_scale: float = 1.0) -> AudioFrame:
        key = (text, length_scale)
        if key not in cache:
            from piper import PiperVoice, SynthesisConfig

            from voicecore.models import bundled_piper_voice

            voice = PiperVoice.load(bundled_piper_voice())
            # No noise: Piper's default noise makes every run a different voice, and Whisper
            # tiny mishears some of them ("Poodle of France"); tests want the same speech each time.
            quiet = SynthesisConfig(length_scale=length_scale, noise_scale=0.0, noise_w_scale=0.0)
            chunks = voice.synthesize(text, quiet)
            audio = np.concatenate([c.audio_float_array for c in chunks])
            frame = AudioFrame.from_float(audio * 0.7, voice.config.sample_rate)
            cache[key] = resample(frame, 16_000)
        return cache[key]

    return speak


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def livekit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveKitServer]:
    """One real livekit-server (`--dev`) for the whole session, shared by the tests that need one."""
    binary = livekit_binary()
    if binary is None:
        pytest.skip("livekit-server not found (bin/setup builds it)")
    server = LiveKitServer(binary, tmp_path_factory.mktemp("livekit"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def callers() -> AsyncIterator[Callable[[str], Caller]]:
    """callers(identity) -> a new Caller (not joined yet); all of them leave at the end, even
    those that left already or lost their connection (each within 10 s, errors ignored)."""
    made: list[Caller] = []

    def make(identity: str) -> Caller:
        made.append(Caller(identity))
        return made[-1]

    yield make
    await asyncio.gather(*(asyncio.wait_for(c.leave(), 10) for c in made), return_exceptions=True)


@pytest.fixture
async def serve_processes() -> AsyncIterator[ServeProcesses]:
    """serve_processes(args, env, log) -> a ServeProcess to start; killed at the end if running."""
    made: list[ServeProcess] = []

    def make(args: Sequence[str], env: dict[str, str], log: Path) -> ServeProcess:
        made.append(ServeProcess(args, env, log))
        return made[-1]

    yield make
    for process in made:
        await process.kill()


@pytest.fixture(autouse=True)
async def stacks_of_a_hung_test(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """pytest-timeout shows where threads are; a hung asyncio test also needs its tasks' stacks."""
    timeout = float(request.config.getini("timeout") or 0)

    async def dump() -> None:
        await asyncio.sleep(max(1.0, timeout - 5))
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.print_stack(file=sys.stderr)

    watchdog = asyncio.create_task(dump()) if timeout else None
    yield
    if watchdog is not None:
        watchdog.cancel()


# The LiveKit SDK's native runtime can panic while the interpreter shuts down (about one run in
# twenty of tests/test_livekit.py, after every test had passed): the process ends with pytest's
# own exit status once pytest is done with it, the way `voicecore serve` ends (cli.py).
_exit_status: int | None = None


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _exit_status
    _exit_status = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if _exit_status is not None and "livekit.rtc" in sys.modules:
        exit_past_livekit(_exit_status)
