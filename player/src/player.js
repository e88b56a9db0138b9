// The player page: plays a .gsv from a URL (or a finished job's video.gsv) at its frame rate,
// fetching GOPs progressively by range requests through the index, decoding frame by frame
// (JS decoder) and rendering with WebGL2 (CPU fallback). Seeks to any frame (decoding from its
// GOP's I-frame), shows frame number, bitrate and render fps, and reports a damaged GOP (fetch,
// CRC or decode error) and plays on from the next one. window.gsvPlayer is its scripting surface
// (used by the browser test).

import { gopForFrame } from "./container.js";
import { GopDecoder } from "./gop.js";
import { RemoteGsv } from "./remote.js";
import { renderFrame } from "./render_cpu.js";
import { CpuCanvasRenderer, GlRenderer, GlUnavailable } from "./render_gl.js";

const PREFETCH = 2; // GOPs fetched ahead of the one playing

export class Player {
  constructor(canvas, onUpdate) {
    this.canvas = canvas;
    this.onUpdate = onUpdate || (() => {});
    try {
      this.renderer = new GlRenderer(canvas);
      this.fallbackReason = null;
    } catch (e) {
      if (!(e instanceof GlUnavailable)) throw e;
      this.renderer = new CpuCanvasRenderer(canvas, renderFrame);
      this.fallbackReason = e.message;
    }
    this.file = null;
    this.zoom = 1;
    this.playing = false;
    this.frame = -1; // frame on screen
    this.gopCache = new Map(); // gop -> Promise<payload>
    this.damaged = new Map(); // gop -> message
    this.decoder = null; // {gop, dec, last}
    this.renderMs = [];
    this.decodeMs = [];
    this.shown = 0;
    this.error = null;
    this.buffering = false;
  }

  async open(url, headers) {
    this.file = await new RemoteGsv(url, headers).open();
    const { width, height } = this.file.header;
    this.setZoom(this.zoom);
    this.fps = this.file.header.fps_num / this.file.header.fps_den;
    this.frame = -1;
    await this.show(0);
    return this.file;
  }

  setZoom(z) {
    this.zoom = z;
    if (!this.file) return;
    this.canvas.width = Math.max(1, Math.round(this.file.header.width * z));
    this.canvas.height = Math.max(1, Math.round(this.file.header.height * z));
    if (this.frame >= 0 && this.decoder && this.decoder.last) this._draw();
  }

  _fetchGop(g) {
    if (!this.gopCache.has(g)) {
      const p = this.file.gop(g);
      p.catch((e) => this._damage(g, e));
      this.gopCache.set(g, p);
      if (this.gopCache.size > 8) {
        for (const k of this.gopCache.keys()) {
          if (Math.abs(k - g) > PREFETCH + 2) this.gopCache.delete(k);
        }
      }
    }
    return this.gopCache.get(g);
  }

  _damage(g, e) {
    if (!this.damaged.has(g)) {
      this.damaged.set(g, e && e.message ? e.message : String(e));
      this.onUpdate(this);
    }
  }

  _prefetch(g) {
    for (let k = g + 1; k <= Math.min(g + PREFETCH, this.file.gops.length - 1); k++) this._fetchGop(k);
  }

  /** Decode up to frame f and draw it; a damaged GOP is reported and skipped (false). */
  async show(f) {
    const g = gopForFrame(this.file.gops, f);
    this._prefetch(g);
    if (this.damaged.has(g)) return false;
    let payload;
    try {
      this.buffering = true;
      payload = await this._fetchGop(g);
    } catch (e) {
      this._damage(g, e);
      return false;
    } finally {
      this.buffering = false;
    }
    const first = this.file.gops[g].firstFrame;
    try {
      if (!this.decoder || this.decoder.gop !== g || this.decoder.t > f - first) {
        this.decoder = { gop: g, dec: new GopDecoder(payload), t: -1, last: null };
        const d = this.decoder.dec;
        if (d.width !== this.file.header.width || d.height !== this.file.header.height) {
          throw new Error(`GOP ${g} is ${d.width}x${d.height}, the stream ${this.file.header.width}x${this.file.header.height}`);
        }
      }
      const t0 = performance.now();
      while (this.decoder.t < f - first) {
        this.decoder.last = this.decoder.dec.next();
        this.decoder.t += 1;
      }
      this.decodeMs.push(performance.now() - t0);
    } catch (e) {
      this.decoder = null;
      this._damage(g, e);
      return false;
    }
    this.frame = f;
    this._draw();
    return true;
  }

