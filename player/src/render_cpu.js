// CPU reference renderer with the math of the Python decoder: the canonical render
// (codec/render/canonical.py, GOPs with the RENDER_CANONICAL flag: bit for bit) and the legacy
// one of codec/render/torch_tiles.py (older GOPs), described here:
// float32 conic, the 3-sigma pixel box in float64, the truncated kernel exp(-m/2) for m <= 9,
// float32 sums per pixel, clamp to [0, 1], x255, round half to even. docs/FORMAT.md section 4.
//
// Summation order (legacy): per pixel, Gaussians in the order of the Python renderer's patch plan
// (by patch-size bucket, then box corner), so the float32 sums match it operation for operation;
// the only remaining difference is the last bit of exp (torch's vectorised expf vs Math.exp rounded
// to float32), which moves an 8-bit value on a rare rounding boundary.

const f = Math.fround;
const REL_MARGIN = 1 + 1e-3;
const ABS_MARGIN = 1e-2;
const CUTOFF = -4.5; // -SIGMA_CUTOFF_SQ / 2

/** The legacy kernel (GOPs without RENDER_CANONICAL, FORMAT.md section 4): weight of a Gaussian
 * at pixel offset (dx, dy) given its conic pre-scaled by -1/2 (na = -a/2, nb2 = 2 * (-b/2),
 * nc = -c/2), all float32; the platform exp; 0 beyond 3 sigma. */
export function kernelLegacy(na, nb2, nc, dx, dy) {
  let h = f(f(f(na * dx) * dx) + f(f(nb2 * dx) * dy));
  h = f(h + f(f(nc * dy) * dy));
  return h >= CUTOFF ? f(Math.exp(h)) : 0;
}

const LOG2E = f(1.44269504088896341);
const SHIFTER = 12582912; // 1.5 * 2^23: (t + S) - S rounds t to an integer (ties to even)
const LN2_HI = f(0.693145751953125);
const LN2_LO = f(1.42860682030941723e-6);
const POLY = [1 / 720, 1 / 120, 1 / 24, 1 / 6, 0.5, 1, 1].map(f);

/** det_exp of codec/render/canonical.py: exp by float32 range reduction and a degree-6
 * polynomial, every operation rounded to float32 (no libm), bit-identical to Python's. */
export function detExp(h) {
  const hc = h < -5 ? -5 : h;
  const n = f(f(f(hc * LOG2E) + SHIFTER) - SHIFTER);
  let r = f(hc - f(n * LN2_HI));
  r = f(r - f(n * LN2_LO));
  let p = POLY[0];
  for (let k = 1; k < 7; k++) p = f(f(p * r) + POLY[k]);
  return f(p * 2 ** n);
}

/** The canonical kernel (RENDER_CANONICAL GOPs): as kernelLegacy with det_exp. */
export function kernelCanonical(na, nb2, nc, dx, dy) {
  let h = f(f(f(na * dx) * dx) + f(f(nb2 * dx) * dy));
  h = f(h + f(f(nc * dy) * dy));
  return h >= CUTOFF ? detExp(h) : 0;
}

/** The kernel a GOP's flags ask for: one place to add a future format's. */
export function kernelFor(canonical) {
  return canonical ? kernelCanonical : kernelLegacy;
}

/** Per drawable Gaussian: conic (float32) and pixel box, in Python's summation order when
 * `ordered` (else in row order). Returns {count, idx, box: Int32Array [M * 4] (x0 x1 y0 y1
 * inclusive), abc: Float32Array [M * 3]}. */
