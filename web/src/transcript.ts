// The live transcript: one line per segment (lk.segment_id), interim text greyed until final.

export type Speaker = 'user' | 'agent';

export interface TurnMetrics {
  turn: number;
  interrupted: boolean;
  speculative: boolean;
  latency_ms: Record<string, number | null>;
}

const MAX_LINES = 200; // a long conversation keeps its latest lines only

export class TranscriptView {
  private readonly lines = new Map<string, HTMLLIElement>();
  private lastAgentLine: HTMLLIElement | null = null;
  private pendingHeard: number | null = null; // measured before the reply's first words arrived

  constructor(private readonly list: HTMLOListElement) {}

  update(segment: string, speaker: Speaker, text: string, final: boolean): void {
    let line = this.lines.get(segment);
    if (line?.dataset.final === 'true') return; // a late interim never overwrites the final text
    if (!line) {
      line = this.newLine(segment, speaker);
      if (speaker === 'agent' && this.pendingHeard !== null) {
        this.setHeard(line, this.pendingHeard);
        this.pendingHeard = null;
      }
    }
    line.dataset.final = String(final);
    line.querySelector('.text')!.textContent = text;
    if (speaker === 'agent') this.lastAgentLine = line;
    this.scroll();
  }

  /** The server's record of the turn just answered, on the agent's latest line. */
  showTurn(metrics: TurnMetrics): string | null {
    const v2v = metrics.latency_ms.voice_to_voice;
    if (v2v == null || !this.lastAgentLine) return null;
    const text = `voice-to-voice ${Math.round(v2v)} ms${metrics.interrupted ? ' (interrupted)' : ''}`;
    const badge = this.badge(this.lastAgentLine);
    badge.dataset.voiceToVoice = String(Math.round(v2v));
    badge.querySelector('.server')!.textContent = text;
    separate(badge);
    badge.title = Object.entries(metrics.latency_ms)
      .map(([stage, ms]) => `${stage}: ${ms == null ? '-' : `${Math.round(ms)} ms`}`)
      .join('\n');
    return text;
  }

  /** The page's own measurement of the reply that just started (see HeardLatency): on the
   * agent's line if its words came first, else on the next agent line. */
  showHeard(ms: number, now: number): void {
    const line = this.lastAgentLine;
    const created = Number(line?.dataset.created ?? 0);
    if (line && !line.querySelector('.latency .heard:not(:empty)') && now - created < 2000) {
      this.setHeard(line, ms);
    } else {
      this.pendingHeard = ms;
    }
  }

  private setHeard(line: HTMLLIElement, ms: number): void {
    const badge = this.badge(line);
    badge.dataset.heard = String(Math.round(ms));
    badge.querySelector('.heard')!.textContent = `heard here after ${Math.round(ms)} ms`;
    separate(badge);
  }

  get latestAgentLine(): HTMLLIElement | null {
    return this.lastAgentLine;
  }

  clear(): void {
    this.lines.clear();
    this.lastAgentLine = null;
    this.pendingHeard = null;
    this.list.replaceChildren();
  }

  private newLine(segment: string, speaker: Speaker): HTMLLIElement {
    this.list.querySelector('.empty')?.remove();
    const line = document.createElement('li');
    line.className = `line ${speaker}`;
    line.dataset.segment = segment;
    line.dataset.speaker = speaker;
    line.dataset.created = String(performance.now());
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = speaker === 'user' ? 'You' : 'Agent';
    const text = document.createElement('p');
    text.className = 'text';
    line.append(who, text);
    this.list.append(line);
    this.lines.set(segment, line);
    while (this.lines.size > MAX_LINES) {
      const [oldest, element] = this.lines.entries().next().value as [string, HTMLLIElement];
      element.remove();
      this.lines.delete(oldest);
    }
    return line;
  }

  private badge(line: HTMLLIElement): HTMLElement {
    let badge = line.querySelector<HTMLElement>('.latency');
    if (!badge) {
      badge = document.createElement('span');
      badge.className = 'latency';
      const server = document.createElement('span');
      server.className = 'server';
      const sep = document.createElement('span');
      sep.className = 'sep';
      const heard = document.createElement('span');
      heard.className = 'heard';
      badge.append(server, sep, heard);
      line.append(badge);
    }
    return badge;
  }

  private scroll(): void {
    this.list.scrollTop = this.list.scrollHeight;
  }
}

function separate(badge: HTMLElement): void {
  const [server, sep, heard] = Array.from(badge.children);
  sep.textContent = server.textContent && heard.textContent ? ' · ' : '';
}
