// RMS norm as one CPU kernel each way (MindSpore ops.Custom, func_type="aot"; ops/attention/cpp.py), used by
// ops/common.py `rms_norm` on CPU for float32: the graph-op form is ~7 kernels forward and ~12 backward per norm
// (square, the mean as a MatMul, add, rsqrt, two products, and their gradients), whose runtime overhead dominated
// the tiny preset's train step (docs/performance.md, "Training step").
//
//   RmsNormFwd(x [N, D] f32, w [D] f32 (or [1] dummy), cfg f32[2] = (eps, has_w)) -> y [N, D], r [N]
//       r_i = 1 / sqrt(mean_j x_ij² + eps)   (sum of squares in double);   y_ij = (x_ij · r_i) · w_j
//   RmsNormBwd(x, w, r, dy, cfg) -> dx [N, D], dw (shape of w)
//       dx_ij = r_i · w_j · dy_ij − x_ij · r_i³ · (1/D) Σ_k x_ik w_k dy_ik;   dw_j = Σ_i dy_ij · x_ij · r_i
// (dot products and dw accumulated in double; the leading dims of x are flattened into N).
#include <cmath>
#include <cstdint>
#include <vector>

#include "aot.h"

extern "C" int RmsNormFwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*,
                          void*) {
  if (nparam != 5) return 1;
  for (int i = 0; i < 5; ++i)
    if (!av4::is_f32(dtypes[i])) return 2;
  const int64_t D = shapes[0][ndims[0] - 1];
  const int64_t N = D > 0 ? av4::numel(ndims[0], shapes[0]) / D : 0;
  const float* x = static_cast<const float*>(params[0]);
  const float* w = static_cast<const float*>(params[1]);
  const float* cfg = static_cast<const float*>(params[2]);
  float* y = static_cast<float*>(params[3]);
  float* r = static_cast<float*>(params[4]);
  const float eps = cfg[0];
  const bool has_w = cfg[1] != 0.f;
  if (has_w && av4::numel(ndims[1], shapes[1]) != D) return 3;
  for (int64_t i = 0; i < N; ++i) {
    const float* xi = x + i * D;
    double ss = 0.0;
    for (int64_t j = 0; j < D; ++j) ss += double(xi[j]) * double(xi[j]);
    const float ri = 1.f / std::sqrt(float(ss / double(D)) + eps);
    r[i] = ri;
    float* yi = y + i * D;
    if (has_w)
      for (int64_t j = 0; j < D; ++j) yi[j] = (xi[j] * ri) * w[j];
    else
      for (int64_t j = 0; j < D; ++j) yi[j] = xi[j] * ri;
  }
  return 0;
}

extern "C" int RmsNormBwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*,
                          void*) {
  if (nparam != 7) return 1;
  for (int i = 0; i < 7; ++i)
    if (!av4::is_f32(dtypes[i])) return 2;
  const int64_t D = shapes[0][ndims[0] - 1];
  const int64_t N = D > 0 ? av4::numel(ndims[0], shapes[0]) / D : 0;
  const float* x = static_cast<const float*>(params[0]);
  const float* w = static_cast<const float*>(params[1]);
  const float* r = static_cast<const float*>(params[2]);
  const float* dy = static_cast<const float*>(params[3]);
  const float* cfg = static_cast<const float*>(params[4]);
  float* dx = static_cast<float*>(params[5]);
  float* dw = static_cast<float*>(params[6]);
  const bool has_w = cfg[1] != 0.f;
  const int64_t nw = av4::numel(ndims[6], shapes[6]);
  if (has_w && nw != D) return 3;
  std::vector<double> acc(has_w ? size_t(D) : 0, 0.0);
  for (int64_t i = 0; i < N; ++i) {
    const float* xi = x + i * D;
    const float* gi = dy + i * D;
    float* di = dx + i * D;
    const double ri = r[i];
    double dot = 0.0;
    if (has_w) {
      for (int64_t j = 0; j < D; ++j) {
        dot += double(xi[j]) * double(w[j]) * double(gi[j]);
        acc[size_t(j)] += double(gi[j]) * double(xi[j]) * ri;
      }
    } else {
      for (int64_t j = 0; j < D; ++j) dot += double(xi[j]) * double(gi[j]);
    }
    const double c = ri * ri * ri * dot / double(D);
    if (has_w)
      for (int64_t j = 0; j < D; ++j) di[j] = float(ri * double(w[j]) * double(gi[j]) - double(xi[j]) * c);
    else
      for (int64_t j = 0; j < D; ++j) di[j] = float(ri * double(gi[j]) - double(xi[j]) * c);
  }
  if (has_w)
    for (int64_t j = 0; j < D; ++j) dw[j] = float(acc[size_t(j)]);
  else
    for (int64_t j = 0; j < nw; ++j) dw[j] = 0.f;
  return 0;
}