export function prepare(params, n, height, width, ordered = true) {
  const idx = [];
  const boxes = [];
  const abcs = [];
  const keys = [];
  const sizesW = patchSizes(width);
  const sizesH = patchSizes(height);
  for (let i = 0; i < n; i++) {
    const o = i * 8;
    const x = params[o];
    const y = params[o + 1];
    const l11 = params[o + 2];
    const l21 = params[o + 3];
    const l22 = params[o + 4];
    const sxx = f(l11 * l11);
    const sxy = f(l11 * l21);
    const syy = f(f(l21 * l21) + f(l22 * l22));
    const det = f(f(sxx * syy) - f(sxy * sxy));
    const a = f(syy / det);
    const b = f(-sxy / det);
    const c = f(sxx / det);
    if (!(Number.isFinite(x) && Number.isFinite(y) && Number.isFinite(a) && Number.isFinite(b) && Number.isFinite(c) && det > 0)) continue;
    // box in float64: pixel j is inside when |j + 0.5 - centre| <= r
    const rx = 3 * Math.sqrt(l11 * l11) * REL_MARGIN + ABS_MARGIN;
    const ry = 3 * Math.sqrt(l21 * l21 + l22 * l22) * REL_MARGIN + ABS_MARGIN;
    const x0 = Math.min(Math.max(Math.ceil(x - rx - 0.5), 0), width);
    const x1 = Math.min(Math.max(Math.floor(x + rx - 0.5), -1), width - 1);
    const y0 = Math.min(Math.max(Math.ceil(y - ry - 0.5), 0), height);
    const y1 = Math.min(Math.max(Math.floor(y + ry - 0.5), -1), height - 1);
    if (!(x0 <= x1 && y0 <= y1)) continue;
    idx.push(i);
    boxes.push(x0, x1, y0, y1);
    abcs.push(a, b, c);
    if (!ordered) continue;
    const bw = bucketize(x1 - x0 + 1, sizesW);
    const bh = bucketize(y1 - y0 + 1, sizesH);
    keys.push((bw * sizesH.length + bh) * (height * width) + y0 * width + x0);
  }
  if (!ordered) return { count: idx.length, idx: Int32Array.from(idx), box: Int32Array.from(boxes), abc: Float32Array.from(abcs) };
  const order = keys.map((_, k) => k).sort((p, q) => keys[p] - keys[q] || p - q);
  const m = order.length;
  const out = { count: m, idx: new Int32Array(m), box: new Int32Array(m * 4), abc: new Float32Array(m * 3) };
  order.forEach((k, j) => {
    out.idx[j] = idx[k];
    out.box.set(boxes.slice(4 * k, 4 * k + 4), 4 * j);
    out.abc.set(abcs.slice(3 * k, 3 * k + 3), 3 * j);
  });
  return out;
}

function patchSizes(extent) {
  // codec/render/torch_tiles.py _patch_sizes: even sizes to 16, then 4 per octave, then extent
  const sizes = [];
  let s = 2;
  let step = 2;
  while (s < extent) {
    sizes.push(s);
    s += step;
    if (s >= 8 * step) step *= 2;
  }
  sizes.push(extent);
  return sizes;
}

function bucketize(v, sizes) {
  let i = 0;
  while (sizes[i] < v) i++;
  return i;
}

/** Float32 RGB sums [height * width * 3] of n Gaussians (params [n * 8]): the canonical render
 * (ascending Gaussian order, det_exp) or the legacy one (the Python patch plan's order, exp). */
export function accumulate(params, n, height, width, canonical = false) {
  const p = prepare(params, n, height, width, !canonical);
  const kernel = kernelFor(canonical);
  const acc = new Float32Array(height * width * 3);
  for (let j = 0; j < p.count; j++) {
    const o = p.idx[j] * 8;
    const x = params[o];
    const y = params[o + 1];
    const na = f(-0.5 * p.abc[3 * j]);
    const nb2 = f(2 * f(-0.5 * p.abc[3 * j + 1]));
    const nc = f(-0.5 * p.abc[3 * j + 2]);
    const r = params[o + 5];
    const g = params[o + 6];
    const b = params[o + 7];
    const [x0, x1, y0, y1] = p.box.subarray(4 * j, 4 * j + 4);
    for (let row = y0; row <= y1; row++) {
      const dy = f(row + 0.5 - y);
      for (let col = x0; col <= x1; col++) {
        const w = kernel(na, nb2, nc, f(col + 0.5 - x), dy);
        if (w === 0) continue;
        const at = (row * width + col) * 3;
        acc[at] += f(w * r);
        acc[at + 1] += f(w * g);
        acc[at + 2] += f(w * b);
      }
    }
  }
  return acc;
}

/** 8-bit value of a float32 sum: clamp to [0, 1], times 255 in float32, round half to even. */
export function toByte(v) {
  const x = f((v < 0 ? 0 : v > 1 ? 1 : v) * 255);
  let r = Math.round(x);
  if (r - x === 0.5 && r % 2 === 1) r -= 1;
  return r;
}

/** uint8 RGB [height * width * 3] of a frame's Gaussians. */
export function renderFrame(params, n, height, width, canonical = false) {
  const acc = accumulate(params, n, height, width, canonical);
  const out = new Uint8Array(acc.length);
  for (let i = 0; i < acc.length; i++) out[i] = toByte(acc[i]);
  return out;
}
