// WebGL2 summation renderer (docs/FORMAT.md section 4): one instanced quad per Gaussian over its
// 3-sigma pixel box, the kernel in the fragment shader, additive blending into a float32 target
// (a plain sum needs no sorting), then a pass that clamps, scales by 255 and rounds to 8 bits.
// Renders at any canvas size: the frame is sampled at the canvas pixels' centres, so zooming
// needs no new bitstream. Falls back (throws GlUnavailable) when float render targets or float
// blending are missing; the player then uses the CPU renderer.

import { prepare } from "./render_cpu.js";

export class GlUnavailable extends Error {}

// The kernels of render_cpu.js (kernelLegacy / kernelCanonical, FORMAT.md section 4): u_canonical
// picks det_exp (RENDER_CANONICAL GOPs) or the GPU's exp. GPU float arithmetic may fuse or round
// differently and blending adds in any order, so this is within 45 dB, not bit for bit.
const SPLAT_VS = `#version 300 es
precision highp float;
layout(location = 0) in vec2 a_centre;   // frame px
layout(location = 1) in vec3 a_conic;    // (-a/2, 2 * (-b/2), -c/2)
layout(location = 2) in vec3 a_rgb;
layout(location = 3) in vec4 a_box;      // x0, x1 + 1, y0, y1 + 1 (frame px)
uniform vec2 u_frame;                    // frame width, height
out vec2 v_centre;
out vec3 v_conic;
out vec3 v_rgb;
void main() {
  vec2 corner = vec2(float(gl_VertexID & 1), float((gl_VertexID >> 1) & 1));
  vec2 p = mix(a_box.xz, a_box.yw, corner);
  gl_Position = vec4(p.x / u_frame.x * 2.0 - 1.0, 1.0 - p.y / u_frame.y * 2.0, 0.0, 1.0);
  v_centre = a_centre;
  v_conic = a_conic;
  v_rgb = a_rgb;
}`;

const SPLAT_FS = `#version 300 es
precision highp float;
in vec2 v_centre;
in vec3 v_conic;
in vec3 v_rgb;
uniform vec2 u_scale;      // canvas px per frame px
uniform float u_height;    // canvas height in px
uniform bool u_canonical;  // det_exp (canonical render) instead of exp
out vec4 o_sum;
float det_exp(float h) {
  float hc = max(h, -5.0);
  float n = roundEven(hc * 1.44269504088896341);  // the CPU's shifter trick: nearest, ties to even
  float r = hc - n * 0.693145751953125;
  r = r - n * 1.42860682030941723e-06;
  float p = 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  return p * exp2(n);
}
void main() {
  vec2 pix = vec2(gl_FragCoord.x, u_height - gl_FragCoord.y) / u_scale;  // frame coordinates
  vec2 d = pix - v_centre;
  float h = (v_conic.x * d.x) * d.x + (v_conic.y * d.x) * d.y;
  h = h + (v_conic.z * d.y) * d.y;
  if (h < -4.5) discard;   // beyond 3 sigma
  o_sum = vec4(v_rgb * (u_canonical ? det_exp(h) : exp(h)), 1.0);
}`;

const RESOLVE_VS = `#version 300 es
void main() {
  vec2 p = vec2(float((gl_VertexID << 1) & 2), float(gl_VertexID & 2));
  gl_Position = vec4(p * 2.0 - 1.0, 0.0, 1.0);
}`;

const RESOLVE_FS = `#version 300 es
precision highp float;
uniform highp sampler2D u_sum;
out vec4 o_color;
void main() {
  vec3 v = texelFetch(u_sum, ivec2(gl_FragCoord.xy), 0).rgb;
  o_color = vec4(floor(clamp(v, 0.0, 1.0) * 255.0 + 0.5) / 255.0, 1.0);
}`;

