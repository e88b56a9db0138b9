// Range decoder bit-compatible with constriction's queue.RangeDecoder (u32 words, u64 state,
// 24-bit probabilities) and its Uniform and Categorical(perfect=False) models; docs/FORMAT.md 3.1.
//
// The u64 quantities are kept as exact doubles split in (high, low) 32-bit halves. The decoder
// needs only `diff = point - lower (mod 2^64)` and `range`: renormalisation shifts both left by
// 32 bits and ORs the next word into diff, which never wraps because diff < range < 2^32 there.

import { GsvError } from "./errors.js";

const TWO32 = 4294967296;
const PRECISION = 24;
const ONE = 1 << PRECISION; // 2^24
const MAX_HI = 0xffffffff;

/** Quantised CDF of constriction's Categorical(weights, perfect=False) (float64 weights):
 * cdf[i] = floor(cum_i * (2^24 - n) / sum) + i, cdf[n] = 2^24 (every symbol keeps mass >= 1). */
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
  return cdf;
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
    this.left = 0; // set by the model lookups
    this.prob = 0;
    this.pH = 0; // product scratch
    this.pL = 0;
  }

  _next() {
    return this.pos < this.words.length ? this.words[this.pos++] : 0;
  }

  _mul(a, b) {
    // exact a * b for a < 2^40, b <= 2^24, into (pH, pL)
    const a1 = Math.floor(a / 65536);
    const a0 = a - a1 * 65536;
    const A = a1 * b; // < 2^48
    const B = a0 * b; // < 2^40
    let H = Math.floor(A / 65536);
    let L = (A - H * 65536) * 65536 + B;
    if (L >= TWO32) {
      const c = Math.floor(L / TWO32);
      H += c;
      L -= c * TWO32;
    }
    this.pH = H;
    this.pL = L;
  }

  _invalid() {
    return new GsvError(`${this.what}: invalid range-coded data`);
  }

  /** Decode one symbol; `lookup(q)` maps a quantile to a symbol and sets this.left / this.prob. */
  _decode(lookup) {
    const scale = this.rH * 256 + Math.floor(this.rL / ONE); // range >> 24, < 2^40
    let q = Math.floor((this.dH * TWO32 + this.dL) / scale); // within 1 of the exact quotient
    if (q >= ONE) {
      // exact test of diff >= scale * 2^24
      const sH = Math.floor(scale / 256);
      const sL = (scale - sH * 256) * ONE;
      if (this.dH > sH || (this.dH === sH && this.dL >= sL)) throw this._invalid();
      q = ONE - 1;
    }
    for (let tries = 0; tries < 4; tries++) {
      const sym = lookup(q);
      const left = this.left;
      const prob = this.prob;
      this._mul(scale, left);
      let nL = this.dL - this.pL;
      let nH = this.dH - this.pH;
      if (nL < 0) {
        nL += TWO32;
        nH -= 1;
      }
      if (nH < 0) {
        q = left - 1; // the exact quantile lies below this symbol
        continue;
      }
      this._mul(scale, prob);
      if (nH > this.pH || (nH === this.pH && nL >= this.pL)) {
        q = left + prob; // ... or above it
        if (q >= ONE) throw this._invalid();
        continue;
      }
      this.dH = nH;
      this.dL = nL;
      this.rH = this.pH;
      this.rL = this.pL;
      if (this.rH === 0) {
        // range < 2^32: shift in the next word (diff < range, so dH is 0 here)
        this.rH = this.rL;
        this.rL = 0;
        this.dH = this.dL;
        this.dL = this._next();
      }
      return sym;
    }
    throw this._invalid();
  }

  /** One symbol of constriction's Uniform(size), 2 <= size <= 2^24. */
  uniform(size) {
    const ppb = Math.floor(ONE / size);
    const last = size - 1;
    return this._decode((q) => {
      let s = Math.floor(q / ppb);
      if (s >= last) {
        s = last;
        this.left = last * ppb;
        this.prob = ONE - this.left;
      } else {
        this.left = s * ppb;
        this.prob = ppb;
      }
      return s;
    });
  }

  /** n symbols of a categorical model given by its cdf (categoricalCdf), into out (or a new array). */
  categorical(n, cdf, out = new Int32Array(n)) {
    const m = cdf.length - 1;
    const lookup = (q) => {
      let lo = 0;
      let hi = m - 1; // largest i < m with cdf[i] <= q
      while (lo < hi) {
        const mid = (lo + hi + 1) >>> 1;
        if (cdf[mid] <= q) lo = mid;
        else hi = mid - 1;
      }
      this.left = cdf[lo];
      this.prob = cdf[lo + 1] - cdf[lo];
      return lo;
    };
    for (let i = 0; i < n; i++) out[i] = this._decode(lookup);
    return out;
  }

  /** constriction's maybe_exhausted(): no words left and point - lower < 2^33 - 1. */
  maybeExhausted() {
    if (this.pos < this.words.length) return false;
    if (this.rH === MAX_HI && this.rL === MAX_HI) return true;
    return this.dH === 0 || (this.dH === 1 && this.dL < MAX_HI);
  }
}
