// A voice-agent page assembled from LiveKit's own components the way agent-starter-react does it
// (components/app/app.tsx, agent-session-block.tsx, agent-control-bar.tsx): useSession over
// TokenSource.endpoint, SessionProvider + RoomAudioRenderer, useAgent for the state,
// useSessionMessages for the transcript, useChat for the chat box. Nothing here knows voicecore;
// tests/test_frontend_compat.py serves it on an origin of its own and reads what it shows.
//
// Query parameters: endpoint (the token endpoint's URL), agent (the agent name to dispatch), key
// (optional: sent as X-Voicecore-Key, a header that makes the browser ask CORS first).
import { useEffect, useMemo, useRef, useState } from 'react';
import { createRoot } from 'react-dom/client';
import { TokenSource } from 'livekit-client';
import {
  RoomAudioRenderer,
  SessionProvider,
  useAgent,
  useChat,
  useSession,
  useSessionContext,
  useSessionMessages,
  useVoiceAssistant,
} from '@livekit/components-react';

const params = new URLSearchParams(location.search);
const ENDPOINT = params.get('endpoint');
const AGENT_NAME = params.get('agent') || undefined;
const KEY = params.get('key');

// What the test reads: every agent state in order (they change faster than a poll).
window.__compat = { states: [] };

function App() {
  const tokenSource = useMemo(
    () => TokenSource.endpoint(ENDPOINT, KEY ? { headers: { 'X-Voicecore-Key': KEY } } : {}),
    [],
  );
  const session = useSession(tokenSource, AGENT_NAME ? { agentName: AGENT_NAME } : undefined);
  return (
    <SessionProvider session={session}>
      <Conversation />
      <RoomAudioRenderer />
    </SessionProvider>
  );
}

function Conversation() {
  const session = useSessionContext();
  const { state } = useAgent();
  const { messages } = useSessionMessages(session);
  const { send } = useChat(); // the starter's chat box (a text stream on lk.chat)
  const [draft, setDraft] = useState('');
  const { agentTranscriptions } = useVoiceAssistant(); // older frontends: legacy packets
  const error = useRef(null);

  useEffect(() => {
    const states = window.__compat.states;
    if (states[states.length - 1] !== state) states.push(state);
  }, [state]);

  const submit = (event) => {
    event.preventDefault();
    send(draft).catch((e) => console.error('chat send failed', e));
    setDraft('');
  };

  const start = () =>
    session.start().catch((e) => {
      error.current.textContent = String(e);
      console.error('session.start failed', e);
    });

  return (
    <main>
      <button id="start" onClick={start} disabled={session.isConnected}>
        Start call
      </button>
      <button id="end" onClick={() => session.end()}>
        End call
      </button>
      <p id="state" data-state={state}>{state}</p>
      <p id="chat-ready" data-ready={String(typeof send === 'function')} />
      <form id="chat" onSubmit={submit}>
        <input id="chat-input" value={draft} onChange={(e) => setDraft(e.target.value)} />
        <button id="chat-send" type="submit">Send</button>
      </form>
      <p id="error" ref={error} />
      <ul id="messages">
        {messages.map((m) => (
          <li key={m.id} className="message" data-type={m.type} data-final={m.attributes?.['lk.transcription_final'] ?? ''}>
            {m.message}
          </li>
        ))}
      </ul>
      <ul id="legacy">
        {agentTranscriptions.map((s) => (
          <li key={s.id} className="segment" data-final={String(s.final)}>
            {s.text}
          </li>
        ))}
      </ul>
    </main>
  );
}

createRoot(document.getElementById('root')).render(<App />);
