// YUV4MPEG2 4:4:4 10-bit full range, byte for byte as codec/video.py's default y4m writer.

const KR = 0.299;
const KG = 0.587;
const KB = 0.114;

export function y4mHeader(width, height, fpsNum, fpsDen) {
  return new TextEncoder().encode(`YUV4MPEG2 W${width} H${height} F${fpsNum}:${fpsDen} Ip A1:1 C444p10 XCOLORRANGE=FULL\n`);
}

function q10(x) {
  const v = Math.floor(x + 0.5);
  return v < 0 ? 0 : v > 1023 ? 1023 : v;
}

/** "FRAME\n" and the Y, Cb, Cr planes (little-endian u16) of an RGB frame [h * w * 3]. */
export function y4mFrame(rgb, height, width) {
  const n = height * width;
  const out = new Uint8Array(6 + 6 * n);
  out.set(new TextEncoder().encode("FRAME\n"));
  const dv = new DataView(out.buffer, 6);
  for (let i = 0; i < n; i++) {
    const r = rgb[3 * i];
    const g = rgb[3 * i + 1];
    const b = rgb[3 * i + 2];
    const y = KR * r + KG * g + KB * b;
    dv.setUint16(2 * i, q10(4 * y), true);
    dv.setUint16(2 * (n + i), q10(4 * ((b - y) / 1.772) + 512), true);
    dv.setUint16(2 * (2 * n + i), q10(4 * ((r - y) / 1.402) + 512), true);
  }
  return out;
}
