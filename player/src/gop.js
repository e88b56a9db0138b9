// GOP payloads (docs/FORMAT.md section 2): framing, quantisation grid, dequantisation and the
// frame-by-frame decoder (I, P and scene-cut I records), as codec/bitstream.py, codec/quant.py
// and codec/gop.py's decode_gop.

import { GsvError } from "./errors.js";
import { ModelMemory, decodeInter, decodeIntra, readVarint } from "./entropy.js";

export const GOP_FORMAT_VERSION = 7; // 7: the enhancer record (skipped here) may carry a per-GOP filter
export const OLDEST_GOP_FORMAT = 1; // every earlier format still decodes (FORMAT.md section 6)
// format 6 adds the enhancer field after the frame records (FORMAT.md section 2.1); this player
// reads it and plays the raw Gaussian output (the enhancer is a post-filter it does not run)
const MAX_ENHANCER_BYTES = 65536;
export const GRID_BYTES = 60;
/** Grid bytes in GOP format fmt: 59 (no refinement byte) before format 4. */
export function gridBytes(fmt) {
  return fmt >= 4 ? 60 : 59;
}
const MAX_SIDE = 65535;
const MAX_GOP_FRAMES = 10000;
const MAX_SIDE_PX = 8192; // codec/gop.py: the largest frame side the decoder renders
const MAX_DECODE_BYTES = 8 * 1024 ** 3;
const MIN_CHOL_DIAG = 0.25;
const MAX_RATIO = 16;
const MAX_LOG_DIAG = Math.log(1e6);
export const FRAME_KIND = { I: 0, P: 1, I_NEW_GRID: 2 };
export const RENDER_CANONICAL = 0x01; // GOP header flag: the canonical render (FORMAT.md section 4)
const KNOWN_GOP_FLAGS = RENDER_CANONICAL;

/** A quantisation grid of GOP format fmt (60 bytes, 59 before format 4), validated like
 * QuantGrid.problem(). Format 1 grids have uniform Cholesky diagonals. */
export function parseGrid(bytes, fmt = GOP_FORMAT_VERSION) {
  const size = gridBytes(fmt);
  if (bytes.length !== size) throw new GsvError(`quant grid: expected ${size} bytes, got ${bytes.length}`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, size);
  const at = size - 56; // the 14 floats follow the bit depths (and the refinement byte)
  const f = [];
  for (let i = 0; i < 14; i++) f.push(dv.getFloat32(at + 4 * i, true));
  const refine = fmt >= 4 ? bytes[3] : 0;
  const g = {
    fmt,
    geometric: fmt >= 2,
    xyBits: bytes[0],
    cholBits: bytes[1],
    rgbBits: bytes[2],
    xr: refine & 15,
    ar: refine >> 4,
    xyLo: f[0],
    xyStep: f[1],
    cholLo: f.slice(2, 5),
    cholStep: f.slice(5, 8),
    rgbLo: f.slice(8, 11),
    rgbStep: f.slice(11, 14),
  };
  const problem = gridProblem(g);
  if (problem) throw new GsvError(`quant grid: invalid QuantGrid: ${problem}`);
  g.bits = [g.xyBits, g.xyBits, g.cholBits, g.cholBits, g.cholBits, g.rgbBits, g.rgbBits, g.rgbBits];
  g.shifts = [g.xr, g.xr, g.ar, g.ar, g.ar, g.ar, g.ar, g.ar];
  g.intraBits = g.bits.map((b, i) => b - g.shifts[i]);
  g.lo = [g.xyLo, g.xyLo, ...g.cholLo, ...g.rgbLo];
  g.step = [g.xyStep, g.xyStep, ...g.cholStep, ...g.rgbStep];
  // geometric levels of the Cholesky diagonals: t[0] = lo, t[q] = t[q-1] * ratio in float64
  // (format 1: uniform, float32(lo + q * step) like the other channels)
  g.diag = {};
  for (const c of [2, 4]) {
    const n = 2 ** g.cholBits;
    const table = new Float32Array(n);
    let v = g.lo[c];
    for (let q = 0; q < n; q++) {
      table[q] = g.geometric ? v : q * g.step[c] + g.lo[c];
      v *= g.step[c];
    }
    g.diag[c] = table;
  }
  return g;
}