function compile(gl, vs, fs) {
  const prog = gl.createProgram();
  for (const [type, src] of [[gl.VERTEX_SHADER, vs], [gl.FRAGMENT_SHADER, fs]]) {
    const sh = gl.createShader(type);
    gl.shaderSource(sh, src);
    gl.compileShader(sh);
    if (!gl.getShaderParameter(sh, gl.COMPILE_STATUS)) throw new GlUnavailable(`shader: ${gl.getShaderInfoLog(sh)}`);
    gl.attachShader(prog, sh);
  }
  gl.linkProgram(prog);
  if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new GlUnavailable(`program: ${gl.getProgramInfoLog(prog)}`);
  return prog;
}

export class GlRenderer {
  constructor(canvas) {
    const gl = canvas.getContext("webgl2", { antialias: false, preserveDrawingBuffer: true, premultipliedAlpha: false, alpha: false });
    if (!gl) throw new GlUnavailable("WebGL2 is not available");
    if (!gl.getExtension("EXT_color_buffer_float")) throw new GlUnavailable("no EXT_color_buffer_float (float render targets)");
    if (!gl.getExtension("EXT_float_blend")) throw new GlUnavailable("no EXT_float_blend (blending into float32)");
    this.gl = gl;
    this.canvas = canvas;
    this.name = "webgl2";
    this.splat = compile(gl, SPLAT_VS, SPLAT_FS);
    this.resolve = compile(gl, RESOLVE_VS, RESOLVE_FS);
    this.vao = gl.createVertexArray();
    this.buf = gl.createBuffer();
    gl.bindVertexArray(this.vao);
    gl.bindBuffer(gl.ARRAY_BUFFER, this.buf);
    const stride = 12 * 4;
    const layout = [[0, 2, 0], [1, 3, 2], [2, 3, 5], [3, 4, 8]];
    for (const [loc, size, off] of layout) {
      gl.enableVertexAttribArray(loc);
      gl.vertexAttribPointer(loc, size, gl.FLOAT, false, stride, off * 4);
      gl.vertexAttribDivisor(loc, 1);
    }
    gl.bindVertexArray(null);
    this.tex = null;
    this.fbo = gl.createFramebuffer();
    this.size = [0, 0];
    this.count = 0;
    this.frame = [1, 1];
  }

