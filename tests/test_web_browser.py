"""The talk page in a real browser, against `voicecore serve --dev` as a user starts it.

`serve --dev` starts its own livekit-server, loads the real models and serves the page; headless
Chromium opens it with a fake microphone that plays a recorded question, and a person's click
starts the conversation. Everything on the way is real: the page's LiveKit client, WebRTC over
loopback, the agent's worker registration and dispatch, the models.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from helpers import words
from livekit_fixtures import ROOT, LiveKitServer, free_port, livekit_binary
from prometheus_client.parser import text_string_to_metric_families

from voicecore import AudioFrame, write_wav
from voicecore.audio.resample import resample
from voicecore.metrics import STAGES
from voicecore.web.app import STATIC_DIR

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
BROWSER_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]  # fmt: skip
SCREENSHOT = ROOT / "docs" / "screenshot.png"

# Records what the page showed between two looks (states flip faster than a poll).
WATCH_PAGE = """
window.__seen = {states: [], maxLevel: 0};
const pill = document.getElementById('agent-state');
const level = document.getElementById('level');
new MutationObserver(() => {
  const states = window.__seen.states;
  if (states[states.length - 1] !== pill.dataset.state) states.push(pill.dataset.state);
}).observe(pill, {attributes: true, attributeFilter: ['data-state']});
new MutationObserver(() => {
  window.__seen.maxLevel = Math.max(window.__seen.maxLevel, Number(level.dataset.level));
}).observe(level, {attributes: true, attributeFilter: ['data-level']});
"""
LINES = """
return Array.from(document.querySelectorAll('.line')).map(line => ({
  speaker: line.dataset.speaker, final: line.dataset.final === 'true',
  text: line.querySelector('.text').textContent,
  v2v: line.querySelector('.latency')?.dataset.voiceToVoice ?? null,
  heard: line.querySelector('.latency')?.dataset.heard ?? null,
}));
"""


@pytest.fixture
def question_wav(say, tmp_path: Path) -> Path:
    """What the fake microphone plays, in a loop: 3 s of quiet (the agent joins meanwhile), the
    question, then 8 s of quiet for the answer. 48 kHz 16-bit mono, what Chromium reads best."""
    speech = resample(say("What is the capital of France?"), 48_000).samples

    def quiet(seconds: float) -> np.ndarray:
        return np.zeros(int(seconds * 48_000), np.int16)

    path = tmp_path / "question.wav"
    write_wav(path, AudioFrame(np.concatenate([quiet(3.0), speech, quiet(8.0)]), 48_000))
    return path


class Served:
    """`python -m voicecore serve --dev` (or `serve ARGS` with `env`) as a child process, its
    output in a file."""

    def __init__(
        self, port: int, log: Path, args: Sequence[str] = ("--dev",), env: dict[str, str] | None = None
    ) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        self.log = log
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "VOICECORE_"))}
        clean["PYTHONUNBUFFERED"] = "1"
        clean["PATH"] = f"{ROOT / '.local' / 'bin'}{os.pathsep}{clean.get('PATH', '')}"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "voicecore", "serve", *args, "--http-port", str(port)],
                stdout=out, stderr=subprocess.STDOUT, env={**clean, **(env or {})}, cwd=ROOT,
            )  # fmt: skip

    def wait_registered(self) -> None:
        wait_for(lambda: self.proc.poll() is not None or "registered as" in self.output(), 120)
        assert self.proc.poll() is None, self.output()[-3000:]

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path.lstrip("/"), timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def children(self) -> list[int]:
        pids = []
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*/children"):
            pids += [int(pid) for pid in task.read_text().split()]
        return pids

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    if livekit_binary() is None:
        pytest.skip("livekit-server not found (bin/setup builds it)")
    if not (STATIC_DIR / "app.js").is_file():
        pytest.skip("the talk page is not built (bin/setup builds it; needs Node.js)")
    server = Served(free_port(), tmp_path / "serve.log")
    try:
        server.wait_registered()
        yield server
    finally:
        server.stop()


@pytest.fixture
def browser(question_wav: Path, tmp_path: Path):
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("chromium and chromedriver not found (bin/setup installs them as root)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--use-file-for-fake-audio-capture={question_wav}")
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.add_argument("--window-size=1280,800")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(condition: Callable[[], object], within: float, step: float = 0.2) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {within} s")
        time.sleep(step)


def test_a_person_talks_to_the_agent_in_the_browser(served: Served, browser, artifacts: Path):
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(served.url)
    driver.execute_script(WATCH_PAGE)
    started = time.monotonic()
    driver.find_element(By.ID, "connect").click()

    def lines() -> list[dict]:
        return driver.execute_script(LINES)

    def answered() -> bool:
        agent = [line for line in lines() if line["speaker"] == "agent" and line["final"]]
        return bool(agent) and agent[0]["v2v"] is not None

    try:
        wait_for(answered, 60)
    finally:
        driver.save_screenshot(str(artifacts / "web-first-answer.png"))
    print(f"\nfirst answer on the page {time.monotonic() - started:.1f} s after the click")

    shown = lines()
    user = [line for line in shown if line["speaker"] == "user" and line["final"]]
    agent = [line for line in shown if line["speaker"] == "agent" and line["final"]]
    assert {"capital", "france"} <= set(words(user[0]["text"])), shown
    assert "paris" in words(agent[0]["text"]), shown
    assert 0 < int(agent[0]["v2v"]) < 5000, agent[0]  # the agent's own record, in ms
    print(f"voice-to-voice: {agent[0]['v2v']} ms at the agent, heard after {agent[0]['heard']} ms")
    seen = driver.execute_script("return window.__seen")
    print(f"states seen: {seen['states']}, agent voice peak RMS {seen['maxLevel']:.3f}")
    path = seen["states"]
    assert "speaking" in path and "listening" in path[path.index("speaking") :], path  # and back
    assert seen["maxLevel"] > 0.01, seen  # the agent's voice, measured in the page

    # The microphone plays the question again (the file loops): while the second answer is
    # being spoken, the page shows everything at once. That is the screenshot.
    def speaking_again() -> bool:
        level = float(driver.find_element(By.ID, "level").get_attribute("data-level") or 0)
        agents = [line for line in lines() if line["speaker"] == "agent"]
        return len(agents) >= 2 and level > 0.03

    wait_for(speaking_again, 40, step=0.05)
    laptop = artifacts / "web-laptop.png"
    driver.save_screenshot(str(laptop))
    if not SCREENSHOT.exists() or os.environ.get("VOICECORE_UPDATE_SCREENSHOT"):
        shutil.copyfile(laptop, SCREENSHOT)
    driver.set_window_size(390, 844)  # a phone
    time.sleep(0.5)
    driver.save_screenshot(str(artifacts / "web-phone.png"))
    assert driver.execute_script("return document.documentElement.scrollWidth") <= 390

    # the server counted the turns it answered
    status, text = served.get("/metrics")
    assert status == 200
    samples = {
        (s.name, s.labels.get("stage")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if "le" not in s.labels
    }
    assert samples[("voicecore_voice_to_voice_seconds_count", None)] >= 1
    for stage in STAGES:
        assert samples[("voicecore_turn_stage_latency_seconds_count", stage)] >= 1, stage
    assert samples[("voicecore_turns_total", None)] >= 1
    assert samples[("voicecore_active_sessions", None)] == 1
    assert served.get("/healthz")[0] == 200
    assert served.get("/readyz") == (200, '{"ready": true}')

    # hanging up, then Ctrl-C: the agent leaves, serve stops its livekit-server too
    driver.find_element(By.ID, "disconnect").click()
    wait_for(lambda: driver.find_element(By.ID, "agent-state").get_attribute("data-state") == "offline", 5)
    livekit = served.children()
    assert livekit, "serve --dev started no livekit-server"
    assert served.stop() == 0, served.output()[-3000:]
    assert re.search(r"left room voicecore-\w+", served.output())
    for pid in livekit:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


# -- LiveKit's own components, from another origin ------------------------------------------------
COMPAT_PAGE = ROOT / "tests" / "frontend_compat" / "dist"
COMPAT_KEY = "compat-http-key-0123456789abcdef"
COMPAT_AGENT = "vc-compat"  # its own agent name: no other worker on the server takes these rooms
COMPAT_LIVEKIT_KEYS = {"compat-lk": "compat-lk-secret-0123456789abcdef0123"}  # not the dev pair
COMPAT_SEEN = """
return {
  states: window.__compat.states,
  messages: Array.from(document.querySelectorAll('.message')).map(m => ({
    type: m.dataset.type, final: m.dataset.final === 'true', text: m.textContent})),
  legacy: Array.from(document.querySelectorAll('.segment')).map(s => ({
    final: s.dataset.final === 'true', text: s.textContent})),
  error: document.getElementById('error').textContent,
};
"""
FETCH_TOKEN = """
const [url, key, done] = arguments;
fetch(url, {method: 'POST', headers: {'Content-Type': 'application/json', 'X-Voicecore-Key': key},
            body: '{}'})
  .then(r => done('status ' + r.status), e => done('failed: ' + e));
