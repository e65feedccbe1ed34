// The voicecore talk page: one click to talk to the agent through LiveKit.
//
// What it reads from the room (LiveKit's agent conventions, docs/livekit.md):
//   lk.transcription text streams  both sides' words; interim (greyed) until lk.transcription_final
//   lk.agent.state attribute        listening / thinking / speaking, on the agent participant
//   voicecore.metrics text stream   each turn's latency record, sent to us by the agent
// and measures itself: the agent's voice level (AnalyserNode) and the latency heard here.

import {
  type Participant,
  type RemoteParticipant,
  type RemoteTrack,
  Room,
  RoomEvent,
  type TextStreamReader,
  Track,
} from 'livekit-client';
import { ApiError, fetchConnectionDetails, storedKey, storeKey } from './api';
import { drawBars, HeardLatency, VoiceMeter } from './meter';
import { TranscriptView, type TurnMetrics } from './transcript';

const TRANSCRIPTION_TOPIC = 'lk.transcription';
const METRICS_TOPIC = 'voicecore.metrics';
const STATE_ATTRIBUTE = 'lk.agent.state';
const BANDS = 28;
const READY = 'Speak whenever you like; talk over the agent to interrupt it.';
const TICK_MS = 25;

const STATE_LABELS: Record<string, string> = {
  offline: 'not connected',
  connecting: 'connecting…',
  waiting: 'waiting for the agent…',
  initializing: 'starting…',
  idle: 'idle',
  listening: 'listening',
  thinking: 'thinking…',
  speaking: 'speaking',
};

const $ = <T extends HTMLElement>(id: string): T => document.getElementById(id) as T;

class TalkPage {
  private room: Room | null = null;
  private audio: AudioContext | null = null;
  private agentMeter: VoiceMeter | null = null;
  private micMeter: VoiceMeter | null = null;
  private heard = new HeardLatency();
  private readonly view: TranscriptView;

  private readonly connectButton = $<HTMLButtonElement>('connect');
  private readonly muteButton = $<HTMLButtonElement>('mute');
  private readonly disconnectButton = $<HTMLButtonElement>('disconnect');
  private readonly enableAudioButton = $<HTMLButtonElement>('enable-audio');
  private readonly keyForm = $<HTMLFormElement>('key-form');
  private readonly keyInput = $<HTMLInputElement>('key');
  private readonly status = $<HTMLParagraphElement>('status');
  private readonly statePill = $<HTMLSpanElement>('agent-state');
  private readonly level = $<HTMLDivElement>('level');
  private readonly canvas = $<HTMLCanvasElement>('visualiser');
  private readonly lastLatency = $<HTMLSpanElement>('last-latency');

  constructor() {
    this.view = new TranscriptView($<HTMLOListElement>('transcript'));
    this.connectButton.addEventListener('click', () => void this.connect());
    this.disconnectButton.addEventListener('click', () => void this.disconnect());
    this.muteButton.addEventListener('click', () => void this.toggleMute());
    this.enableAudioButton.addEventListener('click', () => void this.room?.startAudio());
    this.keyForm.addEventListener('submit', (event) => {
      event.preventDefault();
      storeKey(this.keyInput.value.trim());
      this.keyForm.hidden = true;
      this.connectButton.hidden = false;
      void this.connect();
    });
    this.draw();
  }