  _target(w, h) {
    const gl = this.gl;
    if (this.size[0] === w && this.size[1] === h) return;
    if (this.tex) gl.deleteTexture(this.tex);
    this.tex = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, this.tex);
    gl.texStorage2D(gl.TEXTURE_2D, 1, gl.RGBA32F, w, h);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
    gl.bindFramebuffer(gl.FRAMEBUFFER, this.fbo);
    gl.framebufferTexture2D(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.TEXTURE_2D, this.tex, 0);
    if (gl.checkFramebufferStatus(gl.FRAMEBUFFER) !== gl.FRAMEBUFFER_COMPLETE) throw new GlUnavailable("float framebuffer incomplete");
    this.size = [w, h];
  }

  /** Upload a frame's Gaussians (params [n * 8] of a width x height frame). */
  upload(params, n, height, width, canonical = false) {
    this.canonical = canonical;
    const p = prepare(params, n, height, width, false);
    const data = new Float32Array(p.count * 12);
    for (let j = 0; j < p.count; j++) {
      const o = p.idx[j] * 8;
      const d = j * 12;
      data[d] = params[o];
      data[d + 1] = params[o + 1];
      data[d + 2] = -0.5 * p.abc[3 * j];
      data[d + 3] = 2 * (-0.5 * p.abc[3 * j + 1]);
      data[d + 4] = -0.5 * p.abc[3 * j + 2];
      data[d + 5] = params[o + 5];
      data[d + 6] = params[o + 6];
      data[d + 7] = params[o + 7];
      data[d + 8] = p.box[4 * j];
      data[d + 9] = p.box[4 * j + 1] + 1;
      data[d + 10] = p.box[4 * j + 2];
      data[d + 11] = p.box[4 * j + 3] + 1;
    }
    const gl = this.gl;
    gl.bindBuffer(gl.ARRAY_BUFFER, this.buf);
    gl.bufferData(gl.ARRAY_BUFFER, data, gl.DYNAMIC_DRAW);
    this.count = p.count;
    this.frame = [width, height];
  }

  /** Draw the uploaded frame at the canvas's size. */
  draw() {
    const gl = this.gl;
    const cw = this.canvas.width;
    const ch = this.canvas.height;
    this._target(cw, ch);
    gl.bindFramebuffer(gl.FRAMEBUFFER, this.fbo);
    gl.viewport(0, 0, cw, ch);
    gl.clearColor(0, 0, 0, 0);
    gl.clear(gl.COLOR_BUFFER_BIT);
    gl.enable(gl.BLEND);
    gl.blendEquation(gl.FUNC_ADD);
    gl.blendFunc(gl.ONE, gl.ONE);
    gl.useProgram(this.splat);
    gl.uniform2f(gl.getUniformLocation(this.splat, "u_frame"), this.frame[0], this.frame[1]);
    gl.uniform2f(gl.getUniformLocation(this.splat, "u_scale"), cw / this.frame[0], ch / this.frame[1]);
    gl.uniform1f(gl.getUniformLocation(this.splat, "u_height"), ch);
    gl.uniform1i(gl.getUniformLocation(this.splat, "u_canonical"), this.canonical ? 1 : 0);
    gl.bindVertexArray(this.vao);
    gl.drawArraysInstanced(gl.TRIANGLE_STRIP, 0, 4, this.count);
    gl.bindVertexArray(null);
    gl.disable(gl.BLEND);
    gl.bindFramebuffer(gl.FRAMEBUFFER, null);
    gl.useProgram(this.resolve);
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D, this.tex);
    gl.uniform1i(gl.getUniformLocation(this.resolve, "u_sum"), 0);
    gl.drawArrays(gl.TRIANGLES, 0, 3);
  }

  /** The canvas as uint8 RGB [h * w * 3], top row first. */
  read() {
    const gl = this.gl;
    const w = this.canvas.width;
    const h = this.canvas.height;
    const rgba = new Uint8Array(w * h * 4);
    gl.bindFramebuffer(gl.FRAMEBUFFER, null);
    gl.readPixels(0, 0, w, h, gl.RGBA, gl.UNSIGNED_BYTE, rgba);
    const out = new Uint8Array(w * h * 3);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const s = ((h - 1 - y) * w + x) * 4;
        const d = (y * w + x) * 3;
        out[d] = rgba[s];
        out[d + 1] = rgba[s + 1];
        out[d + 2] = rgba[s + 2];
      }
    }
    return out;
  }

  /** Wait until the GPU has finished (for honest render timings). */
  finish() {
    const px = new Uint8Array(4);
    this.gl.readPixels(0, 0, 1, 1, this.gl.RGBA, this.gl.UNSIGNED_BYTE, px);
  }
}

/** The CPU renderer behind the same interface (when WebGL2 float targets are missing). */
export class CpuCanvasRenderer {
  constructor(canvas, renderFrame) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.name = "cpu";
    this.renderFrame = renderFrame;
    this.img = null;
  }
  upload(params, n, height, width, canonical = false) {
    this.img = { rgb: this.renderFrame(params, n, height, width, canonical), width, height };
  }
  draw() {
    const { rgb, width, height } = this.img;
    const data = new ImageData(width, height);
    for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) {
      data.data[j] = rgb[i];
      data.data[j + 1] = rgb[i + 1];
      data.data[j + 2] = rgb[i + 2];
      data.data[j + 3] = 255;
    }
    const tmp = new OffscreenCanvas(width, height);
    tmp.getContext("2d").putImageData(data, 0, 0);
    this.ctx.imageSmoothingEnabled = false;
    this.ctx.drawImage(tmp, 0, 0, this.canvas.width, this.canvas.height);
  }
  read() {
    const { data } = this.ctx.getImageData(0, 0, this.canvas.width, this.canvas.height);
    const out = new Uint8Array((data.length / 4) * 3);
    for (let i = 0, j = 0; j < data.length; i += 3, j += 4) {
      out[i] = data[j];
      out[i + 1] = data[j + 1];
      out[i + 2] = data[j + 2];
    }
    return out;
  }
  finish() {}
}