  _draw() {
    const fr = this.decoder.last;
    const { width, height } = this.file.header;
    const t0 = performance.now();
    this.renderer.upload(fr.params, fr.n, height, width, fr.canonical);
    this.renderer.draw();
    this.renderer.finish();
    this.renderMs.push(performance.now() - t0);
    if (this.renderMs.length > 60) this.renderMs.shift();
    if (this.decodeMs.length > 60) this.decodeMs.shift();
    this.shown += 1;
    this.onUpdate(this);
  }

  play() {
    if (this.playing || !this.file) return;
    this.playing = true;
    this.clockFrame = Math.max(0, this.frame);
    this.clockStart = performance.now();
    this.generation = (this.generation || 0) + 1;
    this._tick(this.generation);
  }

  pause() {
    this.playing = false;
  }

  async seek(f) {
    const wasPlaying = this.playing;
    this.playing = false;
    f = Math.max(0, Math.min(this.file.nFrames - 1, Math.floor(f)));
    while (!(await this.show(f))) {
      // damaged GOP: on to the next one
      const g = gopForFrame(this.file.gops, f) + 1;
      if (g >= this.file.gops.length) break;
      f = this.file.gops[g].firstFrame;
    }
    if (wasPlaying) this.play();
    return this.frame;
  }

  async _tick(generation) {
    // one loop per play(): a loop left waiting by pause/seek/play ends when it wakes up
    while (this.playing && generation === this.generation) {
      const due = this.clockFrame + Math.floor(((performance.now() - this.clockStart) / 1000) * this.fps);
      if (due >= this.file.nFrames) {
        this.playing = false;
        this.onUpdate(this);
        break;
      }
      if (due > this.frame) {
        const before = performance.now();
        const ok = await this.show(due);
        if (generation !== this.generation) break;
        if (!ok) {
          // skip the damaged GOP: restart the clock at the next GOP
          const g = gopForFrame(this.file.gops, due) + 1;
          if (g >= this.file.gops.length) {
            this.playing = false;
            break;
          }
          this.clockFrame = this.file.gops[g].firstFrame;
          this.clockStart = performance.now();
          continue;
        }
        if (performance.now() - before > 500) {
          // waited for the network: keep the picture, shift the clock
          this.clockFrame = this.frame;
          this.clockStart = performance.now();
        }
      }
      await new Promise((r) => requestAnimationFrame(r));
    }
  }

  /** Figures for the stats line and the tests. */
  stats() {
    const mean = (a) => (a.length ? a.reduce((x, y) => x + y, 0) / a.length : 0);
    const g = this.frame >= 0 ? gopForFrame(this.file.gops, this.frame) : -1;
    const e = g >= 0 ? this.file.gops[g] : null;
    const fr = this.decoder && this.decoder.last;
    return {
      frame: this.frame,
      nFrames: this.file ? this.file.nFrames : 0,
      gop: g,
      playing: this.playing,
      buffering: this.buffering,
      renderer: this.renderer.name,
      canonical: fr ? fr.canonical : null,
      fallbackReason: this.fallbackReason,
      gaussians: fr ? fr.n : 0,
      frameBytes: fr ? fr.bytes : 0,
      gopKbps: e ? (e.length * 8 * this.fps) / e.nFrames / 1000 : 0,
      renderMs: mean(this.renderMs),
      renderFps: this.renderMs.length ? 1000 / mean(this.renderMs) : 0,
      decodeMs: mean(this.decodeMs),
      bytesFetched: this.file ? this.file.bytesFetched : 0,
      requests: this.file ? this.file.requests : 0,
      damaged: [...this.damaged.entries()].map(([gop, message]) => ({ gop, message })),
      zoom: this.zoom,
    };
  }

  /** The frame on screen at the stream's own size, uint8 RGB (for conformance checks). */
  readFrame() {
    const z = this.zoom;
    if (z !== 1) this.setZoom(1);
    else this._draw();
    const rgb = this.renderer.read();
    if (z !== 1) this.setZoom(z);
    return rgb;
  }
}
