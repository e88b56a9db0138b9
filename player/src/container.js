// The .gsv container (docs/FORMAT.md section 1): header, footer and index parsing with the checks
// of codec/container.py's ContainerReader, as pure functions on byte slices so that the browser
// can fetch only the parts it needs (HTTP range requests) and Node can read a whole file.

import { crc32 } from "./crc32.js";
import { GsvError } from "./errors.js";

export const MAGIC = [0x89, 0x47, 0x53, 0x56, 0x0d, 0x0a, 0x1a, 0x0a];
export const VERSION = 1;
export const PREFIX_BYTES = 14; // magic, u16 version, u32 header length
export const FOOTER_BYTES = 32;
export const CHUNK_BYTES = 28;
export const ENTRY_BYTES = 32;
export const MIN_SIZE = 62;
const MAX_HEADER_BYTES = 1 << 20;
const MAX_SIDE = 65535;
const MAX_GOP = 10000;
const MAX_FPS_TERM = 2 ** 31 - 1;
const MAX_GOPS = 10000000;
const TWO32 = 4294967296;

function view(b) {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function u64(dv, at, what) {
  const lo = dv.getUint32(at, true);
  const hi = dv.getUint32(at + 4, true);
  if (hi >= 1 << 21) throw new GsvError(`container: ${what} ${hi * TWO32 + lo} is absurd`);
  return hi * TWO32 + lo;
}

function ascii(b) {
  return Array.from(b, (c) => (c >= 32 && c < 127 ? String.fromCharCode(c) : `\\x${c.toString(16).padStart(2, "0")}`)).join("");
}

/** Length L of the JSON header from the first 14 bytes of a file of `size` bytes. */
export function parsePrefix(prefix, size) {
  if (size < MIN_SIZE) {
    throw new GsvError(`container: ${size} bytes is too short for a .gsv file (at least ${MIN_SIZE})`);
  }
  for (let i = 0; i < 8; i++) {
    if (prefix[i] !== MAGIC[i]) {
      throw new GsvError(`container: not a .gsv file (bad magic '${ascii(prefix.subarray(0, 8))}' at byte 0)`);
    }
  }
  const dv = view(prefix);
  const version = dv.getUint16(8, true);
  if (version !== VERSION) {
    throw new GsvError(`container: unsupported version ${version} at byte 8 (this reader reads ${VERSION})`);
  }
  const len = dv.getUint32(10, true);
  if (len > MAX_HEADER_BYTES || len + MIN_SIZE > size) {
    throw new GsvError(`container: header length ${len} at byte 10 does not fit the ${size}-byte file`);
  }
  return len;
}

function isInt(v) {
  return typeof v === "number" && Number.isInteger(v);
}

/** The stream header from bytes [0, 18 + L): {header, dataStart}. */
export function parseHeader(head) {
  const len = head.length - PREFIX_BYTES - 4;
  const crc = view(head).getUint32(head.length - 4, true);
  if (crc !== crc32(head.subarray(0, head.length - 4))) {
    throw new GsvError(`container: file header CRC mismatch at byte ${head.length - 4}`);
  }
  const where = `stream header at byte ${PREFIX_BYTES}`;
  let obj;
  try {
    obj = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(head.subarray(PREFIX_BYTES, PREFIX_BYTES + len)));
  } catch (e) {
    throw new GsvError(`${where}: not valid UTF-8 JSON (${e.message})`);
  }
  const keys = ["codec_params", "fps_den", "fps_num", "gop", "height", "width"];
  if (obj === null || typeof obj !== "object" || Array.isArray(obj) || Object.keys(obj).sort().join() !== keys.join()) {
    throw new GsvError(`${where}: expected the keys ${keys.join(", ")}`);
  }
  for (const [name, hi] of [["width", MAX_SIDE], ["height", MAX_SIDE], ["fps_num", MAX_FPS_TERM], ["fps_den", MAX_FPS_TERM], ["gop", MAX_GOP]]) {
    if (!isInt(obj[name]) || obj[name] < 1 || obj[name] > hi) {
      throw new GsvError(`${where}: ${name}=${JSON.stringify(obj[name])} must be an integer in [1, ${hi}]`);
    }
  }
  const cp = obj.codec_params;
  if (cp === null || typeof cp !== "object" || Array.isArray(cp)) {
    throw new GsvError(`${where}: codec_params must be a dict with string keys`);
  }
  return { header: obj, dataStart: head.length };
}

/** The footer (last 32 bytes of a `size`-byte file): {indexOffset, indexLength, nFrames}. */
export function parseFooter(foot, size, dataStart) {
  const at = size - FOOTER_BYTES;
  const magic = ascii(foot.subarray(0, 4));
  if (magic !== "GSVF") throw new GsvError(`container: bad footer magic '${magic}' at byte ${at} (truncated file?)`);
  const dv = view(foot);
  if (dv.getUint32(28, true) !== crc32(foot.subarray(0, 28))) {
    throw new GsvError(`container: footer CRC mismatch at byte ${at}`);
  }
  const indexOffset = u64(dv, 4, "index offset");
  const indexLength = u64(dv, 12, "index length");
  const nFrames = u64(dv, 20, "frame count");
  if (indexOffset < dataStart || indexOffset + indexLength !== at) {
    throw new GsvError(
      `container: index at byte ${indexOffset} with ${indexLength} bytes does not end at the footer (byte ${at}) or starts inside the header`,
    );
  }
  if (indexLength < 12) throw new GsvError(`container: index of ${indexLength} bytes at byte ${indexOffset} is too short`);
  return { indexOffset, indexLength, nFrames };
}

