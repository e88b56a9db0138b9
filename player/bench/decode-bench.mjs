// node player/bench/decode-bench.mjs IN.gsv [--repeats N] [--render-frames K]
// JS decode speed (bitstream to Gaussian parameters: container, range decoder, streams,
// dequantisation; no rendering, no file I/O in the timed part), median of N whole-file decodes,
// and the CPU reference renderer's time on the first K frames. Prints one JSON line.

import { readFileSync } from "node:fs";
import { GsvFile } from "../src/container.js";
import { GopDecoder } from "../src/gop.js";
import { renderFrame } from "../src/render_cpu.js";

const args = process.argv.slice(2);
const opt = (name, dflt) => (args.includes(name) ? Number(args[args.indexOf(name) + 1]) : dflt);
const repeats = opt("--repeats", 5);
const renderFrames = opt("--render-frames", 3);
const bytes = new Uint8Array(readFileSync(args[0]));

function decodeAll() {
  const file = new GsvFile(bytes);
  let frames = 0;
  let gaussians = 0;
  for (let g = 0; g < file.gops.length; g++) {
    const dec = new GopDecoder(file.readGop(g));
    for (let f = dec.next(); f; f = dec.next()) {
      frames += 1;
      gaussians += f.n;
    }
  }
  return { frames, gaussians, file };
}

decodeAll(); // warm-up (JIT)
const times = [];
const cpu = [];
let info;
for (let r = 0; r < repeats; r++) {
  const c0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  info = decodeAll();
  times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  const c = process.cpuUsage(c0);
  cpu.push((c.user + c.system) / 1000);
}
cpu.sort((a, b) => a - b);
times.sort((a, b) => a - b);
const median = times[Math.floor(times.length / 2)];
const { width, height } = info.file.header;
const dec = new GopDecoder(info.file.readGop(0));
const renderMs = [];
for (let k = 0; k < renderFrames; k++) {
  const f = dec.next();
  if (!f) break;
  const t0 = process.hrtime.bigint();
  renderFrame(f.params, f.n, height, width, f.canonical);
  renderMs.push(Number(process.hrtime.bigint() - t0) / 1e6);
}
console.log(
  JSON.stringify({
    file: args[0],
    bytes: bytes.length,
    width,
    height,
    frames: info.frames,
    mean_gaussians: Math.round(info.gaussians / info.frames),
    decode_ms_per_frame: median / info.frames,
    decode_fps: (1000 * info.frames) / median,
    decode_runs_ms: times,
    // CPU time of this process (user + system) per frame: the figure on a shared, loaded machine
    decode_cpu_ms_per_frame: cpu[Math.floor(cpu.length / 2)] / info.frames,
    cpu_render_ms_per_frame: renderMs,
    node: process.version,
  }),
);