  // -- connecting ---------------------------------------------------------------------------------
  private async connect(): Promise<void> {
    if (this.room) return;
    this.connectButton.disabled = true;
    this.setState('connecting');
    this.say('Asking the server for a room…');
    // Created inside the click, so the browser lets it play sound.
    this.audio ??= new AudioContext();
    void this.audio.resume();
    const room = new Room({
      audioCaptureDefaults: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    this.room = room;
    try {
      const details = await fetchConnectionDetails();
      this.wire(room);
      this.say(`Joining ${details.roomName}…`);
      await room.connect(details.serverUrl, details.participantToken);
      this.say('Allow the microphone when the browser asks.');
      await room.localParticipant.setMicrophoneEnabled(true);
      await room.startAudio();
      this.view.clear();
      this.showConnected(true);
      const agent = this.findAgent();
      this.setState(agent ? (agent.attributes[STATE_ATTRIBUTE] ?? 'initializing') : 'waiting');
      this.say(agent ? READY : 'Connected. The agent is on its way…');
    } catch (error) {
      await this.teardown();
      this.fail(error);
    } finally {
      this.connectButton.disabled = false;
    }
  }

  private wire(room: Room): void {
    room
      .on(RoomEvent.TrackSubscribed, (track, _publication, participant) =>
        this.onTrack(track, participant),
      )
      .on(RoomEvent.TrackUnsubscribed, (track, _publication, participant) => {
        if (participant.isAgent && track.kind === Track.Kind.Audio) this.dropAgentTrack(track);
      })
      .on(RoomEvent.LocalTrackPublished, (publication) => {
        const track = publication.track?.mediaStreamTrack;
        if (publication.source === Track.Source.Microphone && track && this.audio) {
          this.micMeter?.close();
          this.micMeter = new VoiceMeter(this.audio, track);
        }
      })
      .on(RoomEvent.ParticipantConnected, (participant) => {
        if (participant.isAgent) {
          this.setState(participant.attributes[STATE_ATTRIBUTE] ?? 'initializing');
          this.say(READY);
        }
      })
      .on(RoomEvent.ParticipantDisconnected, (participant) => {
        if (participant.isAgent) {
          this.setState('waiting');
          this.say('The agent left the room.');
        }
      })
      .on(RoomEvent.ParticipantAttributesChanged, (changed, participant) => {
        if (participant.isAgent && STATE_ATTRIBUTE in changed) this.setState(changed[STATE_ATTRIBUTE]);
      })
      .on(RoomEvent.AudioPlaybackStatusChanged, () => {
        this.enableAudioButton.hidden = room.canPlaybackAudio;
      })
      .on(RoomEvent.MediaDevicesError, (error) => this.fail(error))
      .on(RoomEvent.Disconnected, () => {
        if (this.room === room) {
          void this.teardown();
          this.say('Disconnected.');
        }
      });
    room.registerTextStreamHandler(TRANSCRIPTION_TOPIC, (reader, from) => {
      void this.onTranscript(room, reader, from.identity);
    });
    room.registerTextStreamHandler(METRICS_TOPIC, (reader) => void this.onMetrics(reader));
  }

  private async disconnect(): Promise<void> {
    const room = this.room;
    await this.teardown();
    await room?.disconnect();
    this.say('Disconnected. Click “Start talking” to begin again.');
  }

  private async teardown(): Promise<void> {
    const room = this.room;
    this.room = null;
    room?.removeAllListeners();
    room?.unregisterTextStreamHandler(TRANSCRIPTION_TOPIC);
    room?.unregisterTextStreamHandler(METRICS_TOPIC);
    this.agentMeter?.close();
    this.micMeter?.close();
    this.agentMeter = this.micMeter = null;
    this.heard.reset();
    document.querySelectorAll('audio[data-agent]').forEach((element) => element.remove());
    this.showConnected(false);
    this.setState('offline');
  }

  private async toggleMute(): Promise<void> {
    const local = this.room?.localParticipant;
    if (!local) return;
    const muted = local.isMicrophoneEnabled;
    await local.setMicrophoneEnabled(!muted);
    this.muteButton.setAttribute('aria-pressed', String(muted));
    this.muteButton.textContent = muted ? 'Unmute' : 'Mute';
    this.say(muted ? 'Microphone muted: the agent does not hear you.' : 'Microphone on.');
  }

  // -- what the room sends --------------------------------------------------------------------------
  private onTrack(track: RemoteTrack, participant: RemoteParticipant): void {
    if (track.kind !== Track.Kind.Audio || !participant.isAgent) return;
    const element = track.attach();
    element.dataset.agent = participant.identity;
    document.body.append(element); // plays the agent; Chrome also needs it for Web Audio to get data
    if (this.audio && track.mediaStreamTrack) {
      this.agentMeter?.close();
      this.agentMeter = new VoiceMeter(this.audio, track.mediaStreamTrack);
    }
  }

  private dropAgentTrack(track: RemoteTrack): void {
    track.detach().forEach((element) => element.remove());
    this.agentMeter?.close();
    this.agentMeter = null;
  }

  private async onTranscript(room: Room, reader: TextStreamReader, sender: string): Promise<void> {
    const attributes = reader.info.attributes ?? {};
    const text = await reader.readAll();
    if (this.room !== room) return;
    const segment = attributes['lk.segment_id'] ?? reader.info.id;
    const final = attributes['lk.transcription_final'] === 'true';
    const speaker = sender === room.localParticipant.identity ? 'user' : 'agent';
    this.view.update(segment, speaker, text, final);
  }

  private async onMetrics(reader: TextStreamReader): Promise<void> {
    try {
      const metrics = JSON.parse(await reader.readAll()) as TurnMetrics;
      const shown = this.view.showTurn(metrics);
      if (shown) {
        this.lastLatency.hidden = false;
        this.lastLatency.textContent = `turn ${metrics.turn}: ${shown}`;
      }
    } catch {
      // a malformed record is not worth interrupting the conversation for
    }
  }

  // -- levels, drawn and measured every TICK_MS --------------------------------------------------------
  private draw(): void {
    window.setInterval(() => {
      const now = performance.now();
      const agent = this.agentMeter?.level() ?? 0;
      const mic = this.micMeter?.level() ?? 0;
      const shown = Math.min(1, agent * 4); // speech RMS rarely passes 0.25
      this.level.dataset.level = agent.toFixed(3);
      this.level.setAttribute('aria-valuenow', shown.toFixed(2));
      (this.level.firstElementChild as HTMLElement).style.width = `${(shown * 100).toFixed(1)}%`;
      // low frequencies in the middle, mirrored outwards: speech looks like speech
      const half = this.agentMeter?.bands(BANDS / 2) ?? new Array<number>(BANDS / 2).fill(0);
      const bands = [...half.slice().reverse(), ...half];
      const color = getComputedStyle(this.statePill.querySelector('.dot')!).backgroundColor;
      drawBars(this.canvas, bands, color);
      if (document.visibilityState === 'visible') {
        const ms = this.heard.sample(now, mic, agent);
        if (ms !== null) this.view.showHeard(ms, now);
      }
    }, TICK_MS);
  }

  // -- the rest of the page ----------------------------------------------------------------------
  private findAgent(): Participant | undefined {
    return Array.from(this.room?.remoteParticipants.values() ?? []).find((p) => p.isAgent);
  }

  private setState(state: string): void {
    this.statePill.dataset.state = state;
    this.statePill.querySelector('.label')!.textContent = STATE_LABELS[state] ?? state;
  }

  private showConnected(connected: boolean): void {
    this.connectButton.hidden = connected;
    this.muteButton.hidden = this.disconnectButton.hidden = !connected;
    this.muteButton.setAttribute('aria-pressed', 'false');
    this.muteButton.textContent = 'Mute';
    if (!connected) this.enableAudioButton.hidden = true;
  }

  private say(message: string): void {
    this.status.classList.remove('error');
    this.status.textContent = message;
  }

  private fail(error: unknown): void {
    this.status.classList.add('error');
    if (error instanceof ApiError && error.status === 401) {
      this.status.textContent = storedKey() ? 'That key was not accepted.' : 'Enter the access key to connect.';
      storeKey(null);
      this.connectButton.hidden = true; // the key form's button connects
      this.keyForm.hidden = false;
      this.keyInput.focus();
    } else if (error instanceof Error && error.name === 'NotAllowedError') {
      this.status.textContent = 'The microphone is blocked: allow it for this page, then try again.';
    } else {
      this.status.textContent = error instanceof Error ? error.message : String(error);
    }
  }
}

new TalkPage();
