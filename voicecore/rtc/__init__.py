"""voicecore on LiveKit, through the raw RTC SDK (`livekit.rtc`), not livekit-agents.

token.py          where the server is; agent, person and worker JWTs
voice.py          rtc <-> voicecore frames; the agent's one voice shared by a room's conversations
transcription.py  lk.transcription text streams and the bounded, ordered sends queue
room.py           AgentRoom: one Conversation (Session) per person, lk.agent.state
tracks.py         a person's voice tracks: the first microphone published is heard
worker.py         DispatchWorker: the /agent websocket protocol, jobs, load, reconnects
serve.py          a fixed room or dispatch, until stopped (voicecore/service.py adds HTTP)
observer.py       Observer: what happens in the rooms, for telemetry and readiness
devserver.py      a local livekit-server as a child process (`serve --dev`, tests, benchmarks)
caller.py         a simulated person: joins, speaks in real time, notes what it hears
"""

from voicecore.rtc.observer import Observer, Observers
from voicecore.rtc.room import AgentRoom, Conversation
from voicecore.rtc.serve import serve_dispatch, serve_room
from voicecore.rtc.token import Credentials, agent_token, credentials, user_token, worker_token
from voicecore.rtc.voice import AgentVoice, VoiceLane, from_rtc, to_rtc
from voicecore.rtc.worker import DispatchWorker

__all__ = [
    "AgentRoom",
    "AgentVoice",
    "Conversation",
    "Credentials",
    "DispatchWorker",
    "Observer",
    "Observers",
    "VoiceLane",
    "agent_token",
    "credentials",
    "from_rtc",
    "serve_dispatch",
    "serve_room",
    "to_rtc",
    "user_token",
    "worker_token",
]
