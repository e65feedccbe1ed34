"""Which of a person's voice tracks the agent hears: the first microphone they published.

The SDK gives no order a person would recognise: the publications of someone already in the room
arrive in the join snapshot as the server lists them (from a Go map: any order), and their
subscriptions complete in any order. The server stamps each track with a version when it is
published (`TrackInfo.version`, time then a counter). Whenever a person has more than one voice
track, voicecore asks the server for those stamps (RoomService.GetParticipant, with the API key it
already has) and hears the oldest. Without an API key (an `AgentRoom` joined with a token alone)
it hears the first track it learned of.
"""

from __future__ import annotations

from livekit import api, rtc

from voicecore.rtc.token import Credentials

# Audio a person speaks into, best first. Screen-share audio is not them talking.
VOICE_SOURCES = (rtc.TrackSource.SOURCE_MICROPHONE, rtc.TrackSource.SOURCE_UNKNOWN)

Stamp = tuple[int, int]  # the server's publication version: (unix microseconds, ticks)
UNKNOWN: Stamp = (2**63, 0)  # not (yet) known: after every known one


class VoiceTracks:
    """One person's voice tracks, by sid, in the order the agent learned of them."""

    def __init__(self) -> None:
        self._tracks: dict[str, tuple[rtc.Track, rtc.TrackSource.ValueType]] = {}
        self._published: dict[str, Stamp] = {}

    def __len__(self) -> int:
        return len(self._tracks)

    def __contains__(self, sid: str) -> bool:
        return sid in self._tracks

    def add(self, track: rtc.Track, publication: rtc.TrackPublication) -> None:
        self._tracks[publication.sid] = (track, publication.source)

    def remove(self, sid: str) -> bool:
        """Forget a track; False if it was not known."""
        self._published.pop(sid, None)
        return self._tracks.pop(sid, None) is not None

    def sids(self) -> list[str]:
        return list(self._tracks)

    def track(self, sid: str) -> rtc.Track:
        return self._tracks[sid][0]

    def published(self, stamps: dict[str, Stamp]) -> None:
        """The server's publication stamps (see the module docstring)."""
        self._published.update({sid: stamp for sid, stamp in stamps.items() if sid in self._tracks})

    def best(self) -> str:
        """A microphone before an unlabelled track; among equals, the first published (as the
        server stamped it, else the first the agent learned of). The set must not be empty."""
        order = list(self._tracks)
        return min(
            order,
            key=lambda sid: (
                VOICE_SOURCES.index(self._tracks[sid][1]),
                self._published.get(sid, UNKNOWN),
                order.index(sid),
            ),
        )


def is_voice(publication: rtc.TrackPublication) -> bool:
    return publication.kind == rtc.TrackKind.KIND_AUDIO and publication.source in VOICE_SOURCES


async def publication_stamps(creds: Credentials, room: str, identity: str) -> dict[str, Stamp]:
    """Track sid -> when the server says it was published, for one participant's tracks."""
    lkapi = api.LiveKitAPI(creds.http_url, creds.api_key, creds.api_secret)
    try:
        info = await lkapi.room.get_participant(api.RoomParticipantIdentity(room=room, identity=identity))
    finally:
        await lkapi.aclose()
    return {t.sid: (t.version.unix_micro, t.version.ticks) for t in info.tracks if t.HasField("version")}
