// Frame records (docs/FORMAT.md section 3): symbol streams, Gaussian sets, I- and P-frame bodies.
// Mirrors codec/entropy.py's decoder; rows are Int32Array [N * 8] (x y l11 l21 l22 r g b levels).

import { GsvError } from "./errors.js";
import { RangeDecoder, categoricalCdf } from "./rangecoder.js";

export const MAX_GAUSSIANS = 10000000;
const DENSITY_FREE = 256;
const DENSITY_PER_BYTE = 8;
const TOP_LEVEL = 31;
const MAX_J = 12;
const N_MODES = 18;
const MODE_LOG0 = 13;
const MODE_ZERO = 16;
const MODE_REUSE = 17;
const INDEX_MODES = 3;
const NEAR_WINDOW = 16;
const MED_WINDOW = 32;
const INTRA_ATTRS = [2, 3, 4, 6, 5, 7]; // l11 l21 l22 g r b
const CROSS_REF = { 1: 0, 4: 2, 5: 6, 7: 6 }; // dy <- dx, l22 <- l11, r <- g, b <- g

export const LEVEL_W = [
  0, 1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256, 362, 512, 724, 1024, 1448,
  2048, 2896, 4096, 5793, 8192, 11585, 16384, 23170, 32768, 46341,
];
// 32768 for s = 0, round(65536 / s^2) for s >= 1 (Python's round: half to even; no halves occur)
export const LEVEL_SYM_W = [32768];
for (let s = 1; s < 62; s++) LEVEL_SYM_W.push(Math.round(65536 / (s * s)));
const LEVEL_SYM_CDF = categoricalCdf(LEVEL_SYM_W);

/** The histogram each P-frame symbol stream last sent since the GOP's last I-frame (format 5). */
export class ModelMemory {
  constructor() {
    this.tables = new Map(); // key -> {kbits, mode, levels, cdf}
  }
  get(key, kbits) {
    const e = this.tables.get(key);
    return e && e.kbits === kbits ? e : null;
  }
  put(key, kbits, mode, levels, cdf) {
    this.tables.set(key, { kbits, mode, levels, cdf });
  }
}

function nbits(n) {
  // bit length of n - 1, 0 for n <= 1
  return n <= 1 ? 0 : 32 - Math.clz32(n - 1);
}

function unzz(u) {
  return u % 2 === 1 ? -(u + 1) / 2 : u / 2;
}

function mod(x, a) {
  const r = x % a;
  return r < 0 ? r + a : r;
}

function logClasses(kbits, m) {
  const t = 1 << (m + 1);
  return kbits <= m + 1 ? 2 ** kbits : t + (kbits - m - 1) * (1 << m);
}

/** Raw bits: values with bit counts nb[i] (0..32): low min(nb, 16) bits of all, then high bits. */
function readBits(rd, nb, n, out) {
  return rd.bits(nb, n, out);
}

function levelsFromSymbols(sym, what) {
  const lev = new Int32Array(sym.length);
  let prev = TOP_LEVEL;
  let any = false;
  for (let i = 0; i < sym.length; i++) {
    if (sym[i] > 0) {
      prev += unzz(sym[i] - 1);
      if (prev < 1 || prev > TOP_LEVEL) throw new GsvError(`${what}: invalid histogram level table`);
      lev[i] = prev;
      any = true;
    }
  }
  if (!any) throw new GsvError(`${what}: invalid histogram level table`);
  return lev;
}

