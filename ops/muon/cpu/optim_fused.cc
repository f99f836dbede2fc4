// The optimiser's elementwise parts as a few CPU kernels that update parameters and state IN PLACE
// (MindSpore ops.Custom, func_type="aot"; ops/muon/cpp.py builds one primitive per tensor count).
//
// Why: MuonAdamW's graph-op form issues ~10 small kernels per Muon matrix and ~15 per AdamW tensor (about 2,300
// per step on the tiny preset, 3,000 on small); on CPU each kernel costs tens of microseconds of runtime work,
// far more than its arithmetic (docs/performance.md, "Training step"). Here one kernel covers a whole Newton–Schulz
// bucket (momentum in, update out) and one all AdamW tensors, and one the global gradient norm.
//
// In place: the kernels write through the input pointers of the parameters / state tensors and return a
// 1-element token that the caller makes its result depend on. MindSpore passes a Parameter's own buffer only to
// an input declared written (ops/muon/cpp.py declares them RW_WRITE, side_effect_mem); an undeclared one may be a
// TensorMove copy of it, and the write would be lost. Every formula is the graph-op one (ascend_v4/train/optim.py) in the same float32 operation order, built
// with -ffp-contract=off, so the results are bitwise those of the graph ops.
//
//   MuonMomentumStack(cfg f32[2] = (mu, nesterov), gscale f32[1], m_1..m_n, g_1..g_n) -> x [K, r, c]
//       g ← g·gscale;  m ← m·mu + g (written);  x_i = nesterov ? g + m·mu : m   (x = the members, stacked)
//   MuonApply(o [K, r, c], lr f32[1], decay f32[1], scale f32[n], w_1..w_n) -> token f32[1]
//       w ← w·decay − o·(lr·scale_i)                                                    (written)
//   AdamWApply(cfg f32[5] = (b1, 1−b1, b2, 1−b2, eps), s f32[5] = (lr, decay, bc1, bc2, gscale),
//              w_1..w_n, m_1..m_n, v_1..v_n, g_1..g_n) -> token f32[1]
//       g ← g·gscale;  m ← m·b1 + g·(1−b1);  v ← v·b2 + (g·g)·(1−b2);
//       w ← w·decay − ((m/bc1) / (sqrt(v/bc2) + eps))·lr                                (all written)
//   SumSquares(g_1..g_n) -> f32[1] = Σ g² (accumulated in double)
#include <cmath>
#include <cstdint>
#include <cstring>

#include "aot.h"

namespace {

inline bool all_f32(int n, const char** dtypes) {
  for (int i = 0; i < n; ++i)
    if (!av4::is_f32(dtypes[i])) return false;
  return true;
}

}  // namespace

extern "C" int MuonMomentumStack(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                                 void*, void*) {
  // inputs: cfg, gscale, m * n, g * n; output x
  if (nparam < 5 || (nparam - 3) % 2 != 0) return 1;
  if (!all_f32(nparam, dtypes)) return 2;
  const int n = (nparam - 3) / 2;
  const float* cfg = static_cast<const float*>(params[0]);
  const float mu = cfg[0];
  const bool nesterov = cfg[1] != 0.f;
  const float gs = static_cast<const float*>(params[1])[0];
  float* x = static_cast<float*>(params[nparam - 1]);
  const int64_t total = av4::numel(ndims[nparam - 1], shapes[nparam - 1]);
  int64_t off = 0;
  for (int i = 0; i < n; ++i) {
    float* m = static_cast<float*>(params[2 + i]);
    const float* g = static_cast<const float*>(params[2 + n + i]);
    const int64_t len = av4::numel(ndims[2 + i], shapes[2 + i]);
    if (av4::numel(ndims[2 + n + i], shapes[2 + n + i]) != len || off + len > total) return 3;
    float* xo = x + off;
    for (int64_t j = 0; j < len; ++j) {
      const float gj = g[j] * gs;
      const float mj = m[j] * mu + gj;
      m[j] = mj;
      xo[j] = nesterov ? gj + mj * mu : mj;
    }
    off += len;
  }
  return off == total ? 0 : 4;
}

extern "C" int MuonApply(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*,
                         void*) {
  // inputs: o, lr, decay, scale[n], w * n; output token
  if (nparam < 6) return 1;
  if (!all_f32(nparam, dtypes)) return 2;
  const int n = nparam - 5;
  const float* o = static_cast<const float*>(params[0]);
  const float lr = static_cast<const float*>(params[1])[0];
  const float decay = static_cast<const float*>(params[2])[0];
  const float* scale = static_cast<const float*>(params[3]);
  if (av4::numel(ndims[3], shapes[3]) != n) return 3;
  const int64_t total = av4::numel(ndims[0], shapes[0]);
  int64_t off = 0;
  for (int i = 0; i < n; ++i) {
    float* w = static_cast<float*>(params[4 + i]);
    const int64_t len = av4::numel(ndims[4 + i], shapes[4 + i]);
    if (off + len > total) return 4;
    const float ls = lr * scale[i];
    const float* oi = o + off;
    for (int64_t j = 0; j < len; ++j) w[j] = w[j] * decay - oi[j] * ls;
    off += len;
  }
  static_cast<float*>(params[nparam - 1])[0] = 0.f;
  return off == total ? 0 : 5;
}

extern "C" int AdamWApply(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*,
                          void*) {
  // inputs: cfg, s, w * n, m * n, v * n, g * n; output token
  if (nparam < 7 || (nparam - 3) % 4 != 0) return 1;
  if (!all_f32(nparam, dtypes)) return 2;
  const int n = (nparam - 3) / 4;
  const float* cfg = static_cast<const float*>(params[0]);
  const float b1 = cfg[0], c1 = cfg[1], b2 = cfg[2], c2 = cfg[3], eps = cfg[4];
  const float* s = static_cast<const float*>(params[1]);
  const float lr = s[0], decay = s[1], bc1 = s[2], bc2 = s[3], gs = s[4];
  for (int i = 0; i < n; ++i) {
    float* w = static_cast<float*>(params[2 + i]);
    float* m = static_cast<float*>(params[2 + n + i]);
    float* v = static_cast<float*>(params[2 + 2 * n + i]);
    const float* g = static_cast<const float*>(params[2 + 3 * n + i]);
    const int64_t len = av4::numel(ndims[2 + i], shapes[2 + i]);
    for (int k = 1; k < 4; ++k)
      if (av4::numel(ndims[2 + k * n + i], shapes[2 + k * n + i]) != len) return 3;
    for (int64_t j = 0; j < len; ++j) {
      const float gj = g[j] * gs;
      const float mj = m[j] * b1 + gj * c1;
      const float vj = v[j] * b2 + (gj * gj) * c2;
      m[j] = mj;
      v[j] = vj;
      const float upd = (mj / bc1) / (std::sqrt(vj / bc2) + eps);
      w[j] = w[j] * decay - upd * lr;
    }
  }
  static_cast<float*>(params[nparam - 1])[0] = 0.f;
  return 0;
}

extern "C" int SumSquares(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*,
                          void*) {
  if (nparam < 2) return 1;
  if (!all_f32(nparam, dtypes)) return 2;
  double acc = 0.0;
  for (int i = 0; i + 1 < nparam; ++i) {
    const float* g = static_cast<const float*>(params[i]);
    const int64_t len = av4::numel(ndims[i], shapes[i]);
    for (int64_t j = 0; j < len; ++j) acc += double(g[j]) * double(g[j]);
  }
  static_cast<float*>(params[nparam - 1])[0] = float(acc);
  return 0;
}
