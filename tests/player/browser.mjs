// Drives the player page in headless Chromium (Debian's `chromium`, through playwright-core):
//   node tests/player/browser.mjs PAGE_URL OUT_DIR [--key KEY] [--seek F]... [--play-ms MS] [--bench N]
// Opens PAGE_URL (the player with ?src= or ?job=), waits for the first frame, plays for MS
// milliseconds, seeks to each F and saves the frame on screen at the stream's size as
// OUT_DIR/frame_F.rgb (uint8 RGB), then writes OUT_DIR/result.json (stats, frames played,
// damaged GOPs, timings). With --bench N it also times N renders of the current frame at zoom 1
// and 2. Exit status 0 when the page loaded and played; the checks are the caller's (pytest).

import { mkdirSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

const require = createRequire(new URL("../../player/package.json", import.meta.url));
const { chromium } = require("playwright-core");

const args = process.argv.slice(2);
const [pageUrl, outDir] = args;
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
let seeks = args.flatMap((a, i) => (a === "--seek" ? [Number(args[i + 1])] : []));
const allFrames = args.includes("--all-frames"); // seek to every frame, in order
const playMs = Number(opt("--play-ms", "1500"));
const bench = Number(opt("--bench", "0"));
const key = opt("--key", "");
const sweep = opt("--sweep", ""); // e.g. 1000,10000,50000: render time of N random Gaussians
const sweepSize = opt("--size", "720x528").split("x").map(Number);
mkdirSync(outDir, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"],
});
const result = { console: [] };
try {
  const page = await browser.newPage();
  page.on("console", (m) => result.console.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => result.console.push(`pageerror: ${e.message}`));
  if (key) {
    // the page reads the key from sessionStorage, never from its URL
    await page.goto(new URL("/player/", pageUrl).href);
    await page.evaluate((k) => sessionStorage.setItem("splatpack-key", k), key);
  }
  await page.goto(pageUrl);
  await page.waitForFunction(() => window.gsvPlayerReady === true, null, { timeout: 60000 });
  result.error = await page.evaluate(() => window.gsvPlayerError || null);
  const hasFile = await page.evaluate(() => !!window.gsvPlayer.file);
  if (!result.error && hasFile) {
    result.first = await page.evaluate(() => window.gsvPlayer.stats());
    await page.evaluate(() => window.gsvPlayer.play());
    await page.waitForTimeout(playMs);
    result.played = await page.evaluate(() => window.gsvPlayer.stats());
    await page.evaluate(() => window.gsvPlayer.pause());
    result.seeks = [];
    if (allFrames) seeks = Array.from({ length: result.first.nFrames }, (_, f) => f);
    for (const f of seeks) {
      const shown = await page.evaluate((x) => window.gsvPlayer.seek(x), f);
      const rgb = await page.evaluate(() => Array.from(window.gsvPlayer.readFrame()));
      writeFileSync(join(outDir, `frame_${f}.rgb`), Uint8Array.from(rgb));
      result.seeks.push({ asked: f, shown, stats: await page.evaluate(() => window.gsvPlayer.stats()) });
    }
    if (bench) {
      result.bench = await page.evaluate((n) => {
        const p = window.gsvPlayer;
        const out = {};
        for (const z of [1, 2]) {
          p.setZoom(z);
          const t0 = performance.now();
          for (let i = 0; i < n; i++) p._draw();
          out[`zoom${z}_ms`] = (performance.now() - t0) / n;
        }
        p.setZoom(1);
        out.gaussians = p.stats().gaussians;
        out.renderer = p.stats().renderer;
        return out;
      }, bench);
    }
    result.last = await page.evaluate(() => window.gsvPlayer.stats());
  }
  if (sweep) {
    result.sweep = await page.evaluate(
      async ([counts, w, h]) => {
        const { GlRenderer } = await import("/player/src/render_gl.js");
        const canvas = document.createElement("canvas");
        canvas.width = w;
        canvas.height = h;
        const r = new GlRenderer(canvas);
        let seed = 1;
        const rand = () => (seed = (seed * 16807) % 2147483647) / 2147483647;
        const out = [];
        for (const n of counts) {
          // Gaussians like a fitted frame's: 1..4 px standard deviations, colours in [0, 0.3]
          const p = new Float32Array(n * 8);
          for (let i = 0; i < n; i++) {
            p.set([rand() * w, rand() * h, 1 + 3 * rand(), rand() - 0.5, 1 + 3 * rand(), 0.3 * rand(), 0.3 * rand(), 0.3 * rand()], 8 * i);
          }
          const t0 = performance.now();
          r.upload(p, n, h, w);
          const t1 = performance.now();
          const reps = 5;
          for (let k = 0; k < reps; k++) {
            r.draw();
            r.finish();
          }
          const t2 = performance.now();
          out.push({ gaussians: n, upload_ms: t1 - t0, draw_ms: (t2 - t1) / reps, frame_ms: t1 - t0 + (t2 - t1) / reps });
        }
        return out;
      },
      [sweep.split(",").map(Number), sweepSize[0], sweepSize[1]],
    );
  }
} finally {
  writeFileSync(join(outDir, "result.json"), JSON.stringify(result, null, 1));
  await browser.close();
}
