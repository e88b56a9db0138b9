// A .gsv behind a URL, read with HTTP range requests: the first 64 KiB (stream header), the
// footer, the index, then single GOP chunks on demand. A server that ignores Range (200) hands
// over the whole file at once, which then serves every later read.

import { CHUNK_BYTES, FOOTER_BYTES, PREFIX_BYTES, checkChunk, parseFooter, parseHeader, parseIndex, parsePrefix } from "./container.js";
import { GsvError } from "./errors.js";

const FIRST_READ = 65536;

export class RemoteGsv {
  constructor(url, headers) {
    this.url = url;
    this.headers = headers || {};
    this.whole = null; // the full file when the server does not do ranges
    this.size = 0;
    this.bytesFetched = 0;
    this.requests = 0;
  }

  async _get(start, end) {
    // bytes [start, end) of the file
    if (this.whole) return this.whole.subarray(start, end);
    this.requests += 1;
    const resp = await fetch(this.url, { headers: { ...this.headers, Range: `bytes=${start}-${end - 1}` } });
    if (resp.status === 200) {
      this.whole = new Uint8Array(await resp.arrayBuffer());
      this.bytesFetched += this.whole.length;
      this.size = this.whole.length;
      return this.whole.subarray(start, end);
    }
    if (resp.status !== 206) throw new GsvError(`HTTP ${resp.status} for ${this.url} (bytes ${start}-${end - 1})`);
    const range = /bytes (\d+)-(\d+)\/(\d+)/.exec(resp.headers.get("content-range") || "");
    const body = new Uint8Array(await resp.arrayBuffer());
    this.bytesFetched += body.length;
    if (!range || Number(range[1]) !== start || body.length !== Math.min(end, Number(range[3])) - start) {
      throw new GsvError(`the server answered bytes ${start}-${end - 1} of ${this.url} with a different range`);
    }
    this.size = Number(range[3]);
    return body;
  }

  /** Fetch the header, footer and index: sets header, gops, nFrames. */
  async open() {
    const first = await this._get(0, FIRST_READ);
    const size = this.size;
    const len = parsePrefix(first.subarray(0, PREFIX_BYTES), size);
    const headEnd = PREFIX_BYTES + len + 4;
    const head = headEnd <= first.length ? first.subarray(0, headEnd) : await this._get(0, headEnd);
    const { header, dataStart } = parseHeader(head);
    const foot = await this._get(size - FOOTER_BYTES, size);
    const { indexOffset, indexLength, nFrames } = parseFooter(foot, size, dataStart);
    const raw = await this._get(indexOffset, indexOffset + indexLength);
    this.gops = parseIndex(raw, indexOffset, nFrames, dataStart);
    this.header = header;
    this.nFrames = nFrames;
    return this;
  }

  /** The checked payload of GOP i (one range request). */
  async gop(i) {
    const e = this.gops[i];
    const chunk = await this._get(e.offset, e.offset + CHUNK_BYTES + e.length);
    return checkChunk(chunk, e);
  }
}
