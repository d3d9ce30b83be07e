// The microphone's capture worklet for face.html: hands 1024-sample blocks to the page,
// which resamples them to 24 kHz PCM and sends them on /ws/audio. A file of its own (not a
// blob: URL) so the page's CSP can stay `script-src 'self'`.
class CreatureCapture extends AudioWorkletProcessor {
  constructor() { super(); this.buf = new Float32Array(1024); this.n = 0; }
  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (ch) {
      for (let i = 0; i < ch.length; i++) {
        this.buf[this.n++] = ch[i];
        if (this.n === this.buf.length) {
          this.port.postMessage(this.buf, [this.buf.buffer]);
          this.buf = new Float32Array(1024); this.n = 0;
        }
      }
    }
    return true;
  }
}
registerProcessor('creature-capture', CreatureCapture);
