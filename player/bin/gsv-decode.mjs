#!/usr/bin/env node
// node player/bin/gsv-decode.mjs IN.gsv OUT.y4m [--params OUT.bin]
// Decodes a .gsv with the JavaScript decoder and the CPU reference renderer and writes a Y4M
// (4:4:4, 10 bit, full range: the same bytes `splatpack decode IN.gsv OUT.y4m` writes). With
// --params it also writes every frame's Gaussians: u32 N, then N x 8 float32 (x y l11 l21 l22 r g b).

import { closeSync, openSync, readFileSync, writeSync } from "node:fs";
import { GsvFile } from "../src/container.js";
import { GsvError } from "../src/errors.js";
import { GopDecoder } from "../src/gop.js";
import { renderFrame } from "../src/render_cpu.js";
import { y4mFrame, y4mHeader } from "../src/y4m.js";

function usage(msg) {
  if (msg) process.stderr.write(`error: ${msg}\n`);
  process.stderr.write("usage: node player/bin/gsv-decode.mjs IN.gsv OUT.y4m [--params OUT.bin]\n");
  process.exit(2);
}

const args = process.argv.slice(2);
let paramsPath = null;
const pi = args.indexOf("--params");
if (pi >= 0) {
  paramsPath = args[pi + 1];
  if (!paramsPath) usage("--params needs a path");
  args.splice(pi, 2);
}
if (args.length !== 2) usage();
const [inPath, outPath] = args;

let bytes;
try {
  bytes = new Uint8Array(readFileSync(inPath));
} catch (e) {
  usage(`cannot read ${inPath}: ${e.message}`);
}

try {
  const file = new GsvFile(bytes);
  const { width, height, fps_num: num, fps_den: den } = file.header;
  const out = openSync(outPath, "w");
  const params = paramsPath ? openSync(paramsPath, "w") : null;
  writeSync(out, y4mHeader(width, height, num, den));
  for (let g = 0; g < file.gops.length; g++) {
    const dec = new GopDecoder(file.readGop(g));
    if (dec.width !== width || dec.height !== height) {
      throw new GsvError(`GOP ${g} is ${dec.width}x${dec.height}, the stream ${width}x${height}`);
    }
    for (let fr = dec.next(); fr; fr = dec.next()) {
      writeSync(out, y4mFrame(renderFrame(fr.params, fr.n, height, width, fr.canonical), height, width));
      if (params) {
        writeSync(params, new Uint8Array(new Uint32Array([fr.n]).buffer));
        writeSync(params, new Uint8Array(fr.params.buffer, fr.params.byteOffset, fr.params.byteLength));
      }
    }
  }
  closeSync(out);
  if (params) closeSync(params);
  process.stderr.write(`${file.nFrames} frames of ${width}x${height} -> ${outPath}\n`);
} catch (e) {
  if (e instanceof GsvError) {
    process.stderr.write(`error: ${inPath}: ${e.message}\n`);
    process.exit(1);
  }
  throw e;
}