/** One symbol stream S(n, kbits, P) (FORMAT.md 3.2): n values < 2^kbits as a Float64Array. */
function getStream(rd, n, kbits, cands, mem, key) {
  if (!n || !kbits) return new Float64Array(n);
  const ci = cands.length > 1 ? rd.uniform(cands.length) : 0;
  let mode = rd.uniform(rd.nModes);
  const res = new Float64Array(n);
  if (mode === MODE_ZERO) {
    // all zero
  } else if (mode === 0) {
    readBits(rd, new Int32Array(n).fill(kbits), n, res);
  } else {
    let cdf;
    if (mode === MODE_REUSE) {
      const prior = mem ? mem.get(key, kbits) : null;
      if (!prior) throw new GsvError(`${rd.what}: a stream reuses a model it never sent`);
      mode = prior.mode;
      cdf = prior.cdf;
    } else {
      if (mode < MODE_LOG0 && mode > Math.min(kbits, MAX_J)) {
        throw new GsvError(`${rd.what}: histogram with 2**${mode} bins for ${kbits}-bit values`);
      }
      const nCls = mode < MODE_LOG0 ? 1 << mode : logClasses(kbits, mode - MODE_LOG0);
      const lev = levelsFromSymbols(rd.categorical(nCls, LEVEL_SYM_CDF), rd.what);
      cdf = categoricalCdf(Array.from(lev, (l) => LEVEL_W[l]));
      if (mem) mem.put(key, kbits, mode, lev, cdf);
    }
    const cls = rd.categorical(n, cdf);
    const nex = new Int32Array(n);
    if (mode < MODE_LOG0) {
      nex.fill(kbits - mode);
      readBits(rd, nex, n, res);
      const mul = 2 ** (kbits - mode);
      for (let i = 0; i < n; i++) res[i] += cls[i] * mul;
    } else {
      const m = mode - MODE_LOG0;
      const t = 1 << (m + 1);
      for (let i = 0; i < n; i++) nex[i] = cls[i] >= t ? ((cls[i] - t) >> m) + 1 : 0;
      readBits(rd, nex, n, res);
      for (let i = 0; i < n; i++) {
        const c = cls[i];
        if (c >= t) {
          const k = c - t;
          res[i] += ((1 << m) + (k & ((1 << m) - 1))) * 2 ** nex[i];
        } else {
          res[i] = c;
        }
      }
    }
  }
  return inverse(res, cands[ci], kbits);
}

/** Residuals to values by predictor c (FORMAT.md 3.2 step 4). */
function inverse(r, c, kbits) {
  const n = r.length;
  const a = 2 ** kbits;
  if (c.kind === "id") return r;
  const out = new Float64Array(n);
  if (c.kind === "zz") {
    for (let i = 0; i < n; i++) out[i] = mod(unzz(r[i]), a);
    return out;
  }
  if (c.kind === "med") {
    const half = a / 2;
    const s = new Float64Array(n); // signed values
    const src3 = c.near3(); // computed only when a stream picks this predictor
    for (let i = 0; i < n; i++) {
      const j0 = src3[3 * i];
      const j2 = src3[3 * i + 2];
      let pred = 0;
      if (j2 >= 0) {
        const x = s[j0];
        const y = s[src3[3 * i + 1]];
        const z = s[j2];
        pred = Math.max(Math.min(x, y), Math.min(Math.max(x, y), z));
      } else if (j0 >= 0) {
        pred = s[j0];
      }
      s[i] = mod(pred + unzz(r[i]) + half, a) - half;
      out[i] = mod(s[i], a);
    }
    return out;
  }
  const nb = c.kind === "nb" || c.kind === "nbcross";
  const ref = c.kind === "cross" || c.kind === "nbcross" ? c.ref : null;
  for (let i = 0; i < n; i++) {
    let u = unzz(r[i]);
    if (nb) {
      const j = c.src[i];
      if (j >= 0) u += out[j]; // out[j] holds the running sum mod a so far (before ref)
      u = mod(u, a);
    }
    out[i] = u;
  }
  for (let i = 0; i < n; i++) out[i] = mod(ref ? out[i] + ref[i] : out[i], a);
  return out;
}