function gridProblem(g) {
  if (g.xyBits < 6 || g.xyBits > 16) return `xy_bits=${g.xyBits} outside (6, 16)`;
  for (const [name, bits] of [["chol_bits", g.cholBits], ["rgb_bits", g.rgbBits]]) {
    if (bits < 2 || bits > 12) return `${name}=${bits} outside (2, 12)`;
  }
  if (g.xr > 4 || g.ar > 4) return `xy_refine=${g.xr} and attr_refine=${g.ar} must be in [0, 4]`;
  if (g.xyBits - g.xr < 6) return `xy_bits - xy_refine = ${g.xyBits - g.xr} is below 6`;
  if (Math.min(g.cholBits, g.rgbBits) - g.ar < 2) return `attr_refine=${g.ar} leaves I-frames fewer than 2 bits`;
  const groups = [
    ["xy", [g.xyLo], [g.xyStep], g.xyBits],
    ["chol", g.cholLo, g.cholStep, g.cholBits],
    ["rgb", g.rgbLo, g.rgbStep, g.rgbBits],
  ];
  for (const [name, los, steps, bits] of groups) {
    for (let i = 0; i < los.length; i++) {
      const lo = los[i];
      const step = steps[i];
      if (Number.isNaN(lo) || Number.isNaN(step)) return `${name} parameters must be float32 values`;
      if (!Number.isFinite(lo) || !Number.isFinite(step) || Math.abs(lo) > 1e9) return `${name} lo=${lo} step=${step} not finite or absurd`;
      if (!(step > 0 && step <= 1e9 / 2 ** bits)) return `${name} step=${step} must be in (0, ${1e9 / 2 ** bits}]`;
    }
  }
  for (const i of g.geometric ? [0, 2] : []) {
    if (g.cholLo[i] < MIN_CHOL_DIAG) return `chol_lo[${i}]=${g.cholLo[i]} is below MIN_CHOL_DIAG=${MIN_CHOL_DIAG}`;
    const ratio = g.cholStep[i];
    if (!(ratio > 1 && ratio <= MAX_RATIO)) return `chol_step[${i}]=${ratio} (a level ratio) must be in (1, ${MAX_RATIO}]`;
    if (Math.log(g.cholLo[i]) + (2 ** g.cholBits - 1) * Math.log(ratio) > MAX_LOG_DIAG) return `chol[${i}] levels reach past 1e+06 px`;
  }
  return null;
}

/** The GOP payload's header and records: {height, width, nFrames, flags, grid, records: [{kind, data}]}. */
export function unpackGop(payload) {
  const what = "GOP payload";
  const data = payload;
  if (data.length < 6) throw new GsvError(`${what}: ${data.length} bytes is too short for a header`);
  if (String.fromCharCode(data[0], data[1], data[2], data[3]) !== "SPGP") {
    throw new GsvError(`${what}: bad magic at byte 0 (expected 'SPGP')`);
  }
  const version = data[4];
  const flags = data[5];
  if (version < OLDEST_GOP_FORMAT || version > GOP_FORMAT_VERSION) {
    throw new GsvError(`${what}: unsupported version ${version} at byte 4 (this decoder reads ${OLDEST_GOP_FORMAT} .. ${GOP_FORMAT_VERSION}; a newer player may read it)`);
  }
  let pos = 6;
  let height;
  let width;
  let nFrames;
  [height, pos] = readVarint(data, pos, what);
  [width, pos] = readVarint(data, pos, what);
  [nFrames, pos] = readVarint(data, pos, what);
  const gsize = gridBytes(version);
  if (pos + gsize > data.length) throw new GsvError(`${what}: truncated quant grid at byte ${pos}`);
  const grid = parseGrid(data.subarray(pos, pos + gsize), version);
  pos += gsize;
  for (const [name, value, hi] of [["height", height, MAX_SIDE], ["width", width, MAX_SIDE], ["n_frames", nFrames, MAX_GOP_FRAMES]]) {
    if (value < 1 || value > hi) throw new GsvError(`${what}: ${name}=${value} outside [1, ${hi}]`);
  }
  const records = [];
  for (let i = 0; i < nFrames; i++) {
    if (pos >= data.length) throw new GsvError(`${what}: frame ${i} of ${nFrames} missing at byte ${pos}`);
    const kind = data[pos];
    if (kind > 2) throw new GsvError(`${what}: frame ${i} has unknown kind ${kind} at byte ${pos}`);
    if (i === 0 && kind !== FRAME_KIND.I) throw new GsvError(`${what}: the first frame is not an I-frame (byte ${pos})`);
    let length;
    [length, pos] = readVarint(data, pos + 1, what);
    if (length > data.length - pos) {
      throw new GsvError(`${what}: frame ${i} claims ${length} bytes at byte ${pos}, only ${data.length - pos} left`);
    }
    records.push({ kind, data: data.subarray(pos, pos + length) });
    pos += length;
  }
  let enhancer = data.subarray(pos, pos);
  if (version >= 6) {
    if (pos >= data.length) throw new GsvError(`${what}: enhancer field missing at byte ${pos}`);
    let length;
    [length, pos] = readVarint(data, pos, what);
    if (length > MAX_ENHANCER_BYTES || length > data.length - pos) {
      throw new GsvError(`${what}: enhancer record claims ${length} bytes at byte ${pos}, ${data.length - pos} left`);
    }
    enhancer = data.subarray(pos, pos + length);
    pos += length;
  }
  if (pos !== data.length) throw new GsvError(`${what}: ${data.length - pos} unexpected bytes after the last record at byte ${pos}`);
  return { version, height, width, nFrames, flags, grid, records, enhancer };
}