"""


class PageServer:
    """The compatibility page on a plain HTTP server of its own (a thread): another origin than
    voicecore's, as a frontend deployed apart from the agent is."""

    def __init__(self, directory: Path) -> None:
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

        handler = functools.partial(Quiet, directory=str(directory))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="compat-page", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def compat_page() -> Iterator[PageServer]:
    if not (COMPAT_PAGE / "index.html").is_file():
        pytest.skip("the compatibility page is not built (bin/setup builds it; needs Node.js)")
    page = PageServer(COMPAT_PAGE)
    try:
        yield page
    finally:
        page.close()


@pytest.fixture
def production_livekit(tmp_path: Path) -> Iterator[LiveKitServer]:
    binary = livekit_binary()
    if binary is None:
        pytest.skip("livekit-server not found (bin/setup builds it)")
    workdir = tmp_path / "livekit"
    workdir.mkdir()
    server = LiveKitServer(binary, workdir, keys=COMPAT_LIVEKIT_KEYS)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_livekit_components_from_another_origin(
    production_livekit: LiveKitServer, compat_page: PageServer, browser, tmp_path: Path
):
    """A page built from LiveKit's own components (@livekit/components-react 2.9.24,
    livekit-client 2.23.0, assembled as agent-starter-react does: useSession over
    TokenSource.endpoint, useAgent, useSessionMessages, useChat, RoomAudioRenderer) on an origin
    of its own, talking to `voicecore serve` as an operator runs it: production LiveKit keys, an
    HTTP key, the page's origin in `http.allowed_origins`. The browser asks CORS first (the key
    header and the JSON body both need a preflight), gets a token, joins, and the fake microphone
    asks "What is the capital of France?". The page must show the agent going listening ->
    thinking -> speaking -> listening, the question as the person's transcript and "Paris" as the
    agent's (text streams), "Paris" in `useVoiceAssistant().agentTranscriptions` too (the legacy
    transcription packets older frontends read), and log no console error. A page on an origin
    that is not listed cannot read a token. Then a question typed in the starter's chat box
    (useChat: a text stream on lk.chat) is answered: "Tokyo" in the agent's transcript.
    """
    from selenium.webdriver.common.by import By

    origin = f"http://localhost:{compat_page.port}"
    creds = production_livekit.creds
    served = Served(
        free_port(),
        tmp_path / "serve.log",
        args=(),
        env={
            "LIVEKIT_URL": creds.ws_url, "LIVEKIT_API_KEY": creds.api_key,
            "LIVEKIT_API_SECRET": creds.api_secret,
            "VOICECORE_HTTP_API_KEY": COMPAT_KEY, "VOICECORE_HTTP_ALLOWED_ORIGINS": origin,
            "VOICECORE_LIVEKIT_AGENT_NAME": COMPAT_AGENT,
        },
    )  # fmt: skip
    driver = browser
    try:
        served.wait_registered()
        endpoint = served.url + "api/connection-details"
        query = urllib.parse.urlencode({"endpoint": endpoint, "agent": COMPAT_AGENT, "key": COMPAT_KEY})
        driver.get(f"{origin}/index.html?{query}")
        driver.find_element(By.ID, "start").click()

        def seen() -> dict:
            return driver.execute_script(COMPAT_SEEN)

        def answered() -> bool:
            now = seen()
            assert not now["error"], now["error"]
            agent = [m for m in now["messages"] if m["type"] == "agentTranscript" and m["final"]]
            return any("paris" in words(m["text"]) for m in agent) and now["states"][-1:] == ["listening"]

        try:
            wait_for(answered, 90)
        finally:
            print(f"\nthe page saw: {seen()}")
        now = seen()
        user = [m for m in now["messages"] if m["type"] == "userTranscript" and m["final"]]
        assert user and {"capital", "france"} <= set(words(user[0]["text"])), now["messages"]
        assert any(s["final"] and "paris" in words(s["text"]) for s in now["legacy"]), now["legacy"]
        states = now["states"]
        i = states.index("listening")
        j = states.index("thinking", i)
        k = states.index("speaking", j)
        assert "listening" in states[k:], states

        # typed in the chat box, answered aloud
        typed = "What is the capital of Japan?"
        driver.find_element(By.ID, "chat-input").send_keys(typed)
        driver.find_element(By.ID, "chat-send").click()

        def typed_answered() -> bool:
            now = seen()
            agent = [m for m in now["messages"] if m["type"] == "agentTranscript" and m["final"]]
            return any("tokyo" in words(m["text"]) for m in agent) and now["states"][-1:] == ["listening"]

        try:
            wait_for(typed_answered, 60)
        finally:
            print(f"\nafter typing, the page saw: {seen()['messages']}")
        chat = [m for m in seen()["messages"] if m["type"] == "chatMessage"]
        assert [m["text"] for m in chat] == [typed], chat
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, errors

        # the same page on an origin that is not listed (127.0.0.1 is not localhost to a browser)
        driver.get(f"http://127.0.0.1:{compat_page.port}/index.html")
        answer = driver.execute_async_script(FETCH_TOKEN, endpoint, COMPAT_KEY)
        assert answer.startswith("failed"), answer
        refused = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert any("CORS" in message for message in refused), refused
    finally:
        code = served.stop()
    assert code == 0, served.output()[-3000:]