/** The GOP index (bytes [indexOffset, indexOffset + indexLength)): entries
 * {index, firstFrame, nFrames, offset, length, crc}, checked to tile frames and bytes. */
export function parseIndex(raw, indexOffset, nFrames, dataStart) {
  const dv = view(raw);
  const magic = ascii(raw.subarray(0, 4));
  if (magic !== "GIDX") throw new GsvError(`container: bad index magic '${magic}' at byte ${indexOffset}`);
  const count = dv.getUint32(4, true);
  if (count < 1 || count > MAX_GOPS || raw.length !== 12 + count * ENTRY_BYTES) {
    throw new GsvError(`container: index at byte ${indexOffset} claims ${count} GOPs, inconsistent with its ${raw.length} bytes`);
  }
  if (dv.getUint32(raw.length - 4, true) !== crc32(raw.subarray(0, raw.length - 4))) {
    throw new GsvError(`container: index CRC mismatch at byte ${indexOffset + raw.length - 4}`);
  }
  const where = `container: index at byte ${indexOffset}`;
  const gops = [];
  let first = 0;
  for (let i = 0; i < count; i++) {
    const at = 8 + i * ENTRY_BYTES;
    const lo = (k) => dv.getUint32(at + k, true);
    const big = (k) => {
      const hi = dv.getUint32(at + k + 4, true);
      return hi >= 1 << 21 ? Infinity : hi * TWO32 + dv.getUint32(at + k, true);
    };
    const e = { index: lo(0), firstFrame: lo(4), nFrames: lo(8), offset: big(12), length: big(20), crc: lo(28) };
    if (e.index !== i) throw new GsvError(`${where}: GOP indices are not 0..${count - 1} in order`);
    if (e.nFrames < 1 || e.firstFrame !== first) throw new GsvError(`${where}: GOPs do not cover consecutive frames from 0`);
    first += e.nFrames;
    gops.push(e);
  }
  if (first !== nFrames) throw new GsvError(`${where}: GOPs hold ${first} frames but the footer says ${nFrames}`);
  if (gops.some((e) => e.offset > indexOffset || e.length > indexOffset)) {
    throw new GsvError(`${where}: a GOP chunk lies beyond the index`);
  }
  const byOffset = gops.map((e, i) => [e.offset, i]).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let expect = dataStart; // each chunk starts where the previous one ended
  for (const [, i] of byOffset) {
    if (gops[i].offset !== expect) {
      throw new GsvError(`${where}: GOP chunks do not tile bytes ${dataStart}..${indexOffset} (overlap, gap or bad length)`);
    }
    expect = gops[i].offset + CHUNK_BYTES + gops[i].length;
  }
  if (expect !== indexOffset) {
    throw new GsvError(`${where}: GOP chunks do not tile bytes ${dataStart}..${indexOffset} (overlap, gap or bad length)`);
  }
  return gops;
}

/** Check a GOP chunk (28-byte header then payload) against its index entry; returns the payload. */
export function checkChunk(chunk, e) {
  if (chunk.length !== CHUNK_BYTES + e.length) {
    throw new GsvError(`container: GOP ${e.index} chunk at byte ${e.offset}: expected ${CHUNK_BYTES + e.length} bytes, got ${chunk.length}`);
  }
  const dv = view(chunk);
  const same =
    ascii(chunk.subarray(0, 4)) === "GOPC" &&
    dv.getUint32(4, true) === e.index &&
    dv.getUint32(8, true) === e.firstFrame &&
    dv.getUint32(12, true) === e.nFrames &&
    dv.getUint32(16, true) + dv.getUint32(20, true) * TWO32 === e.length &&
    dv.getUint32(24, true) === e.crc;
  if (!same) throw new GsvError(`container: GOP ${e.index} chunk header at byte ${e.offset} disagrees with the index`);
  const payload = chunk.subarray(CHUNK_BYTES);
  if (crc32(payload) !== e.crc) {
    throw new GsvError(`container: GOP ${e.index} payload CRC mismatch at byte ${e.offset + CHUNK_BYTES}`);
  }
  return payload;
}

/** A whole .gsv in memory (Node, tests): header, gops, nFrames, readGop(i), gopForFrame(f). */
export class GsvFile {
  constructor(bytes) {
    const size = bytes.length;
    const len = parsePrefix(bytes.subarray(0, Math.min(size, PREFIX_BYTES)), size);
    const { header, dataStart } = parseHeader(bytes.subarray(0, PREFIX_BYTES + len + 4));
    const { indexOffset, indexLength, nFrames } = parseFooter(bytes.subarray(size - FOOTER_BYTES), size, dataStart);
    this.header = header;
    this.dataStart = dataStart;
    this.nFrames = nFrames;
    this.gops = parseIndex(bytes.subarray(indexOffset, indexOffset + indexLength), indexOffset, nFrames, dataStart);
    this.bytes = bytes;
  }

  readGop(i) {
    if (!Number.isInteger(i) || i < 0 || i >= this.gops.length) {
      throw new GsvError(`container: GOP ${i} out of range (the file has ${this.gops.length})`);
    }
    const e = this.gops[i];
    return checkChunk(this.bytes.subarray(e.offset, e.offset + CHUNK_BYTES + e.length), e);
  }

  gopForFrame(f) {
    return gopForFrame(this.gops, f);
  }
}

/** Index of the GOP holding frame f. */
export function gopForFrame(gops, f) {
  let lo = 0;
  let hi = gops.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >>> 1;
    if (gops[mid].firstFrame <= f) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}
