// The JS decoder against the Python-written conformance fixtures (tests/player/fixtures.py):
// exact Gaussian parameters, frames within 45 dB (in practice identical), and damaged files.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { GsvFile, checkChunk } from "../src/container.js";
import { crc32 } from "../src/crc32.js";
import { GsvError } from "../src/errors.js";
import { GopDecoder } from "../src/gop.js";
import { renderFrame } from "../src/render_cpu.js";

const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "tests", "player", "fixtures");
// legacy render (GOP flags 0) and canonical render (RENDER_CANONICAL) fixtures, and one file of
// every earlier GOP format (gop_v1 .. gop_v6, from tests/fixtures/gsv/)
const NAMES = ["synthetic", "synthetic_canonical", "encoded", "encoded_canonical", "gop_v1", "gop_v2", "gop_v3", "gop_v4", "gop_v5", "gop_v6"];

function load(name) {
  const read = (ext) => new Uint8Array(readFileSync(join(FIXTURES, `${name}${ext}`)));
  return { gsv: read(".gsv"), params: read(".params.bin"), frames: read(".frames.bin"), facts: JSON.parse(readFileSync(join(FIXTURES, `${name}.json`), "utf8")) };
}

function decodeAll(bytes) {
  const file = new GsvFile(bytes);
  const frames = [];
  for (let g = 0; g < file.gops.length; g++) {
    const dec = new GopDecoder(file.readGop(g));
    for (let f = dec.next(); f; f = dec.next()) frames.push(f);
  }
  return { file, frames };
}

export function psnr(a, b) {
  let se = 0;
  for (let i = 0; i < a.length; i++) se += (a[i] - b[i]) ** 2;
  return se === 0 ? Infinity : 10 * Math.log10((255 * 255 * a.length) / se);
}

for (const name of NAMES) {
  test(`${name}: the parameters are exactly the Python decoder's`, () => {
    const fx = load(name);
    const { file, frames } = decodeAll(fx.gsv);
    assert.equal(file.nFrames, fx.facts.n_frames);
    assert.equal(frames.length, fx.facts.n_frames);
    const dv = new DataView(fx.params.buffer);
    let at = 0;
    for (const fr of frames) {
      const n = dv.getUint32(at, true);
      assert.equal(fr.n, n, `frame ${fr.t}: Gaussian count`);
      const want = new Uint8Array(fx.params.buffer, at + 4, n * 32);
      const got = new Uint8Array(fr.params.buffer, fr.params.byteOffset, n * 32);
      assert.ok(Buffer.from(got).equals(Buffer.from(want)), `frame ${fr.t}: parameters differ`);
      at += 4 + n * 32;
    }
    assert.equal(at, fx.params.length);
  });

  test(`${name}: the CPU renderer reproduces the Python frames`, () => {
    const fx = load(name);
    const { file, frames } = decodeAll(fx.gsv);
    const { width: w, height: h } = file.header;
    const size = w * h * 3;
    let differing = 0;
    frames.forEach((fr, t) => {
      const img = renderFrame(fr.params, fr.n, h, w, fr.canonical);
      const want = fx.frames.subarray(t * size, (t + 1) * size);
      const p = psnr(img, want);
      assert.ok(p >= 45, `frame ${t}: ${p.toFixed(2)} dB`);
      for (let i = 0; i < size; i++) if (img[i] !== want[i]) differing++;
    });
    if (fx.facts.render.includes("canonical")) {
      // the canonical render is defined to the bit: det_exp, float32, ascending Gaussian order
      assert.equal(differing, 0, `${differing} samples differ from the canonical render`);
    } else {
      // same float32 operations in the same order: only exp's last bit may differ
      assert.ok(differing <= frames.length * size * 1e-3, `${differing} differing samples`);
    }
  });
}

test("the fixtures cover every stream mode, predictor, index mode, frame kind and render", () => {
  assert.deepEqual(load("synthetic").facts.render, ["legacy"]);
  assert.deepEqual(load("encoded").facts.render, ["legacy"]);
  assert.deepEqual(load("synthetic_canonical").facts.render, ["canonical"]);
  assert.deepEqual(load("encoded_canonical").facts.render, ["canonical"]);
  const facts = load("synthetic_canonical").facts;
  assert.deepEqual(facts.modes, Array.from({ length: 18 }, (_, i) => i));
  assert.deepEqual(facts.predictors, ["cross", "id", "med", "nb", "nbcross", "zz"]);
  assert.deepEqual(facts.index_modes, ["context", "gaps", "runs"]);
  assert.deepEqual(facts.frame_kinds, ["I", "I-empty", "I-new-grid", "P", "P-skip"]);
  assert.ok(facts.width % 2 === 1 && facts.height % 2 === 1, "odd frame size");
});

