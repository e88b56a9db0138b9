// Range decoder bit-compatible with constriction's queue.RangeDecoder (u32 words, u64 state,
// 24-bit probabilities) and its Uniform and Categorical(perfect=False) models; docs/FORMAT.md 3.1.
//
// The decoder keeps only `diff = point - lower (mod 2^64)` and `range`, each as exact doubles in
// (high, low) 32-bit halves. The quantile diff / scale is estimated in floating point and the
// symbol confirmed with the exact test 0 <= diff - scale*left < scale*prob (a wrong estimate
// moves by one symbol). Renormalisation shifts both left by 32 bits and ORs the next word into
// diff, which never wraps because diff < range < 2^32 there.

import { GsvError } from "./errors.js";

const TWO32 = 4294967296;
const ONE = 16777216; // 2^24, the probability precision
const MAX_HI = 0xffffffff;
const LUT_SHIFT = 12; // categorical lookup table: one entry per 2^12 quantiles (4096 entries)

/** Quantised model of constriction's Categorical(weights, perfect=False) (float64 weights):
 * cdf[i] = floor(cum_i * (2^24 - n) / sum) + i, cdf[n] = 2^24 (every symbol keeps mass >= 1).
 * Returns {n, cdf: Float64Array [n + 1], lut} (lut: first symbol of each quantile bucket). */
export function categoricalCdf(weights) {
  const n = weights.length;
  if (n < 2 || n >= ONE - 1) throw new GsvError(`categorical model with ${n} symbols`);
  let norm = 0;
  for (let i = 0; i < n; i++) {
    if (!(weights[i] >= 0)) throw new GsvError("categorical model with a negative weight");
    norm += weights[i];
  }
  if (!(norm >= 2.2250738585072014e-308) || norm === Infinity) {
    throw new GsvError("categorical model weights do not normalise");
  }
  const scale = (ONE - n) / norm;
  const cdf = new Float64Array(n + 1);
  let cum = 0;
  for (let i = 0; i < n; i++) {
    cdf[i] = Math.floor(cum * scale) + i;
    cum += weights[i];
  }
  cdf[n] = ONE;
  let lut = null;
  if (n > 8) {
    lut = new Int32Array((ONE >>> LUT_SHIFT) + 1);
    let s = 0;
    for (let b = 0; b < lut.length; b++) {
      const q = b << LUT_SHIFT;
      while (s < n - 1 && cdf[s + 1] <= q) s++;
      lut[b] = s;
    }
  }
  return { n, cdf, lut };
}

export class RangeDecoder {
  /** body: Uint8Array of little-endian u32 words (trailing zero bytes may be missing). */
  constructor(body, what) {
    this.what = what;
    let end = body.length;
    while (end > 0 && body[end - 1] === 0) end--;
    const n = (end + 3) >>> 2;
    const words = new Uint32Array(n);
    for (let i = 0, j = 0; i < n; i++, j += 4) {
      words[i] =
        ((j < end ? body[j] : 0) |
          ((j + 1 < end ? body[j + 1] : 0) << 8) |
          ((j + 2 < end ? body[j + 2] : 0) << 16) |
          ((j + 3 < end ? body[j + 3] : 0) << 24)) >>>
        0;
    }
    this.words = words;
    this.pos = 0;
    // point: the first two words (missing ones read as 0); lower = 0, range = 2^64 - 1
    this.dH = this._next();
    this.dL = this._next();
    this.rH = MAX_HI;
    this.rL = MAX_HI;
    this.scale = 0;
  }

  _next() {
    return this.pos < this.words.length ? this.words[this.pos++] : 0;
  }

  _invalid() {
    return new GsvError(`${this.what}: invalid range-coded data`);
  }

  /** Estimated quantile (diff / scale, exact except possibly one off); sets this.scale. */
  _quantile() {
    const scale = this.rH * 256 + (this.rL >>> 24); // range >> 24, < 2^40
    this.scale = scale;
    const q = Math.floor((this.dH * TWO32 + this.dL) / scale);
    if (q < ONE) return q;
    // exact test of diff >= scale * 2^24
    const sH = Math.floor(scale / 256);
    const sL = (scale - sH * 256) * ONE;
    if (this.dH > sH || (this.dH === sH && this.dL >= sL)) throw this._invalid();
    return ONE - 1;
  }

  /** Take the symbol [left, left + prob) if it holds the exact quantile: 0; else -1 (the
   * quantile is below left) or 1 (at or above left + prob) and nothing changes. */
  _commit(left, prob) {
    const scale = this.scale;
    const a1 = Math.floor(scale / 65536);
    const a0 = scale - a1 * 65536;
    // diff - scale * left
    let A = a1 * left;
    let H = Math.floor(A / 65536);
    let L = (A - H * 65536) * 65536 + a0 * left;
    let c = Math.floor(L / TWO32);
    H += c;
    L -= c * TWO32;
    let nL = this.dL - L;
    let nH = this.dH - H;
    if (nL < 0) {
      nL += TWO32;
      nH -= 1;
    }
    if (nH < 0) return -1;
    // new range = scale * prob
    A = a1 * prob;
    H = Math.floor(A / 65536);
    L = (A - H * 65536) * 65536 + a0 * prob;
    c = Math.floor(L / TWO32);
    H += c;
    L -= c * TWO32;
    if (nH > H || (nH === H && nL >= L)) return 1;
    if (H === 0) {
      // range < 2^32: shift in the next word (diff < range, so nH is 0 here)
      this.rH = L;
      this.rL = 0;
      this.dH = nL;
      this.dL = this.pos < this.words.length ? this.words[this.pos++] : 0;
    } else {
      this.rH = H;
      this.rL = L;
      this.dH = nH;
      this.dL = nL;
    }
    return 0;
  }