/** float32 Gaussian parameters [n * 8] (x y l11 l21 l22 r g b) of level rows on a grid:
 * float32(lo + q * step) in float64, or the geometric table for l11 and l22. With `out`, only
 * the rows listed in `only` and rows `from .. n - 1` are computed. */
export function dequantize(rows, n, grid, out = null, from = 0, only = null) {
  if (!out) {
    out = new Float32Array(n * 8);
    from = 0;
    only = null;
  }
  const { step, lo, diag } = grid;
  const t2 = diag[2];
  const t4 = diag[4];
  const one = (i) => {
    const o = i * 8;
    out[o] = rows[o] * step[0] + lo[0];
    out[o + 1] = rows[o + 1] * step[1] + lo[1];
    out[o + 2] = t2[rows[o + 2]];
    out[o + 3] = rows[o + 3] * step[3] + lo[3];
    out[o + 4] = t4[rows[o + 4]];
    out[o + 5] = rows[o + 5] * step[5] + lo[5];
    out[o + 6] = rows[o + 6] * step[6] + lo[6];
    out[o + 7] = rows[o + 7] * step[7] + lo[7];
  };
  if (only) for (let k = 0; k < only.length; k++) one(only[k]);
  for (let i = from; i < n; i++) one(i);
  return out;
}

/** Decodes one GOP payload frame by frame: next() -> {t, kind, n, rows, params, bytes} or null. */
export class GopDecoder {
  constructor(payload) {
    const h = unpackGop(payload);
    if (h.height > MAX_SIDE_PX || h.width > MAX_SIDE_PX) {
      throw new GsvError(`GOP header claims ${h.nFrames} frames of ${h.width}x${h.height}, outside the codec's limits`);
    }
    if (h.nFrames * h.height * h.width * 3 > MAX_DECODE_BYTES) {
      throw new GsvError(`GOP would decode to ${h.nFrames * h.height * h.width * 3} bytes, over the ${MAX_DECODE_BYTES} limit`);
    }
    if (h.flags & ~KNOWN_GOP_FLAGS) {
      throw new GsvError(`GOP header flags 0x${h.flags.toString(16).padStart(2, "0")} use features this decoder does not know; a newer splatpack wrote this file`);
    }
    this.canonical = (h.flags & RENDER_CANONICAL) !== 0; // which render the GOP's pixels are
    this.version = h.version;
    this.height = h.height;
    this.width = h.width;
    this.nFrames = h.nFrames;
    this.flags = h.flags;
    this.records = h.records;
    this.grid = h.grid;
    this.t = 0;
    this.state = null;
    this.ctx = null;
    this.memory = new ModelMemory();
  }

  next() {
    if (this.t >= this.nFrames) return null;
    const { kind, data } = this.records[this.t];
    if (kind === FRAME_KIND.I) {
      this.state = decodeIntra(data, this.grid);
      this.ctx = null;
      this.memory = new ModelMemory();
    } else if (kind === FRAME_KIND.I_NEW_GRID) {
      const size = gridBytes(this.version);
      this.grid = parseGrid(data.subarray(0, size), this.version);
      this.state = decodeIntra(data.subarray(size), this.grid);
      this.ctx = null;
      this.memory = new ModelMemory();
    } else {
      const next = decodeInter(data, this.state, this.grid, this.ctx, this.memory);
      this.ctx = next.touched;
      // the previous parameters, with the changed and the added rows dequantised
      const params = new Float32Array(next.n * 8);
      params.set(this.params.subarray(0, this.state.n * 8));
      this.params = dequantize(next.rows, next.n, this.grid, params, this.state.n, next.idx);
      this.state = next;
    }
    const { n, rows } = this.state;
    if (kind !== FRAME_KIND.P) this.params = dequantize(rows, n, this.grid);
    const frame = { t: this.t, kind, n, rows, params: this.params, bytes: data.length, canonical: this.canonical };
    this.t += 1;
    return frame;
  }
}