function nearSrc(xs, ys, n) {
  // for each row the nearest (squared distance; latest on ties) of the 16 rows before it
  const best = new Int32Array(n).fill(-1);
  for (let i = 1; i < n; i++) {
    let bd = Infinity;
    for (let k = 1; k <= NEAR_WINDOW && k <= i; k++) {
      const j = i - k;
      const dx = xs[i] - xs[j];
      const dy = ys[i] - ys[j];
      const d = dx * dx + dy * dy;
      if (d < bd) {
        bd = d;
        best[i] = j;
      }
    }
  }
  return best;
}

function near3Src(xs, ys, n) {
  // per row the three nearest of the 32 rows before it, nearest first, later rows first on ties
  const best = new Int32Array(3 * n).fill(-1);
  for (let i = 1; i < n; i++) {
    let d0 = Infinity;
    let d1 = Infinity;
    let d2 = Infinity;
    let j0 = -1;
    let j1 = -1;
    let j2 = -1;
    const xi = xs[i];
    const yi = ys[i];
    const stop = i > MED_WINDOW ? i - MED_WINDOW : 0;
    for (let j = i - 1; j >= stop; j--) {
      const dx = xi - xs[j];
      const dy = yi - ys[j];
      const d = dx * dx + dy * dy;
      if (d >= d2) continue; // an equal distance keeps the later (already kept) rows
      if (d < d0) {
        d2 = d1; j2 = j1; d1 = d0; j1 = j0; d0 = d; j0 = j;
      } else if (d < d1) {
        d2 = d1; j2 = j1; d1 = d; j1 = j;
      } else {
        d2 = d; j2 = j;
      }
    }
    best[3 * i] = j0;
    best[3 * i + 1] = j1;
    best[3 * i + 2] = j2;
  }
  return best;
}

function candidates(base, src, done, c, near3) {
  const out = [{ kind: base }, { kind: "nb", src }];
  const ref = CROSS_REF[c];
  if (ref !== undefined && done.has(ref)) {
    out.push({ kind: "cross", ref: done.get(ref) }, { kind: "nbcross", ref: done.get(ref), src });
  }
  if (near3 && (c === 0 || c === 1)) out.push({ kind: "med", near3 });
  return out;
}

function compact16(v) {
  v &= 0x55555555;
  v = (v | (v >>> 1)) & 0x33333333;
  v = (v | (v >>> 2)) & 0x0f0f0f0f;
  v = (v | (v >>> 4)) & 0x00ff00ff;
  return (v | (v >>> 8)) & 0x0000ffff;
}

/** SET(n) (FORMAT.md 3.3) into rows[base * 8 ...]; levels shifted back up to the fine grid. */
function getSet(rd, n, grid, mem, rows, base) {
  const bits = grid.intraBits;
  const b2 = 2 * bits[0];
  const gaps = getStream(rd, n, b2, [{ kind: "id" }], mem, "set.morton");
  const top = 2 ** b2;
  const xs = new Int32Array(n);
  const ys = new Int32Array(n);
  let m = 0;
  for (let i = 0; i < n; i++) {
    m += gaps[i];
    if (m >= top) throw new GsvError(`${rd.what}: Morton codes run past the position grid`);
    xs[i] = compact16(m >>> 0);
    ys[i] = compact16(Math.floor(m / 2) >>> 0);
  }
  const src = nearSrc(xs, ys, n);
  const done = new Map();
  const xsh = grid.shifts[0];
  const ash = grid.shifts[2];
  for (let i = 0; i < n; i++) {
    rows[(base + i) * 8] = xs[i] << xsh;
    rows[(base + i) * 8 + 1] = ys[i] << xsh;
  }
  for (const c of INTRA_ATTRS) {
    const v = getStream(rd, n, bits[c], candidates("id", src, done, c, null), mem, `set.${c}`);
    done.set(c, v);
    for (let i = 0; i < n; i++) rows[(base + i) * 8 + c] = v[i] * (1 << ash);
  }
}

/** A range decoder with the stream syntax of the grid's GOP format (FORMAT.md section 6): model
 * modes (17 before format 5: no reuse), the med predictor (format 3 on), index modes (3 from 3). */