  /** One symbol of constriction's Uniform(size), 2 <= size <= 2^24. */
  uniform(size) {
    const ppb = Math.floor(ONE / size);
    const last = size - 1;
    let q = this._quantile();
    for (let tries = 0; tries < 4; tries++) {
      let s = Math.floor(q / ppb);
      if (s > last) s = last;
      const left = s * ppb;
      const prob = s === last ? ONE - left : ppb;
      const r = this._commit(left, prob);
      if (r === 0) return s;
      q = r < 0 ? left - 1 : left + prob;
      if (q >= ONE) throw this._invalid();
    }
    throw this._invalid();
  }

  /** n symbols of a categorical model (categoricalCdf), into out (or a new Int32Array).
   * The hot loop of the decoder: _quantile and _commit inlined, state in locals. */
  categorical(n, model, out = new Int32Array(n)) {
    const { cdf, lut } = model;
    const last = model.n - 1;
    const words = this.words;
    const nWords = words.length;
    let { dH, dL, rH, rL, pos } = this;
    for (let i = 0; i < n; i++) {
      const scale = rH * 256 + (rL >>> 24); // range >> 24
      let q = Math.floor((dH * TWO32 + dL) / scale);
      if (q >= ONE) {
        const sH = Math.floor(scale / 256);
        const sL = (scale - sH * 256) * ONE;
        if (dH > sH || (dH === sH && dL >= sL)) throw this._invalid();
        q = ONE - 1;
      }
      const a1 = Math.floor(scale / 65536);
      const a0 = scale - a1 * 65536;
      for (let tries = 0; ; tries++) {
        if (tries > 3) throw this._invalid();
        let s = lut ? lut[q >>> LUT_SHIFT] : 0;
        while (s < last && cdf[s + 1] <= q) s++;
        const left = cdf[s];
        const prob = cdf[s + 1] - left;
        // diff - scale * left, exactly
        let A = a1 * left;
        let H = Math.floor(A / 65536);
        let L = (A - H * 65536) * 65536 + a0 * left;
        let c = Math.floor(L / TWO32);
        H += c;
        L -= c * TWO32;
        let nL = dL - L;
        let nH = dH - H;
        if (nL < 0) {
          nL += TWO32;
          nH -= 1;
        }
        if (nH < 0) {
          q = left - 1;
          continue;
        }
        // scale * prob, the new range
        A = a1 * prob;
        H = Math.floor(A / 65536);
        L = (A - H * 65536) * 65536 + a0 * prob;
        c = Math.floor(L / TWO32);
        H += c;
        L -= c * TWO32;
        if (nH > H || (nH === H && nL >= L)) {
          q = left + prob;
          if (q >= ONE) throw this._invalid();
          continue;
        }
        if (H === 0) {
          rH = L;
          rL = 0;
          dH = nL;
          dL = pos < nWords ? words[pos++] : 0;
        } else {
          rH = H;
          rL = L;
          dH = nH;
          dL = nL;
        }
        out[i] = s;
        break;
      }
    }
    this.dH = dH;
    this.dL = dL;
    this.rH = rH;
    this.rL = rL;
    this.pos = pos;
    return out;
  }

  /** BITS(nb) (FORMAT.md 3.1): values with bit counts nb[i] (0..32) into out (Float64Array):
   * the low min(nb, 16) bits of every value as U(2^bits), then the high bits of the wider ones. */
  bits(nb, n, out) {
    for (let i = 0; i < n; i++) out[i] = nb[i] >= 1 ? this._pow2(nb[i] > 16 ? 16 : nb[i]) : 0;
    for (let i = 0; i < n; i++) if (nb[i] > 16) out[i] += this._pow2(nb[i] - 16) * 65536;
    return out;
  }

  /** One symbol of U(2^b), 1 <= b <= 16, inlined (the extra bits of every histogram stream). */
  _pow2(b) {
    const ppb = ONE / 2 ** b; // exact: 2^(24 - b)
    const last = 2 ** b - 1;
    const scale = this.rH * 256 + (this.rL >>> 24);
    let q = Math.floor((this.dH * TWO32 + this.dL) / scale);
    if (q >= ONE) {
      const sH = Math.floor(scale / 256);
      const sL = (scale - sH * 256) * ONE;
      if (this.dH > sH || (this.dH === sH && this.dL >= sL)) throw this._invalid();
      q = ONE - 1;
    }
    this.scale = scale;
    for (let tries = 0; tries < 4; tries++) {
      let s = Math.floor(q / ppb);
      if (s > last) s = last;
      const left = s * ppb;
      const r = this._commit(left, ppb); // all bins equal: 2^24 is a multiple of 2^b
      if (r === 0) return s;
      q = r < 0 ? left - 1 : left + ppb;
      if (q >= ONE) throw this._invalid();
    }
    throw this._invalid();
  }

  /** constriction's maybe_exhausted(): no words left and point - lower < 2^33 - 1. */
  maybeExhausted() {
    if (this.pos < this.words.length) return false;
    if (this.rH === MAX_HI && this.rL === MAX_HI) return true;
    return this.dH === 0 || (this.dH === 1 && this.dL < MAX_HI);
  }
}
