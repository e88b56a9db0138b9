// Fused tile-binned summation renderer for the CPU: forward and backward in one pass per tile.
//
// Built by codec/render/cpu_ext.py (torch.utils.cpp_extension, -O3 -fopenmp -ffp-contract=off
// -fno-trapping-math: no FMA contraction, so results are plain IEEE float32 operations).
// The Python side hands over only drawable Gaussians with their clipped pixel boxes
// (codec.render.torch_tiles.pixel_boxes), so every value here is finite.
//
// The canonical render (docs/FORMAT.md, "Rendering"):
//   h = (a*dx)*dx + (b2*dx)*dy, then h = h + (c*dy)*dy   with a = -A/2, b2 = -B, c = -C/2
//       (A, B, C the conic; dx = (px + 0.5) - x, dy = (py + 0.5) - y; float32, no FMA)
//   w = det_exp(h) where h >= -4.5 and the pixel lies in the Gaussian's box, else 0
//   pixel = sum over Gaussians in ascending index order, acc = acc + w * rgb (float32)
// det_exp is a fixed sequence of IEEE float32 additions and multiplications, so the torch
// emulation in codec/render/canonical.py gives the same bits, on any machine and thread count.
#include <torch/extension.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <cstring>
#include <vector>

namespace {

constexpr int TILE = 16;
constexpr int TPIX = TILE * TILE;
constexpr float CUTOFF = -4.5f;  // h = -m/2 at m = 9 (3 sigma)

// exp(h) for h in [-5, 0.5]: round-to-nearest-even n = h*log2(e) by the 1.5*2^23 trick,
// Cody-Waite reduction, degree-6 Taylor polynomial (|error| ~ 1 ulp), exact scaling by 2^n.
inline float det_exp(float h) {
  const float hc = std::max(h, -5.0f);
  const float shifter = 12582912.0f;  // 1.5 * 2^23
  const float t = hc * 1.44269504088896341f;
  const float n = (t + shifter) - shifter;
  float r = hc - n * 0.693145751953125f;  // ln2 high part (exact product for |n| < 2^8)
  r = r - n * 1.42860682030941723e-06f;  // ln2 low part
  float p = 1.38888888888888894e-03f;    // 1/720
  p = p * r + 8.33333333333333322e-03f;  // 1/120
  p = p * r + 4.16666666666666644e-02f;  // 1/24
  p = p * r + 1.66666666666666657e-01f;  // 1/6
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

struct Bins {
  int64_t tiles_x, tiles_y;
  std::vector<int32_t> start;  // [T + 1]
  std::vector<int32_t> ids;    // [pairs], ascending Gaussian index within each tile
};

// (gaussian, tile) lists from boxes int64 [M, 4] (x0, x1, y0, y1 inclusive, inside the frame).
Bins bin_tiles(const int64_t* box, int64_t m, int64_t height, int64_t width) {
  Bins b;
  b.tiles_x = (width + TILE - 1) / TILE;
  b.tiles_y = (height + TILE - 1) / TILE;
  const int64_t n_tiles = b.tiles_x * b.tiles_y;
  std::vector<int64_t> count(n_tiles + 1, 0);
  for (int64_t i = 0; i < m; ++i) {
    const int64_t* bx = box + 4 * i;
    for (int64_t ty = bx[2] / TILE; ty <= bx[3] / TILE; ++ty)
      for (int64_t tx = bx[0] / TILE; tx <= bx[1] / TILE; ++tx) ++count[ty * b.tiles_x + tx + 1];
  }
  for (int64_t t = 0; t < n_tiles; ++t) count[t + 1] += count[t];
  TORCH_CHECK(count[n_tiles] < INT32_MAX, "too many (gaussian, tile) pairs: ", count[n_tiles]);
  b.start.assign(count.begin(), count.end());
  b.ids.resize(count[n_tiles]);
  std::vector<int64_t> fill(count.begin(), count.end() - 1);
  for (int64_t i = 0; i < m; ++i) {
    const int64_t* bx = box + 4 * i;
    for (int64_t ty = bx[2] / TILE; ty <= bx[3] / TILE; ++ty)
      for (int64_t tx = bx[0] / TILE; tx <= bx[1] / TILE; ++tx)
        b.ids[fill[ty * b.tiles_x + tx]++] = static_cast<int32_t>(i);
  }
  return b;
}

struct Params {
  const float* xy;
  const float* abc;
  const float* rgb;
  const int64_t* box;
};

// The pixel rectangle of Gaussian i inside tile (tx, ty): [x0, x1] x [y0, y1], inclusive.
inline void clip_rect(const int64_t* bx, int64_t tx, int64_t ty, int64_t& x0, int64_t& x1,
                      int64_t& y0, int64_t& y1) {
  x0 = std::max<int64_t>(bx[0], tx * TILE);
  x1 = std::min<int64_t>(bx[1], tx * TILE + TILE - 1);
  y0 = std::max<int64_t>(bx[2], ty * TILE);
  y1 = std::min<int64_t>(bx[3], ty * TILE + TILE - 1);
}

// Per-Gaussian column terms over the 16 columns of tile column tx: (a*dx)*dx, b2*dx and a
// 0/1 mask of the columns inside the Gaussian's box. Every lane is computed (fixed trip
// count, so the compiler vectorises it); lanes outside the box get weight exactly 0.
struct Cols {
  alignas(32) float adx2[TILE];
  alignas(32) float b2dx[TILE];
  alignas(32) float dx[TILE];
  alignas(32) float in[TILE];
};

inline void column_terms(Cols& q, int64_t tx, float cx, float a, float b2, int64_t x0,
                         int64_t x1) {
  const float lo = static_cast<float>(x0 - tx * TILE), hi = static_cast<float>(x1 - tx * TILE);
  const float base = static_cast<float>(tx * TILE);
  for (int j = 0; j < TILE; ++j) {
    const float dx = ((base + static_cast<float>(j)) + 0.5f) - cx;
    q.dx[j] = dx;
    q.adx2[j] = (a * dx) * dx;
    q.b2dx[j] = b2 * dx;
    q.in[j] = static_cast<float>((static_cast<float>(j) >= lo) & (static_cast<float>(j) <= hi));
  }
}

// Weights of one half row (8 lanes from lane j0): det_exp(h) where h >= -4.5 and the lane is in
// the box. A pair computes only the halves its box reaches; the lanes it skips would all have
// weight exactly 0, so the result is the same bits as computing all 16.
// 8 float32 lanes (GCC/Clang vector extension): element-wise IEEE operations, written out where
// the auto-vectoriser kept a loop scalar.
typedef float V8 __attribute__((vector_size(32)));
inline V8 load8(const float* p) {
  V8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store8(float* p, V8 v) { std::memcpy(p, &v, sizeof v); }

// Loops have a fixed trip count from pointers already offset to the half, so they vectorise.
constexpr int HALF = TILE / 2;
inline void half_weights(const Cols& q, int j0, float dy, float t3, float* __restrict__ w) {
  const float* __restrict__ adx2 = q.adx2 + j0;
  const float* __restrict__ b2dx = q.b2dx + j0;
  const float* __restrict__ in = q.in + j0;
  float* __restrict__ wo = w + j0;
  for (int j = 0; j < HALF; ++j) {
    float h = adx2[j] + b2dx[j] * dy;
    h = h + t3;
    const float e = det_exp(h) * in[j];  // exact: in is 0 or 1
    wo[j] = h >= CUTOFF ? e : 0.0f;
  }
}

// The first and last half (0 or 1) of tile column tx that the columns [x0, x1] reach.
inline void halves(int64_t tx, int64_t x0, int64_t x1, int& h0, int& h1) {
  h0 = static_cast<int>((x0 - tx * TILE) / HALF);
  h1 = static_cast<int>((x1 - tx * TILE) / HALF);
}

// 8-bit output as codec.gop.to_u8 computes it: round-half-even(clamp(v, 0, 1) * 255).
inline uint8_t to_u8(float v) {
  const float c = std::min(std::max(v, 0.0f), 1.0f) * 255.0f;
  return static_cast<uint8_t>(std::nearbyint(c));
}

template <typename Out>
void forward_tiles(const Params& p, const Bins& b, int64_t height, int64_t width, Out* out) {
  const int64_t n_tiles = b.tiles_x * b.tiles_y;
#pragma omp parallel for schedule(dynamic, 1) num_threads(at::get_num_threads())
  for (int64_t t = 0; t < n_tiles; ++t) {
    const int64_t tx = t % b.tiles_x, ty = t / b.tiles_x;
    alignas(32) float acc[3][TPIX];
    std::memset(acc, 0, sizeof acc);
    Cols q;
    alignas(32) float w[TILE];
    for (int32_t k = b.start[t]; k < b.start[t + 1]; ++k) {
      const int64_t i = b.ids[k];
      int64_t x0, x1, y0, y1;
      clip_rect(p.box + 4 * i, tx, ty, x0, x1, y0, y1);
      const float cx = p.xy[2 * i], cy = p.xy[2 * i + 1];
      const float a = -0.5f * p.abc[3 * i], b2 = 2.0f * (-0.5f * p.abc[3 * i + 1]),
                  c = -0.5f * p.abc[3 * i + 2];
      const float cr = p.rgb[3 * i], cg = p.rgb[3 * i + 1], cb = p.rgb[3 * i + 2];
      column_terms(q, tx, cx, a, b2, x0, x1);
      int h0, h1;
      halves(tx, x0, x1, h0, h1);
      for (int64_t py = y0; py <= y1; ++py) {
        const float dy = (static_cast<float>(py) + 0.5f) - cy;
        const float t3 = (c * dy) * dy;
        const int64_t base = (py - ty * TILE) * TILE;
        float* ar = acc[0] + base;
        float* ag = acc[1] + base;
        float* ab = acc[2] + base;
        for (int hh = h0; hh <= h1; ++hh) {
          const int j0 = hh * HALF;
          half_weights(q, j0, dy, t3, w);
          const V8 wv = load8(w + j0);  // acc = acc + w * colour, 8 lanes at once
          store8(ar + j0, load8(ar + j0) + wv * cr);
          store8(ag + j0, load8(ag + j0) + wv * cg);
          store8(ab + j0, load8(ab + j0) + wv * cb);
        }
      }
    }
    const int64_t ye = std::min<int64_t>(TILE, height - ty * TILE);
    const int64_t xe = std::min<int64_t>(TILE, width - tx * TILE);
    for (int64_t yy = 0; yy < ye; ++yy) {
      Out* row = out + ((ty * TILE + yy) * width + tx * TILE) * 3;
      for (int64_t xx = 0; xx < xe; ++xx) {
        for (int ch = 0; ch < 3; ++ch) {
          const float v = acc[ch][yy * TILE + xx];
          if constexpr (std::is_same_v<Out, uint8_t>) {
            row[3 * xx + ch] = to_u8(v);
          } else {
            row[3 * xx + ch] = v;
          }
        }
      }
    }
  }
}

void check_inputs(const at::Tensor& xy, const at::Tensor& abc, const at::Tensor& rgb,
                  const at::Tensor& box) {
  TORCH_CHECK(xy.device().is_cpu(), "splat_cpu runs on CPU tensors");
  TORCH_CHECK(xy.scalar_type() == at::kFloat && abc.scalar_type() == at::kFloat &&
                  rgb.scalar_type() == at::kFloat,
              "splat_cpu needs float32 xy, abc, rgb");
  TORCH_CHECK(box.scalar_type() == at::kLong, "splat_cpu needs int64 boxes");
  const int64_t m = xy.size(0);
  TORCH_CHECK(xy.dim() == 2 && xy.size(1) == 2, "xy must be [M, 2]");
  TORCH_CHECK(abc.dim() == 2 && abc.size(0) == m && abc.size(1) == 3, "abc must be [M, 3]");
  TORCH_CHECK(rgb.dim() == 2 && rgb.size(0) == m && rgb.size(1) == 3, "rgb must be [M, 3]");
  TORCH_CHECK(box.dim() == 2 && box.size(0) == m && box.size(1) == 4, "box must be [M, 4]");
}

// Checked, contiguous inputs of a forward render and their tile lists.
struct Prepared {
  at::Tensor xy, abc, rgb, box;
  Bins bins;
  Params params() const {
    return {xy.data_ptr<float>(), abc.data_ptr<float>(), rgb.data_ptr<float>(),
            box.data_ptr<int64_t>()};
  }
};

Prepared prepare(const at::Tensor& xy, const at::Tensor& abc, const at::Tensor& rgb,
                 const at::Tensor& box, int64_t height, int64_t width) {
  check_inputs(xy, abc, rgb, box);
  TORCH_CHECK(height > 0 && width > 0, "frame size must be positive");
  Prepared in{xy.contiguous(), abc.contiguous(), rgb.contiguous(), box.contiguous(), {}};
  in.bins = bin_tiles(in.box.data_ptr<int64_t>(), in.xy.size(0), height, width);
  return in;
}

// Image float32 [H, W, 3]; with keep_bins also the tile lists (start int32 [T+1], ids int32 [P])
// for the backward.
std::vector<at::Tensor> render_forward(at::Tensor xy, at::Tensor abc, at::Tensor rgb,
                                       at::Tensor box, int64_t height, int64_t width,
                                       bool keep_bins) {
  const Prepared in = prepare(xy, abc, rgb, box, height, width);
  const Bins& b = in.bins;
  at::Tensor out = at::empty({height, width, 3}, in.xy.options());
  forward_tiles(in.params(), b, height, width, out.data_ptr<float>());
  if (!keep_bins) return {out};
  auto i32 = at::TensorOptions().dtype(at::kInt);
  at::Tensor start = at::empty({static_cast<int64_t>(b.start.size())}, i32);
  at::Tensor ids = at::empty({static_cast<int64_t>(b.ids.size())}, i32);
  std::memcpy(start.data_ptr<int32_t>(), b.start.data(), b.start.size() * sizeof(int32_t));
  if (!b.ids.empty())
    std::memcpy(ids.data_ptr<int32_t>(), b.ids.data(), b.ids.size() * sizeof(int32_t));
  return {out, start, ids};
}

// codec.render.torch_tiles.pixel_boxes, operation for operation: the drawable rows (ascending)
// of xy float32 [N, 2], chol float32 [N, 3] and their clipped pixel boxes int64 [M, 4].
std::vector<at::Tensor> pixel_boxes(at::Tensor xy, at::Tensor chol, int64_t height,
                                    int64_t width) {
  TORCH_CHECK(xy.device().is_cpu() && xy.scalar_type() == at::kFloat &&
                  chol.scalar_type() == at::kFloat,
              "pixel_boxes needs float32 CPU tensors");
  TORCH_CHECK(xy.dim() == 2 && xy.size(1) == 2 && chol.dim() == 2 && chol.size(1) == 3 &&
                  chol.size(0) == xy.size(0),
              "pixel_boxes needs xy [N, 2] and chol [N, 3]");
  xy = xy.contiguous();
  chol = chol.contiguous();
  const int64_t n = xy.size(0);
  const float* p = xy.data_ptr<float>();
  const float* l = chol.data_ptr<float>();
  std::vector<int64_t> idx;
  std::vector<int64_t> box;
  idx.reserve(n);
  box.reserve(4 * n);
  for (int64_t i = 0; i < n; ++i) {
    const float l11 = l[3 * i], l21 = l[3 * i + 1], l22 = l[3 * i + 2];
    const float sxx = l11 * l11, sxy = l11 * l21, syy = l21 * l21 + l22 * l22;
    const float det = sxx * syy - sxy * sxy;
    const bool conic_ok =
        std::isfinite(syy / det) && std::isfinite(-sxy / det) && std::isfinite(sxx / det);
    if (!(std::isfinite(p[2 * i]) && std::isfinite(p[2 * i + 1]) && conic_ok && det > 0.0f))
      continue;
    const double d11 = l11, d21 = l21, d22 = l22;
    const double c[2] = {p[2 * i], p[2 * i + 1]};
    const double s[2] = {d11 * d11, d21 * d21 + d22 * d22};
    double lo[2], hi[2];
    bool finite = true;
    for (int k = 0; k < 2; ++k) {
      const double r = (3.0 * std::sqrt(s[k])) * (1.0 + 1e-3) + 1e-2;
      lo[k] = std::ceil((c[k] - r) - 0.5);
      hi[k] = std::floor((c[k] + r) - 0.5);
      finite = finite && std::isfinite(lo[k]) && std::isfinite(hi[k]);
    }
    if (!finite) continue;
    const double x0 = std::clamp(lo[0], 0.0, static_cast<double>(width));
    const double x1 = std::clamp(hi[0], -1.0, static_cast<double>(width - 1));
    const double y0 = std::clamp(lo[1], 0.0, static_cast<double>(height));
    const double y1 = std::clamp(hi[1], -1.0, static_cast<double>(height - 1));
    if (!(x0 <= x1 && y0 <= y1)) continue;
    idx.push_back(i);
    box.insert(box.end(), {static_cast<int64_t>(x0), static_cast<int64_t>(x1),
                           static_cast<int64_t>(y0), static_cast<int64_t>(y1)});
  }
  const int64_t m = static_cast<int64_t>(idx.size());
  auto i64 = at::TensorOptions().dtype(at::kLong);
  at::Tensor t_idx = at::empty({m}, i64);
  at::Tensor t_box = at::empty({m, 4}, i64);
  if (m > 0) {
    std::memcpy(t_idx.data_ptr<int64_t>(), idx.data(), m * sizeof(int64_t));
    std::memcpy(t_box.data_ptr<int64_t>(), box.data(), 4 * m * sizeof(int64_t));
  }
  return {t_idx, t_box};
}

// The canonical render as uint8 [H, W, 3] (the decoder's output), without a float image.
at::Tensor render_forward_u8(at::Tensor xy, at::Tensor abc, at::Tensor rgb, at::Tensor box,
                             int64_t height, int64_t width) {
  const Prepared in = prepare(xy, abc, rgb, box, height, width);
  at::Tensor out = at::empty({height, width, 3}, at::TensorOptions().dtype(at::kByte));
  forward_tiles(in.params(), in.bins, height, width, out.data_ptr<uint8_t>());
  return out;
}

// Gradients (xy [M, 2], abc [M, 3], rgb [M, 3]) of sum(grad_img * image). Per (gaussian, tile)
// pair sums are written to their own slot by the tile loop (threads never share a slot), then
// added per Gaussian in a fixed order: deterministic for any thread count.
std::vector<at::Tensor> render_backward(at::Tensor xy, at::Tensor abc, at::Tensor rgb,
                                        at::Tensor box, at::Tensor start, at::Tensor ids,
                                        at::Tensor grad_img) {
  check_inputs(xy, abc, rgb, box);
  xy = xy.contiguous();
  abc = abc.contiguous();
  rgb = rgb.contiguous();
  box = box.contiguous();
  grad_img = grad_img.to(at::kFloat).contiguous();
  const int64_t height = grad_img.size(0), width = grad_img.size(1), m = xy.size(0);
  const int64_t tiles_x = (width + TILE - 1) / TILE;
  const int64_t n_tiles = tiles_x * ((height + TILE - 1) / TILE);
  TORCH_CHECK(start.numel() == n_tiles + 1, "tile lists do not match the image size");
  const int32_t* st = start.data_ptr<int32_t>();
  const int32_t* id = ids.data_ptr<int32_t>();
  const float* gi = grad_img.data_ptr<float>();
  const float* pxy = xy.data_ptr<float>();
  const float* pabc = abc.data_ptr<float>();
  const float* prgb = rgb.data_ptr<float>();
  const int64_t* pbox = box.data_ptr<int64_t>();
  const int64_t n_pairs = ids.numel();
  std::vector<float> pair(static_cast<size_t>(n_pairs) * 8);

#pragma omp parallel for schedule(dynamic, 1) num_threads(at::get_num_threads())
  for (int64_t t = 0; t < n_tiles; ++t) {
    const int64_t tx = t % tiles_x, ty = t / tiles_x;
    if (st[t] == st[t + 1]) continue;
    // the tile's gradient image, de-interleaved once into 16-lane rows per channel (0 outside)
    alignas(32) float gt[3][TPIX];
    {
      const int64_t ye = std::min<int64_t>(TILE, height - ty * TILE);
      const int64_t xe = std::min<int64_t>(TILE, width - tx * TILE);
      std::memset(gt, 0, sizeof gt);
      for (int64_t yy = 0; yy < ye; ++yy) {
        const float* grow = gi + ((ty * TILE + yy) * width + tx * TILE) * 3;
        for (int64_t xx = 0; xx < xe; ++xx)
          for (int ch = 0; ch < 3; ++ch) gt[ch][yy * TILE + xx] = grow[3 * xx + ch];
      }
    }
    for (int32_t k = st[t]; k < st[t + 1]; ++k) {
      const int64_t i = id[k];
      int64_t x0, x1, y0, y1;
      clip_rect(pbox + 4 * i, tx, ty, x0, x1, y0, y1);
      const float cx = pxy[2 * i], cy = pxy[2 * i + 1];
      const float A = pabc[3 * i], B = pabc[3 * i + 1], C = pabc[3 * i + 2];
      const float a = -0.5f * A, b2 = 2.0f * (-0.5f * B), c = -0.5f * C;
      const float cr = prgb[3 * i], cg = prgb[3 * i + 1], cb = prgb[3 * i + 2];
      // sums over the pair's pixels of g = dL/dh and its moments in dx, dy, kept per lane
      Cols q;
      column_terms(q, tx, cx, a, b2, x0, x1);
      alignas(32) float w[TILE];
      // per-lane sums, two 8-lane halves each
      V8 l_dx[2] = {}, l_dy[2] = {}, l_dx2[2] = {}, l_dxdy[2] = {}, l_dy2[2] = {}, l_r[2] = {},
         l_g[2] = {}, l_b[2] = {};
      int h0, h1;
      halves(tx, x0, x1, h0, h1);
      for (int64_t py = y0; py <= y1; ++py) {
        const float dy = (static_cast<float>(py) + 0.5f) - cy;
        const float t3 = (c * dy) * dy;
        const int64_t base = (py - ty * TILE) * TILE;
        const float* g0 = gt[0] + base;
        const float* g1 = gt[1] + base;
        const float* g2 = gt[2] + base;
        for (int hh = h0; hh <= h1; ++hh) {
          const int j0 = hh * HALF;
          half_weights(q, j0, dy, t3, w);
          const V8 wv = load8(w + j0), a0 = load8(g0 + j0), a1 = load8(g1 + j0),
                   a2 = load8(g2 + j0), dx = load8(q.dx + j0);
          V8& o_r = l_r[hh];
          o_r = o_r + wv * a0;
          l_g[hh] = l_g[hh] + wv * a1;
          l_b[hh] = l_b[hh] + wv * a2;
          const V8 g = wv * ((a0 * cr + a1 * cg) + a2 * cb);  // dL/dh
          const V8 gdx = g * dx;
          l_dx[hh] = l_dx[hh] + gdx;
          l_dy[hh] = l_dy[hh] + g * dy;
          l_dx2[hh] = l_dx2[hh] + gdx * dx;
          l_dxdy[hh] = l_dxdy[hh] + gdx * dy;
          l_dy2[hh] = l_dy2[hh] + (g * dy) * dy;
        }
      }
      float s_g_dx = 0, s_g_dy = 0, s_g_dx2 = 0, s_g_dxdy = 0, s_g_dy2 = 0;
      float s_r = 0, s_gr = 0, s_b = 0;
      for (int j = 0; j < TILE; ++j) {  // lanes in order: 0..7 of half 0, then half 1
        const int hh = j / HALF, jj = j % HALF;
        s_g_dx += l_dx[hh][jj];
        s_g_dy += l_dy[hh][jj];
        s_g_dx2 += l_dx2[hh][jj];
        s_g_dxdy += l_dxdy[hh][jj];
        s_g_dy2 += l_dy2[hh][jj];
        s_r += l_r[hh][jj];
        s_gr += l_g[hh][jj];
        s_b += l_b[hh][jj];
      }
      // h = -(A dx^2 + 2 B dx dy + C dy^2) / 2, dx = px - cx:
      // dh/dcx = A dx + B dy, dh/dcy = B dx + C dy, dh/dA = -dx^2/2, dh/dB = -dx dy, dh/dC = -dy^2/2
      float* o = pair.data() + static_cast<size_t>(k) * 8;
      o[0] = A * s_g_dx + B * s_g_dy;
      o[1] = B * s_g_dx + C * s_g_dy;
      o[2] = -0.5f * s_g_dx2;
      o[3] = -s_g_dxdy;
      o[4] = -0.5f * s_g_dy2;
      o[5] = s_r;
      o[6] = s_gr;
      o[7] = s_b;
    }
  }
  at::Tensor grads = at::zeros({m, 8}, xy.options());
  float* g = grads.data_ptr<float>();
  for (int64_t k = 0; k < n_pairs; ++k) {
    float* gg = g + static_cast<int64_t>(id[k]) * 8;
    const float* o = pair.data() + static_cast<size_t>(k) * 8;
    for (int q = 0; q < 8; ++q) gg[q] += o[q];
  }
  return {grads.slice(1, 0, 2), grads.slice(1, 2, 5), grads.slice(1, 5, 8)};
}

// render_backward for the fit loop: the gradients of the N rows the M drawable ones came from,
// float32 [N, 8] = (xy, chol, rgb), zero for rows that draw nothing. ``chol`` [M, 3] are the
// drawable rows' Cholesky factors (the conic's source) and ``idx`` int64 [M] their rows. The
// conic's chain rule (codec.gaussians.conic is L^-T L^-1): with A = 1/l11^2 + l21^2/(l11 l22)^2,
// B = -l21/(l11 l22^2), C = 1/l22^2, dA = (-2A/l11, 2 l21/(l11 l22)^2, -2 l21^2/(l11^2 l22^3)),
// dB = (-B/l11, -1/(l11 l22^2), -2B/l22), dC = (0, 0, -2/l22^3). tests/codec/test_fit_objective.py
// holds the result to autograd through conic().
at::Tensor render_backward_rows(at::Tensor xy, at::Tensor abc, at::Tensor rgb, at::Tensor box,
                                at::Tensor start, at::Tensor ids, at::Tensor grad_img,
                                at::Tensor chol, at::Tensor idx, int64_t n) {
  const int64_t m = xy.size(0);
  TORCH_CHECK(chol.scalar_type() == at::kFloat && chol.dim() == 2 && chol.size(0) == m &&
                  chol.size(1) == 3,
              "chol must be float32 [M, 3]");
  TORCH_CHECK(idx.scalar_type() == at::kLong && idx.numel() == m, "idx must be int64 [M]");
  const std::vector<at::Tensor> g = render_backward(xy, abc, rgb, box, start, ids, grad_img);
  // g[0] is the [M, 2] view at the start of the [M, 8] rows (xy, abc, rgb)
  TORCH_CHECK(m == 0 || g[0].stride(0) == 8, "unexpected gradient layout");
  const float* pg = g[0].data_ptr<float>();
  chol = chol.contiguous();
  idx = idx.contiguous();
  const float* pc = chol.data_ptr<float>();
  const int64_t* pi = idx.data_ptr<int64_t>();
  at::Tensor out = at::zeros({n, 8}, xy.options());
  float* po = out.data_ptr<float>();
  for (int64_t r = 0; r < m; ++r) {
    const int64_t row = pi[r];
    TORCH_CHECK(row >= 0 && row < n, "row index out of range");
    const float* gr = pg + 8 * r;
    float* o = po + 8 * row;
    const float l11 = pc[3 * r], l21 = pc[3 * r + 1], l22 = pc[3 * r + 2];
    const float ga = gr[2], gb = gr[3], gc = gr[4];
    const float i11 = 1.0f / l11, i22 = 1.0f / l22, i22sq = i22 * i22;
    const float t = l21 * i11 * i22;
    const float a = i11 * i11 + t * t;
    const float b = -l21 * i11 * i22sq;
    const float u = i11 * i22;
    o[0] = gr[0];
    o[1] = gr[1];
    o[2] = ga * (-2.0f * a * i11) + gb * (-b * i11);
    o[3] = ga * (2.0f * l21 * (u * u)) + gb * (-i11 * i22sq);
    o[4] = ga * (-2.0f * l21 * l21 * i11 * i11 * i22sq * i22) + gb * (-2.0f * b * i22) +
           gc * (-2.0f * i22sq * i22);
    o[5] = gr[5];
    o[6] = gr[6];
    o[7] = gr[7];
  }
  return out;
}

// Which of M drawable Gaussians (xy [M, 2], conic abc [M, 3], box int64 [M, 4]) cover a set pixel
// of mask (bool [H, W]) with non-zero weight in the canonical render (h >= -4.5 inside the box,
// h computed as forward_tiles does): bool [M]. The P-frame's choice of rows to optimise.
at::Tensor touching(at::Tensor xy, at::Tensor abc, at::Tensor box, at::Tensor mask) {
  TORCH_CHECK(xy.device().is_cpu() && xy.scalar_type() == at::kFloat &&
                  abc.scalar_type() == at::kFloat && box.scalar_type() == at::kLong,
              "touching needs float32 xy, abc and int64 boxes on the CPU");
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.dim() == 2, "mask must be bool [H, W]");
  const int64_t m = xy.size(0);
  TORCH_CHECK(xy.dim() == 2 && xy.size(1) == 2 && abc.dim() == 2 && abc.size(0) == m &&
                  abc.size(1) == 3 && box.dim() == 2 && box.size(0) == m && box.size(1) == 4,
              "touching needs xy [M, 2], abc [M, 3], box [M, 4]");
  xy = xy.contiguous();
  abc = abc.contiguous();
  box = box.contiguous();
  mask = mask.contiguous();
  const int64_t h = mask.size(0), w = mask.size(1);
  const float* pxy = xy.data_ptr<float>();
  const float* pabc = abc.data_ptr<float>();
  const int64_t* pbox = box.data_ptr<int64_t>();
  const bool* pm = mask.data_ptr<bool>();
  at::Tensor out = at::zeros({m}, at::TensorOptions().dtype(at::kBool));
  bool* po = out.data_ptr<bool>();
#pragma omp parallel for schedule(dynamic, 64) num_threads(at::get_num_threads())
  for (int64_t i = 0; i < m; ++i) {
    const int64_t* bx = pbox + 4 * i;
    const int64_t x0 = std::max<int64_t>(bx[0], 0), x1 = std::min<int64_t>(bx[1], w - 1);
    const int64_t y0 = std::max<int64_t>(bx[2], 0), y1 = std::min<int64_t>(bx[3], h - 1);
    const float cx = pxy[2 * i], cy = pxy[2 * i + 1];
    const float a = -0.5f * pabc[3 * i], b2 = 2.0f * (-0.5f * pabc[3 * i + 1]),
                c = -0.5f * pabc[3 * i + 2];
    bool hit = false;
    for (int64_t py = y0; py <= y1 && !hit; ++py) {
      const float dy = (static_cast<float>(py) + 0.5f) - cy;
      const float t3 = (c * dy) * dy;
      const bool* row = pm + py * w;
      for (int64_t px = x0; px <= x1; ++px) {
        if (!row[px]) continue;
        const float dx = (static_cast<float>(px) + 0.5f) - cx;
        float hh = (a * dx) * dx + (b2 * dx) * dy;
        hh = hh + t3;
        if (hh >= CUTOFF) {
          hit = true;
          break;
        }
      }
    }
    po[i] = hit;
  }
  return out;
}

// The fit loop's per-iteration statistics of a rendering img against target (float32 [H, W, 3],
// C-contiguous) in one pass, so the loop needs no per-pixel PyTorch operations:
//   out[0] = sum (img - target)^2                          (the squared error, float64 sums)
//   out[1] = sum (round(clamp(img, 0, 1) * 255) - target * 255)^2     (8-bit error, for PSNR)
//   out[2] = number of pixels where `changed` (bool [H, W]; empty = nowhere) is set and the
//            5x5 mean (window clipped at the borders, as avg_pool2d with count_include_pad=False)
//            of max-over-RGB |target - img| exceeds `threshold` (codec.fit.unresolved_mask)
// With want_grad also grad = 2 (img - target) / (3 H W), the gradient of the mean squared
// error. Row sums are added in row order: the result does not depend on the thread count.
std::vector<at::Tensor> residual_stats(at::Tensor img, at::Tensor target, at::Tensor changed,
                                       double threshold, bool want_grad) {
  TORCH_CHECK(img.device().is_cpu() && img.scalar_type() == at::kFloat &&
                  target.scalar_type() == at::kFloat,
              "residual_stats needs float32 CPU images");
  TORCH_CHECK(img.dim() == 3 && img.size(2) == 3 && target.sizes() == img.sizes(),
              "residual_stats needs img and target of one shape [H, W, 3]");
  img = img.contiguous();
  target = target.contiguous();
  const int64_t h = img.size(0), w = img.size(1);
  const bool masked = changed.numel() > 0;
  if (masked) {
    TORCH_CHECK(changed.scalar_type() == at::kBool && changed.dim() == 2 && changed.size(0) == h &&
                    changed.size(1) == w,
                "residual_stats needs changed as bool [H, W] (or empty)");
    changed = changed.contiguous();
  }
  const float* pi = img.data_ptr<float>();
  const float* pt = target.data_ptr<float>();
  at::Tensor grad;
  float* pg = nullptr;
  if (want_grad) {
    grad = at::empty_like(img);
    pg = grad.data_ptr<float>();
  }
  const float scale = 2.0f / static_cast<float>(3 * h * w);
  std::vector<double> row_sse(h), row_sse8(h);
  std::vector<float> dmax(masked ? h * w : 0);
#pragma omp parallel for schedule(static) num_threads(at::get_num_threads())
  for (int64_t y = 0; y < h; ++y) {
    // the row's 3W values: 8-lane float sums over whole vectors, the rest one by one
    const float* ri = pi + y * w * 3;
    const float* rt = pt + y * w * 3;
    float* rg = pg ? pg + y * w * 3 : nullptr;
    const int64_t n = w * 3, nv = n / 8 * 8;
    V8 s_v = {}, s8_v = {};
    const float shifter = 12582912.0f;  // 1.5 * 2^23: (v + s) - s rounds v in [0, 255] half-even
    for (int64_t k = 0; k < nv; k += 8) {
      const V8 vi = load8(ri + k), vt = load8(rt + k);
      const V8 e = vi - vt;
      s_v = s_v + e * e;
      V8 c = vi;
      for (int j = 0; j < 8; ++j) c[j] = std::min(std::max(c[j], 0.0f), 1.0f);
      const V8 a = ((c * 255.0f) + shifter) - shifter;
      const V8 e8 = a - vt * 255.0f;
      s8_v = s8_v + e8 * e8;
      if (rg) store8(rg + k, e * scale);
    }
    double sse = 0.0, sse8 = 0.0;
    for (int j = 0; j < 8; ++j) {
      sse += s_v[j];
      sse8 += s8_v[j];
    }
    for (int64_t k = nv; k < n; ++k) {
      const float e = ri[k] - rt[k];
      sse += static_cast<double>(e) * e;
      const float a = std::nearbyint(std::min(std::max(ri[k], 0.0f), 1.0f) * 255.0f);
      const float e8 = a - rt[k] * 255.0f;
      sse8 += static_cast<double>(e8) * e8;
      if (rg) rg[k] = e * scale;
    }
    if (masked) {
      for (int64_t x = 0; x < w; ++x) {
        float m = 0.0f;
        for (int ch = 0; ch < 3; ++ch) m = std::max(m, std::fabs(ri[3 * x + ch] - rt[3 * x + ch]));
        dmax[y * w + x] = m;
      }
    }
    row_sse[y] = sse;
    row_sse8[y] = sse8;
  }
  double sse = 0.0, sse8 = 0.0;
  for (int64_t y = 0; y < h; ++y) {
    sse += row_sse[y];
    sse8 += row_sse8[y];
  }
  int64_t unresolved = 0;
  if (masked) {
    const bool* pc = changed.data_ptr<bool>();
    std::vector<float> col(h * w, 0.0f);  // vertical 5-sums, rows added in order
#pragma omp parallel for schedule(static) num_threads(at::get_num_threads())
    for (int64_t y = 0; y < h; ++y) {
      const int64_t y0 = std::max<int64_t>(0, y - 2), y1 = std::min<int64_t>(h - 1, y + 2);
      float* __restrict__ c = col.data() + y * w;
      for (int64_t yy = y0; yy <= y1; ++yy) {
        const float* __restrict__ d = dmax.data() + yy * w;
        for (int64_t x = 0; x < w; ++x) c[x] = c[x] + d[x];
      }
    }
#pragma omp parallel for schedule(static) reduction(+ : unresolved) num_threads(at::get_num_threads())
    for (int64_t y = 0; y < h; ++y) {
      const int64_t ny = std::min<int64_t>(h - 1, y + 2) - std::max<int64_t>(0, y - 2) + 1;
      for (int64_t x = 0; x < w; ++x) {
        if (!pc[y * w + x]) continue;
        const int64_t x0 = std::max<int64_t>(0, x - 2), x1 = std::min<int64_t>(w - 1, x + 2);
        float s = 0.0f;
        for (int64_t xx = x0; xx <= x1; ++xx) s += col[y * w + xx];
        const float mean = s / static_cast<float>(ny * (x1 - x0 + 1));
        unresolved += mean > static_cast<float>(threshold);
      }
    }
  }
  at::Tensor out = at::empty({3}, at::TensorOptions().dtype(at::kDouble));
  double* po = out.data_ptr<double>();
  po[0] = sse;
  po[1] = sse8;
  po[2] = static_cast<double>(unresolved);
  if (want_grad) return {out, grad};
  return {out};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("render_forward", &render_forward, "fused tile render (CPU)");
  m.def("pixel_boxes", &pixel_boxes, "drawable Gaussians and their pixel boxes (CPU)");
  m.def("render_forward_u8", &render_forward_u8, "fused tile render to uint8 (CPU)");
  m.def("render_backward", &render_backward, "fused tile render backward (CPU)");
  m.def("render_backward_rows", &render_backward_rows,
        "fused tile render backward to the rows' xy, chol, rgb (CPU)");
  m.def("touching", &touching, "Gaussians covering a masked pixel in the canonical render (CPU)");
  m.def("residual_stats", &residual_stats, "fit-loop error statistics and MSE gradient (CPU)");
}
