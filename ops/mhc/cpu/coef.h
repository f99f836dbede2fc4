// Per-token mHC coefficients (the reference's hc_pre / hc_split_sinkhorn): pre/post sigmoids and the Sinkhorn-normalised comb, forward and exact
// backward. Everything here is O(hc^2 * iters) per token, so it runs in double: it is ~0.1% of the token's work
// and keeps the 20-iteration chain far below float32 noise.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

namespace mhc {

constexpr int HC_MAX = 8;                         // streams; V4 uses 4
constexpr int M_MAX = (2 + HC_MAX) * HC_MAX;      // mix rows

inline double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

// Scale group of mix row m: hc_pre uses (pre, post, comb) = rows [0,hc), [hc,2hc), [2hc, M); hc_head one group.
inline int scale_group(int m, int hc, bool head) { return head ? 0 : (m < hc ? 0 : (m < 2 * hc ? 1 : 2)); }

// Sinkhorn exactly as the reference: softmax over each row + eps, column norm, then (iters-1) x (row, column).
// `trace` (optional) receives, for each of the 2*iters steps, the step's output matrix (n*n) and its denominators
// (n): the backward pass recomputes this per token instead of storing it globally.
inline int sinkhorn_steps(int iters) { return 2 * iters; }

inline void sinkhorn_forward(const double* c0, int n, int iters, double eps, double* out, double* trace) {
  const int nn = n * n, rec = nn + n;
  double c[HC_MAX * HC_MAX];
  int step = 0;
  auto record = [&](const double* den) {
    if (!trace) return;
    double* r = trace + static_cast<int64_t>(step) * rec;
    for (int i = 0; i < nn; ++i) r[i] = c[i];
    for (int i = 0; i < n; ++i) r[nn + i] = den[i];
  };
  double den[HC_MAX];
  for (int j = 0; j < n; ++j) {  // softmax over k, then + eps; "den" records the softmax sum
    double mx = c0[j * n];
    for (int k = 1; k < n; ++k) mx = std::fmax(mx, c0[j * n + k]);
    double s = 0;
    for (int k = 0; k < n; ++k) s += (c[j * n + k] = std::exp(c0[j * n + k] - mx));
    for (int k = 0; k < n; ++k) c[j * n + k] = c[j * n + k] / s + eps;
    den[j] = s;
  }
  record(den);
  ++step;
  auto normalise = [&](bool column) {  // each row (column) divided by eps + its sum; den[a] = that divisor
    for (int a = 0; a < n; ++a) {
      double s = eps;
      for (int b = 0; b < n; ++b) s += c[column ? b * n + a : a * n + b];
      for (int b = 0; b < n; ++b) c[column ? b * n + a : a * n + b] /= s;
      den[a] = s;
    }
    record(den);
    ++step;
  };
  for (int it = 0; it < iters; ++it) {
    if (it > 0) normalise(false);  // row normalisation (the first one is the softmax above)
    normalise(true);
  }
  for (int i = 0; i < nn; ++i) out[i] = c[i];
}

// g (n*n, cotangent of the Sinkhorn output) -> gradient w.r.t. the logits c0, through every iteration.
// out = in / den along an axis  =>  g_in = (g_out - sum_axis(g_out * out)) / den.
inline void sinkhorn_backward(const double* c0, int n, int iters, double eps, const double* g, double* gc0,
                              std::vector<double>& trace) {
  const int nn = n * n, rec = nn + n, steps = sinkhorn_steps(iters);
  trace.resize(static_cast<size_t>(steps) * rec);
  double out[HC_MAX * HC_MAX];
  sinkhorn_forward(c0, n, iters, eps, out, trace.data());
  double gr[HC_MAX * HC_MAX];
  for (int i = 0; i < nn; ++i) gr[i] = g[i];
  for (int step = steps - 1; step >= 1; --step) {
    const double* o = trace.data() + static_cast<int64_t>(step) * rec;
    const double* den = o + nn;
    const bool column = (step % 2) == 1;  // steps: 0 softmax, 1 col, 2 row, 3 col, ...
    for (int a = 0; a < n; ++a) {
      double dot = 0;
      for (int b = 0; b < n; ++b) {
        const int idx = column ? b * n + a : a * n + b;
        dot += gr[idx] * o[idx];
      }
      for (int b = 0; b < n; ++b) {
        const int idx = column ? b * n + a : a * n + b;
        gr[idx] = (gr[idx] - dot) / den[a];
      }
    }
  }
  const double* o = trace.data();  // softmax step: p = out - eps, g_c0 = p * (g - sum_k g * p)
  for (int j = 0; j < n; ++j) {
    double dot = 0;
    for (int k = 0; k < n; ++k) dot += gr[j * n + k] * (o[j * n + k] - eps);
    for (int k = 0; k < n; ++k) gc0[j * n + k] = (o[j * n + k] - eps) * (gr[j * n + k] - dot);
  }
}

// Logits z[m] = mix[m] * scale[group(m)] + base[m].
inline void logits(const double* mix, const float* scale, const float* base, int M, int hc, bool head, double* z) {
  for (int m = 0; m < M; ++m) z[m] = mix[m] * static_cast<double>(scale[scale_group(m, hc, head)]) + base[m];
}

// mix (M values) -> pre (hc), and unless head: post (hc), comb (hc*hc).
inline void coef_forward(const double* mix, const float* scale, const float* base, int hc, bool head, int iters,
                         double eps, double* pre, double* post, double* comb) {
  const int M = head ? hc : (2 + hc) * hc;
  double z[M_MAX];
  logits(mix, scale, base, M, hc, head, z);
  for (int i = 0; i < hc; ++i) pre[i] = sigmoid(z[i]) + eps;
  if (head) return;
  for (int i = 0; i < hc; ++i) post[i] = 2.0 * sigmoid(z[hc + i]);
  sinkhorn_forward(z + 2 * hc, hc, iters, eps, comb, nullptr);
}

// Cotangents of (pre, post, comb) -> gz[m] = d loss / d z[m] (the logits, before scale and base).
inline void coef_backward(const double* mix, const float* scale, const float* base, int hc, bool head, int iters,
                          double eps, const double* gpre, const double* gpost, const double* gcomb, double* gz,
                          std::vector<double>& trace) {
  const int M = head ? hc : (2 + hc) * hc;
  double z[M_MAX];
  logits(mix, scale, base, M, hc, head, z);
  for (int i = 0; i < hc; ++i) {
    const double s = sigmoid(z[i]);
    gz[i] = gpre[i] * s * (1.0 - s);
  }
  if (head) return;
  for (int i = 0; i < hc; ++i) {
    const double s = sigmoid(z[hc + i]);
    gz[hc + i] = gpost[i] * 2.0 * s * (1.0 - s);
  }
  sinkhorn_backward(z + 2 * hc, hc, iters, eps, gcomb, gz + 2 * hc, trace);
}

}  // namespace mhc
