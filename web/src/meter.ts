// The agent's voice (and the microphone), measured with a Web Audio AnalyserNode.

export class VoiceMeter {
  private readonly source: MediaStreamAudioSourceNode;
  private readonly analyser: AnalyserNode;
  private readonly samples: Float32Array<ArrayBuffer>;
  private readonly spectrum: Uint8Array<ArrayBuffer>;

  constructor(context: AudioContext, track: MediaStreamTrack) {
    this.source = context.createMediaStreamSource(new MediaStream([track]));
    this.analyser = context.createAnalyser();
    this.analyser.fftSize = 1024;
    this.analyser.smoothingTimeConstant = 0.6;
    this.analyser.minDecibels = -85;
    this.analyser.maxDecibels = -20;
    this.source.connect(this.analyser);
    this.samples = new Float32Array(this.analyser.fftSize);
    this.spectrum = new Uint8Array(this.analyser.frequencyBinCount);
  }

  /** RMS of the last ~20 ms, 0 (silence) to 1 (full scale). */
  level(): number {
    this.analyser.getFloatTimeDomainData(this.samples);
    let sum = 0;
    for (const sample of this.samples) sum += sample * sample;
    return Math.sqrt(sum / this.samples.length);
  }

  /** `count` bands (0..1) over the speech range, for the visualiser. */
  bands(count: number): number[] {
    this.analyser.getByteFrequencyData(this.spectrum);
    const usable = Math.floor(this.spectrum.length * 0.35); // ~0-8 kHz at 48 kHz: where speech is
    const out: number[] = [];
    for (let i = 0; i < count; i++) {
      const from = Math.floor((i * usable) / count);
      const to = Math.max(from + 1, Math.floor(((i + 1) * usable) / count));
      let peak = 0;
      for (let j = from; j < to; j++) peak = Math.max(peak, this.spectrum[j]);
      out.push(peak / 255);
    }
    return out;
  }

  close(): void {
    this.source.disconnect();
    this.analyser.disconnect();
  }
}

export function drawBars(canvas: HTMLCanvasElement, bands: number[], color: string): void {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.round(canvas.clientWidth * ratio);
  const height = Math.round(canvas.clientHeight * ratio);
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  const g = canvas.getContext('2d');
  if (!g || width === 0) return;
  g.clearRect(0, 0, width, height);
  g.fillStyle = color;
  const slot = width / bands.length;
  const bar = Math.max(2, slot * 0.55);
  bands.forEach((value, i) => {
    const h = Math.max(4 * ratio, value * height * 0.9);
    const x = i * slot + (slot - bar) / 2;
    const y = (height - h) / 2;
    g.beginPath();
    g.roundRect(x, y, bar, h, bar / 2);
    g.fill();
  });
}

/** Voice-to-voice as heard here: from the last moment the microphone carried speech to the
 * moment the agent's voice starts, whenever the person spoke since the agent last started. It
 * includes both network legs and the browser's buffers: the number a person experiences. */
export class HeardLatency {
  static readonly MIC_ON = 0.02; // RMS: speech at a normal distance, above a quiet room
  static readonly AGENT_ON = 0.01;
  private lastUserVoice = 0;
  private lastAgentOnset = 0;
  private agentLoud = false;

  /** Feed both levels (call every ~20 ms); returns a latency in ms when the agent starts. */
  sample(now: number, micLevel: number, agentLevel: number): number | null {
    if (micLevel > HeardLatency.MIC_ON) this.lastUserVoice = now;
    const loud = agentLevel > HeardLatency.AGENT_ON;
    const onset = loud && !this.agentLoud;
    this.agentLoud = loud;
    if (!onset) return null;
    const replyTo = this.lastUserVoice > this.lastAgentOnset ? this.lastUserVoice : 0;
    this.lastAgentOnset = now;
    const ms = now - replyTo;
    return replyTo > 0 && ms > 50 && ms < 15000 ? ms : null;
  }

  reset(): void {
    this.lastUserVoice = this.lastAgentOnset = 0;
    this.agentLoud = false;
  }
}