function reader(body, what, grid) {
  const rd = new RangeDecoder(body, what);
  const fmt = grid.fmt;
  rd.nModes = fmt >= 5 ? N_MODES : MODE_REUSE;
  rd.med = fmt >= 3;
  rd.indexModes = fmt >= 3 ? INDEX_MODES : 2;
  return rd;
}

function checkDensity(n, bodyLen, what, label) {
  if (n > MAX_GAUSSIANS) throw new GsvError(`${what}: ${label}=${n} exceeds the limit of ${MAX_GAUSSIANS}`);
  if (n > DENSITY_FREE + DENSITY_PER_BYTE * bodyLen) {
    throw new GsvError(`${what}: ${label}=${n} is impossible in a ${bodyLen}-byte body`);
  }
}

/** Canonical LEB128 varint (at most 5 bytes) at pos: [value, next pos]. */
export function readVarint(data, pos, what) {
  let value = 0;
  for (let i = 0; i < 5; i++) {
    if (pos + i >= data.length) throw new GsvError(`${what}: truncated varint at byte ${pos}`);
    const byte = data[pos + i];
    value += (byte & 0x7f) * 2 ** (7 * i);
    if (!(byte & 0x80)) {
      if (byte === 0 && i > 0) throw new GsvError(`${what}: non-canonical varint at byte ${pos}`);
      return [value, pos + i + 1];
    }
  }
  throw new GsvError(`${what}: varint longer than 5 bytes at byte ${pos}`);
}

function finish(rd) {
  if (!rd.maybeExhausted()) throw new GsvError(`${rd.what}: the body has data left over after the last symbol`);
}

/** An I-frame record -> {n, rows}. */
export function decodeIntra(data, grid) {
  const what = "I-frame";
  const [n, pos] = readVarint(data, 0, what);
  const body = data.subarray(pos);
  checkDensity(n, body.length, what, "N");
  const rows = new Int32Array(n * 8);
  if (!n) {
    if (body.length) throw new GsvError(`${what}: ${body.length} bytes after an empty frame`);
    return { n, rows };
  }
  const rd = reader(body, what, grid);
  getSet(rd, n, grid, null, rows, 0);
  finish(rd);
  return { n, rows };
}

function ctxGroups(ctx, n) {
  // rows the previous frame did not touch, then those it did, each ascending (Int32Array)
  let nTouched = 0;
  if (ctx) for (let i = 0; i < n; i++) nTouched += ctx[i];
  const untouched = new Int32Array(n - nTouched);
  const touched = new Int32Array(nTouched);
  for (let i = 0, a = 0, b = 0; i < n; i++) {
    if (ctx && ctx[i]) touched[b++] = i;
    else untouched[a++] = i;
  }
  return [untouched, touched];
}

/** A P-frame record applied to prev ({n, rows}); ctx (Uint8Array [prev.n] or null) and the
 * ModelMemory as in codec/entropy.py's decode_inter -> {n, rows}. */