function decodesOrGsvError(bytes) {
  try {
    decodeAll(bytes);
    return "ok";
  } catch (e) {
    if (!(e instanceof GsvError)) throw e;
    assert.ok(e.message.length > 10);
    return "error";
  }
}

test("every truncation of a file is a clear GsvError", () => {
  const { gsv } = load("synthetic");
  for (let len = 0; len < gsv.length; len += len < 200 ? 1 : 37) {
    assert.throws(() => decodeAll(gsv.subarray(0, len)), GsvError, `truncated to ${len} bytes`);
  }
});

test("flipped bytes anywhere give a GsvError (CRCs), never a hang or another exception", () => {
  const { gsv } = load("synthetic");
  let seed = 12345;
  const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  for (let k = 0; k < 300; k++) {
    const bad = gsv.slice();
    const at = Math.floor(rand() * bad.length);
    bad[at] ^= 1 + Math.floor(rand() * 255);
    assert.equal(decodesOrGsvError(bad), "error", `byte ${at}`);
  }
});

test("damaged GOP payloads with a valid CRC decode or fail cleanly, and fast", () => {
  for (const name of NAMES) {
    const { gsv } = load(name);
    const file = new GsvFile(gsv);
    let seed = 99;
    const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
    let errors = 0;
    const trials = 400;
    for (let k = 0; k < trials; k++) {
      const e = file.gops[Math.floor(rand() * file.gops.length)];
      const payload = file.readGop(e.index).slice();
      const cut = rand() < 0.3 ? Math.floor(rand() * payload.length) : payload.length;
      const bad = payload.subarray(0, cut);
      if (cut === payload.length) bad[Math.floor(rand() * bad.length)] ^= 1 + Math.floor(rand() * 255);
      const entry = { ...e, length: bad.length, crc: crc32(bad) };
      const chunk = new Uint8Array(28 + bad.length);
      chunk.set(gsv.subarray(e.offset, e.offset + 28));
      const dv = new DataView(chunk.buffer);
      dv.setUint32(16, bad.length, true);
      dv.setUint32(24, entry.crc, true);
      chunk.set(bad, 28);
      const started = Date.now();
      try {
        const dec = new GopDecoder(checkChunk(chunk, entry));
        while (dec.next());
      } catch (err) {
        if (!(err instanceof GsvError)) throw err;
        errors++;
      }
      assert.ok(Date.now() - started < 2000, "a damaged GOP must not take long");
    }
    assert.ok(errors > trials / 4, `${name}: only ${errors} of ${trials} damaged GOPs were refused`);
  }
});

test("a GOP with header flags this decoder does not know is refused", () => {
  const payload = new GsvFile(load("encoded_canonical").gsv).readGop(0).slice();
  payload[5] |= 0x02; // GOP flags byte
  assert.throws(() => new GopDecoder(payload), /flags 0x03 use features this decoder does not know/);
});

test("a format-6 or -7 GOP (enhancer field) plays as its Gaussian frames; a bad field is refused", () => {
  const v5 = new GsvFile(load("gop_v5").gsv).readGop(0).slice();
  const frames = (payload) => {
    const dec = new GopDecoder(payload);
    const out = [];
    for (let f = dec.next(); f; f = dec.next()) out.push(f.params);
    return out;
  };
  const want = frames(v5);
  for (const version of [6, 7]) {
    const v6 = (tail) => {
      const p = new Uint8Array(v5.length + tail.length);
      p.set(v5);
      p.set(tail, v5.length);
      p[4] = version;
      return p;
    };
    assert.deepEqual(frames(v6([0])), want); // no enhancer record
    assert.deepEqual(frames(v6([4, 0x12, 0x34, 0x80, 0x00])), want); // a 4-byte record, skipped
    // format 7: a filter-only record (flag bits 3-4) is skipped the same way
    assert.deepEqual(frames(v6([8, 0, 0, 0, 0x18, 0x0a, 0x10, 0x01, 0x00])), want);
    assert.throws(() => new GopDecoder(v6([])), /enhancer field missing/);
    assert.throws(() => new GopDecoder(v6([5, 1, 2])), /enhancer record claims 5 bytes/);
    assert.throws(() => new GopDecoder(v6([0, 9])), /unexpected bytes/);
  }
});

test("a file that is not a .gsv says so", () => {
  const junk = new TextEncoder().encode("RIFF....AVI LIST".repeat(8));
  assert.throws(() => new GsvFile(junk), /not a .gsv file/);
  assert.throws(() => new GsvFile(new Uint8Array(10)), /too short/);
});