export function decodeInter(data, prev, grid, ctx, mem) {
  const what = "P-frame";
  let [k, pos] = readVarint(data, 0, what);
  let m;
  [m, pos] = readVarint(data, pos, what);
  const body = data.subarray(pos);
  const nPrev = prev.n;
  if (k > nPrev) throw new GsvError(`${what}: ${k} changed rows but the previous frame has ${nPrev}`);
  checkDensity(m, body.length, what, "M");
  if (nPrev + m > MAX_GAUSSIANS) throw new GsvError(`${what}: ${nPrev + m} Gaussians exceed the limit of ${MAX_GAUSSIANS}`);
  const n = nPrev + m;
  const rows = new Int32Array(n * 8);
  rows.set(prev.rows);
  const touched = new Uint8Array(n); // rows this frame changed (a non-zero difference) or added
  touched.fill(1, nPrev);
  if (!k && !m) {
    if (body.length) throw new GsvError(`${what}: ${body.length} bytes after an empty update`);
    return { n, rows, touched, idx: new Float64Array(0) };
  }
  let idx = new Float64Array(0);
  const rd = reader(body, what, grid);
  if (k) {
    const kb = nbits(nPrev);
    const kk = nbits(k);
    const mode = rd.uniform(rd.indexModes);
    if (mode === 2) {
      const mark = new Uint8Array(nPrev);
      let total = 0;
      for (const group of ctxGroups(ctx, nPrev)) {
        const ng = group.length;
        if (!ng) continue;
        const kg = rd.uniform(ng + 1);
        if (kg === ng) for (let i = 0; i < ng; i++) mark[group[i]] = 1;
        else if (kg) {
          const flags = rd.categorical(ng, categoricalCdf([ng - kg, kg]));
          let sum = 0;
          for (let i = 0; i < ng; i++) {
            sum += flags[i];
            mark[group[i]] = flags[i];
          }
          if (sum !== kg) throw new GsvError(`${what}: a context group says ${kg} rows change, its bitmap ${sum}`);
        }
        total += kg;
      }
      if (total !== k) throw new GsvError(`${what}: the context bitmap has ${total} changed rows, the header ${k}`);
      idx = new Float64Array(k);
      for (let i = 0, j = 0; i < nPrev; i++) if (mark[i]) idx[j++] = i;
    } else if (mode === 1) {
      const nRuns = readBits(rd, [kk], 1, new Float64Array(1))[0] + 1;
      if (nRuns > k) throw new GsvError(`${what}: ${nRuns} runs of changed rows but only ${k} rows`);
      const z = getStream(rd, nRuns, kb, [{ kind: "id" }], mem, "runs.z");
      const ones = getStream(rd, nRuns, kk, [{ kind: "id" }], mem, "runs.o");
      let total = 0;
      for (let r = 0; r < nRuns; r++) total += ones[r] + 1;
      if (total !== k) throw new GsvError(`${what}: run lengths do not add up to ${k} changed rows`);
      idx = new Float64Array(k);
      let start = 0;
      let p = 0;
      for (let r = 0; r < nRuns; r++) {
        start += z[r] + (r > 0 ? 1 : 0);
        for (let q = 0; q <= ones[r]; q++, p++) idx[p] = start + p;
      }
    } else {
      const gaps = getStream(rd, k, kb, [{ kind: "id" }], mem, "gaps");
      idx = new Float64Array(k);
      let at = -1;
      for (let i = 0; i < k; i++) idx[i] = at += gaps[i] + 1;
    }
    if (idx[k - 1] >= nPrev) throw new GsvError(`${what}: changed row ${idx[k - 1]} is beyond the ${nPrev} rows`);
    const src = new Int32Array(k);
    for (let i = 0; i < k; i++) src[i] = i - 1;
    const xs = new Int32Array(k);
    const ys = new Int32Array(k);
    for (let i = 0; i < k; i++) {
      xs[i] = prev.rows[idx[i] * 8];
      ys[i] = prev.rows[idx[i] * 8 + 1];
    }
    let near3Memo = null;
    const near3 = () => (near3Memo ||= near3Src(xs, ys, k));
    const done = new Map();
    for (const c of [0, 1, ...INTRA_ATTRS]) {
      const kbits = grid.bits[c];
      const d = getStream(rd, k, kbits, candidates("zz", src, done, c, rd.med ? near3 : null), mem, `d.${c}`);
      done.set(c, d);
      const size = 2 ** kbits;
      for (let i = 0; i < k; i++) {
        const at = idx[i] * 8 + c;
        rows[at] = (rows[at] + d[i]) % size;
        if (d[i] !== 0) touched[idx[i]] = 1;
      }
    }
  }
  if (m) getSet(rd, m, grid, mem, rows, nPrev);
  finish(rd);
  return { n, rows, touched, idx };
}
