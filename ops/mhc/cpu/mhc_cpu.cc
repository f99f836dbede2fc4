// mHC CPU kernels for MindSpore ops.Custom(func_type="aot"): hc_pre / hc_head / hc_post, forward and backward.
//
// Layout (docs/design.md): x [T, hc, D] flattened per token to v [K = hc*D]; fn [M, K] with M = (2+hc)*hc for hc_pre
// and M = hc for hc_head. Streams (x, y, f, residual, out and their gradients) are float32 or raw bfloat16;
// everything else (fn, scale, base, post, comb, mix, rstd, cfg) is float32 - the Python wrapper casts.
// Compute is float32 on 8-lane FMAs with double accumulation of the per-chunk partial sums; the per-token
// coefficient math (sigmoids, 20 Sinkhorn iterations and their exact backward) is in double (coef.h).
//
// Work split: OpenMP over blocks of TB tokens. The fn GEMV (24 x 16384 MACs per token at D=4096) dominates,
// so tokens of a block share each fn chunk while it is hot in L2 (4 at a time in registers). The fn gradient
// (a reduction over tokens) is a second GEMM-like pass over column slabs of fn: each thread owns whole slabs,
// so there are no atomics, no per-thread copies of the 1.5 MB gradient, and the result does not depend on the
// thread count.
// Schedules are dynamic: on a shared machine a descheduled thread must not hold a static share of the work
// (results are per-token or per-slab, so they are identical for any schedule).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "aot.h"
#include "coef.h"
#include "vec8.h"

namespace mhc {
namespace {

constexpr int64_t TB = 8;      // tokens per block (forward / backward token passes)
constexpr int64_t KC = 512;    // K chunk in elements: a 24-row fn chunk is 48 KB (L2), 8 token rows 16 KB (L1)
constexpr int64_t DC = 256;    // D chunk of the gx pass: 24 fn rows x 1 KB
constexpr int64_t SLAB = 64;   // fn-gradient columns per work item
constexpr int64_t TB2 = 256;   // tokens per fn-gradient sweep (their x slab stays in L1/L2)

enum Status : int { OK = 0, BAD_ARITY = 1, BAD_DTYPE = 2, BAD_SHAPE = 3 };

struct Cfg {
  int iters;
  double hc_eps, norm_eps;
};

// ------------------------------------------------------------------------------------------ forward GEMV
// raw[t*ld + r] += sum_k xs[t][k] * fs[r][k] for NT tokens and R fn rows.
template <int NT, int R>
inline void dot_tile(const float* const* xs, const float* const* fs, int64_t n, double* raw, int64_t ld) {
  V8 acc[NT][R];
  for (int t = 0; t < NT; ++t)
    for (int r = 0; r < R; ++r) acc[t][r] = zero8();
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    V8 xv[NT];
    for (int t = 0; t < NT; ++t) xv[t] = ld8(xs[t] + k);
    for (int r = 0; r < R; ++r) {
      const V8 f = ld8(fs[r] + k);
      for (int t = 0; t < NT; ++t) acc[t][r] = fma8(f, xv[t], acc[t][r]);
    }
  }
  for (int t = 0; t < NT; ++t)
    for (int r = 0; r < R; ++r) {
      double s = hsum8(acc[t][r]);
      for (int64_t j = k; j < n; ++j) s += static_cast<double>(xs[t][j]) * fs[r][j];
      raw[t * ld + r] += s;
    }
}

// fnk points at fn[0, k0] of a chunk whose rows are `ld` floats apart (K in place, or the packed width).
// Register tile: NT tokens x 3 fn rows (4 x 3 = 12 accumulators + 4 x vectors: 7 loads per 12 FMAs).
template <int NT>
void dot_rows(const float* const* xs, const float* fnk, int64_t ld, int64_t n, int M, double* raw) {
  for (int m0 = 0; m0 < M; m0 += 3) {
    const float* fs[3];
    const int R = std::min(3, M - m0);
    for (int r = 0; r < R; ++r) fs[r] = fnk + (m0 + r) * ld;
    switch (R) {
      case 3: dot_tile<NT, 3>(xs, fs, n, raw + m0, M); break;
      case 2: dot_tile<NT, 2>(xs, fs, n, raw + m0, M); break;
      default: dot_tile<NT, 1>(xs, fs, n, raw + m0, M); break;
    }
  }
}

inline double sumsq(const float* v, int64_t n) {
  V8 a = zero8(), b = zero8();
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    const V8 x0 = ld8(v + k), x1 = ld8(v + k + 8);
    a = fma8(x0, x0, a);
    b = fma8(x1, x1, b);
  }
  double s = static_cast<double>(hsum8(a)) + hsum8(b);
  for (; k < n; ++k) s += static_cast<double>(v[k]) * v[k];
  return s;
}

inline void widen(const float* src, float* dst, int64_t n) { std::copy(src, src + n, dst); }
inline void widen(const bf16* src, float* dst, int64_t n) {
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) st8(dst + k, ld8(src + k));
  for (; k < n; ++k) dst[k] = ld1(src + k);
}

// fn rows are K*4 bytes apart - a multiple of 4 KiB at V4 sizes - so the M rows of a chunk all map to the same
// L1 sets and evict each other. Copying each chunk fn[:, k0:k0+n) once per call into a contiguous [M][W] tile
// removes the aliasing; below kPackMinTokens tokens the copy would cost more than it saves.
constexpr int64_t kPackMinTokens = 16;
// Below this much work (elements) a parallel region costs more than it saves: waking the second thread, and on a
// busy machine waiting at the closing barrier for a descheduled one (decode, T = 1, is the common case).
constexpr int64_t kParallelMinWork = int64_t(1) << 20;

struct FnChunks {
  const float* fn;
  int64_t K, W;
  int M;
  std::vector<float> packed;                       // empty: read fn in place
  std::vector<int64_t> k0s;                        // chunk start columns
  const float* at(size_t c) const { return packed.empty() ? fn + k0s[c] : packed.data() + c * M * W; }
  int64_t ld() const { return packed.empty() ? K : W; }
};

// Chunks of width <= W starting at `k0s` (each chunk's length n = min(W, end of its row segment)).
void pack_fn(FnChunks& f, const std::vector<int64_t>& lens, bool pack) {
  if (!pack) return;
  f.packed.assign(f.k0s.size() * f.M * f.W, 0.f);
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t c = 0; c < static_cast<int64_t>(f.k0s.size()); ++c)
    for (int m = 0; m < f.M; ++m)
      std::copy(f.fn + m * f.K + f.k0s[c], f.fn + m * f.K + f.k0s[c] + lens[c], f.packed.data() + (c * f.M + m) * f.W);
}

// y[d] = sum_i pre[i] * x[i, d]
template <typename XT, int HCT>
void collapse(const XT* xt, const float* pre, int hc_rt, int64_t D, XT* y) {
  const int hc = HCT ? HCT : hc_rt;
  int64_t d = 0;
  for (; d + 8 <= D; d += 8) {
    V8 a = zero8();
    for (int i = 0; i < hc; ++i) a = fma8(bcast(pre[i]), ld8(xt + i * D + d), a);
    st8(y + d, a);
  }
  for (; d < D; ++d) {
    float a = 0.f;
    for (int i = 0; i < hc; ++i) a = std::fma(pre[i], ld1(xt + i * D + d), a);
    st1(y + d, a);
  }
}

struct PreShape {
  int64_t T, D, K;
  int hc, M;
  bool head;
};

// hc_pre / hc_head forward. post and comb are null for the head.
template <typename XT>
void pre_forward(const PreShape& s, const Cfg& c, const XT* x, const float* fn, const float* scale,
                 const float* base, XT* y, float* post, float* comb, float* mix, float* rstd) {
  const int64_t nblk = (s.T + TB - 1) / TB;
  constexpr bool kWiden = !std::is_same<XT, float>::value;
  FnChunks fc{fn, s.K, KC, s.M, {}, {}};
  std::vector<int64_t> lens;
  for (int64_t k0 = 0; k0 < s.K; k0 += KC) {
    fc.k0s.push_back(k0);
    lens.push_back(std::min(KC, s.K - k0));
  }
  pack_fn(fc, lens, s.T >= kPackMinTokens);
#pragma omp parallel if (nblk > 1)
  {
    std::vector<float> xbuf(kWiden ? TB * KC : 0);
    std::vector<double> raw(TB * s.M);
#pragma omp for schedule(dynamic)
    for (int64_t b = 0; b < nblk; ++b) {
      const int64_t t0 = b * TB, nt = std::min(TB, s.T - t0);
      double ss[TB] = {0};
      std::fill(raw.begin(), raw.end(), 0.0);
      for (int64_t k0 = 0; k0 < s.K; k0 += KC) {
        const int64_t kc = std::min(KC, s.K - k0);
        const float* xs[TB];
        for (int64_t t = 0; t < nt; ++t) {
          const XT* src = x + (t0 + t) * s.K + k0;
          if constexpr (kWiden) {
            widen(src, xbuf.data() + t * KC, kc);
            xs[t] = xbuf.data() + t * KC;
          } else {
            xs[t] = reinterpret_cast<const float*>(src);
          }
          ss[t] += sumsq(xs[t], kc);
        }
        const float* fnk = fc.at(static_cast<size_t>(k0 / KC));
        int64_t t = 0;
        for (; t + 4 <= nt; t += 4) dot_rows<4>(xs + t, fnk, fc.ld(), kc, s.M, raw.data() + t * s.M);
        for (; t < nt; ++t) dot_rows<1>(xs + t, fnk, fc.ld(), kc, s.M, raw.data() + t * s.M);
      }
      for (int64_t t = 0; t < nt; ++t) {
        const int64_t tok = t0 + t;
        const double r = 1.0 / std::sqrt(ss[t] / static_cast<double>(s.K) + c.norm_eps);
        double m[M_MAX], pre[HC_MAX], pst[HC_MAX], cmb[HC_MAX * HC_MAX];
        for (int j = 0; j < s.M; ++j) {
          m[j] = raw[t * s.M + j] * r;
          mix[tok * s.M + j] = static_cast<float>(m[j]);
        }
        rstd[tok] = static_cast<float>(r);
        coef_forward(m, scale, base, s.hc, s.head, c.iters, c.hc_eps, pre, pst, cmb);
        float pref[HC_MAX];
        for (int i = 0; i < s.hc; ++i) pref[i] = static_cast<float>(pre[i]);
        if (!s.head) {
          for (int i = 0; i < s.hc; ++i) post[tok * s.hc + i] = static_cast<float>(pst[i]);
          for (int i = 0; i < s.hc * s.hc; ++i) comb[tok * s.hc * s.hc + i] = static_cast<float>(cmb[i]);
        }
        if (s.hc == 4)
          collapse<XT, 4>(x + tok * s.K, pref, s.hc, s.D, y + tok * s.D);
        else
          collapse<XT, 0>(x + tok * s.K, pref, s.hc, s.D, y + tok * s.D);
      }
    }
  }
}

// ----------------------------------------------------------------------------------------- backward
inline double dot(const float* a, const float* b, int64_t n) {
  V8 s0 = zero8(), s1 = zero8();
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    s0 = fma8(ld8(a + k), ld8(b + k), s0);
    s1 = fma8(ld8(a + k + 8), ld8(b + k + 8), s1);
  }
  double s = static_cast<double>(hsum8(s0)) + hsum8(s1);
  for (; k < n; ++k) s += static_cast<double>(a[k]) * b[k];
  return s;
}

template <typename XT>
inline double dot(const XT* a, const XT* b, int64_t n) {
  V8 s0 = zero8();
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) s0 = fma8(ld8(a + k), ld8(b + k), s0);
  double s = hsum8(s0);
  for (; k < n; ++k) s += static_cast<double>(ld1(a + k)) * ld1(b + k);
  return s;
}

// gx_t[d] = pre_t * gy_t[d] + cx_t * x_t[d] + sum_m g_t[m] * fn[m, d] over one (stream, D-chunk), NT tokens.
template <int NT, typename XT>
void gx_tile(int64_t n, const XT* const* xk, const XT* const* gy, const float* pre, const float* cx,
             const float* const* g, const float* fnk, int64_t ld, int M, XT* const* out) {
  int64_t d = 0;
  for (; d + 32 <= n; d += 32) {
    V8 acc[NT][4];
    for (int t = 0; t < NT; ++t)
      for (int v = 0; v < 4; ++v)
        acc[t][v] = fma8(bcast(pre[t]), ld8(gy[t] + d + 8 * v), mul8(bcast(cx[t]), ld8(xk[t] + d + 8 * v)));
    for (int m = 0; m < M; ++m) {
      const float* fr = fnk + m * ld + d;
      const V8 f0 = ld8(fr), f1 = ld8(fr + 8), f2 = ld8(fr + 16), f3 = ld8(fr + 24);
      for (int t = 0; t < NT; ++t) {
        const V8 gm = bcast(g[t][m]);
        acc[t][0] = fma8(gm, f0, acc[t][0]);
        acc[t][1] = fma8(gm, f1, acc[t][1]);
        acc[t][2] = fma8(gm, f2, acc[t][2]);
        acc[t][3] = fma8(gm, f3, acc[t][3]);
      }
    }
    for (int t = 0; t < NT; ++t)
      for (int v = 0; v < 4; ++v) st8(out[t] + d + 8 * v, acc[t][v]);
  }
  for (; d + 8 <= n; d += 8) {
    for (int t = 0; t < NT; ++t) {
      V8 a = fma8(bcast(pre[t]), ld8(gy[t] + d), mul8(bcast(cx[t]), ld8(xk[t] + d)));
      for (int m = 0; m < M; ++m) a = fma8(bcast(g[t][m]), ld8(fnk + m * ld + d), a);
      st8(out[t] + d, a);
    }
  }
  for (; d < n; ++d) {
    for (int t = 0; t < NT; ++t) {
      float a = std::fma(pre[t], ld1(gy[t] + d), cx[t] * ld1(xk[t] + d));
      for (int m = 0; m < M; ++m) a = std::fma(g[t][m], fnk[m * ld + d], a);
      st1(out[t] + d, a);
    }
  }
}

// gfn[m0+r, k..k+16) += sum_t G[t, m0+r] * xb[t, 0..16) over the tokens of a packed block (rows SLAB apart).
template <int R>
void gfn_tile16(const float* xb, int64_t nt, const float* G, int M, float* gfn, int64_t K) {
  V8 acc[R][2];
  for (int r = 0; r < R; ++r) {
    acc[r][0] = ld8(gfn + r * K);
    acc[r][1] = ld8(gfn + r * K + 8);
  }
  for (int64_t t = 0; t < nt; ++t) {
    const V8 x0 = ld8(xb + t * SLAB), x1 = ld8(xb + t * SLAB + 8);
    const float* gt = G + t * M;
    for (int r = 0; r < R; ++r) {
      const V8 gm = bcast(gt[r]);
      acc[r][0] = fma8(gm, x0, acc[r][0]);
      acc[r][1] = fma8(gm, x1, acc[r][1]);
    }
  }
  for (int r = 0; r < R; ++r) {
    st8(gfn + r * K, acc[r][0]);
    st8(gfn + r * K + 8, acc[r][1]);
  }
}

// gfn = G^T x: each work item owns a 64-column slab of gfn and sweeps the tokens TB2 at a time; the block
// x[t0:t1, slab] is first copied (and widened from bf16) into a contiguous buffer, because x's rows are K*4
// bytes apart and would alias in L1 exactly like fn's.
template <typename XT>
void gfn_pass(const PreShape& s, const XT* x, const float* G, float* gfn) {
  std::fill(gfn, gfn + static_cast<int64_t>(s.M) * s.K, 0.f);
  const int64_t nslab = (s.K + SLAB - 1) / SLAB;
#pragma omp parallel if (s.T * s.K >= kParallelMinWork)
  {
    std::vector<float> xb(TB2 * SLAB);
#pragma omp for schedule(dynamic)
    for (int64_t sl = 0; sl < nslab; ++sl) {
      const int64_t k0 = sl * SLAB, w = std::min(SLAB, s.K - k0);
      for (int64_t t0 = 0; t0 < s.T; t0 += TB2) {
        const int64_t nt = std::min(TB2, s.T - t0);
        for (int64_t t = 0; t < nt; ++t) widen(x + (t0 + t) * s.K + k0, xb.data() + t * SLAB, w);
        const float* Gt = G + t0 * s.M;
        for (int m0 = 0; m0 < s.M; m0 += 6) {
          const int R = std::min(6, s.M - m0);
          int64_t k = 0;
          for (; k + 16 <= w; k += 16) {
            float* out = gfn + m0 * s.K + k0 + k;
            switch (R) {
              case 6: gfn_tile16<6>(xb.data() + k, nt, Gt + m0, s.M, out, s.K); break;
              case 5: gfn_tile16<5>(xb.data() + k, nt, Gt + m0, s.M, out, s.K); break;
              case 4: gfn_tile16<4>(xb.data() + k, nt, Gt + m0, s.M, out, s.K); break;
              case 3: gfn_tile16<3>(xb.data() + k, nt, Gt + m0, s.M, out, s.K); break;
              case 2: gfn_tile16<2>(xb.data() + k, nt, Gt + m0, s.M, out, s.K); break;
              default: gfn_tile16<1>(xb.data() + k, nt, Gt + m0, s.M, out, s.K); break;
            }
          }
          for (; k < w; ++k)  // ragged columns (K not a multiple of 16)
            for (int r = 0; r < R; ++r) {
              float a = gfn[(m0 + r) * s.K + k0 + k];
              for (int64_t t = 0; t < nt; ++t) a = std::fma(Gt[t * s.M + m0 + r], xb[t * SLAB + k], a);
              gfn[(m0 + r) * s.K + k0 + k] = a;
            }
        }
      }
    }
  }
}

// hc_pre / hc_head backward. gpost and gcomb are null for the head.
template <typename XT>
void pre_backward(const PreShape& s, const Cfg& c, const XT* x, const float* fn, const float* scale,
                  const float* base, const float* mix, const float* rstd, const XT* gy, const float* gpost,
                  const float* gcomb, XT* gx, float* gfn, float* gscale, float* gbase) {
  const int hc = s.hc, M = s.M;
  std::vector<float> G(static_cast<size_t>(s.T) * M);      // d loss / d raw mix (before the rsqrt scale)
  std::vector<double> GZ(static_cast<size_t>(s.T) * M);    // d loss / d logits, for gbase and gscale
  const int64_t nblk = (s.T + TB - 1) / TB;
  const int64_t ndc = (s.D + DC - 1) / DC;
  FnChunks fc{fn, s.K, DC, M, {}, {}};
  std::vector<int64_t> lens;
  for (int i = 0; i < hc; ++i)
    for (int64_t d0 = 0; d0 < s.D; d0 += DC) {
      fc.k0s.push_back(i * s.D + d0);
      lens.push_back(std::min(DC, s.D - d0));
    }
  pack_fn(fc, lens, s.T >= kPackMinTokens);
#pragma omp parallel if (nblk > 1)
  {
    std::vector<double> trace;
#pragma omp for schedule(dynamic)
    for (int64_t b = 0; b < nblk; ++b) {
      const int64_t t0 = b * TB, nt = std::min(TB, s.T - t0);
      float pre[TB][HC_MAX], cx[TB];
      for (int64_t t = 0; t < nt; ++t) {
        const int64_t tok = t0 + t;
        const XT* xt = x + tok * s.K;
        double gpre[HC_MAX], gp[HC_MAX], gc[HC_MAX * HC_MAX], m[M_MAX], gz[M_MAX], z[M_MAX];
        for (int i = 0; i < hc; ++i) gpre[i] = dot(gy + tok * s.D, xt + i * s.D, s.D);
        if (!s.head) {
          for (int i = 0; i < hc; ++i) gp[i] = gpost[tok * hc + i];
          for (int i = 0; i < hc * hc; ++i) gc[i] = gcomb[tok * hc * hc + i];
        }
        for (int j = 0; j < M; ++j) m[j] = mix[tok * M + j];
        coef_backward(m, scale, base, hc, s.head, c.iters, c.hc_eps, gpre, gp, gc, gz, trace);
        const double r = rstd[tok];
        double gr = 0;  // d loss / d r = sum_m gmix[m] * raw[m], raw = mix / r
        for (int j = 0; j < M; ++j) {
          const double gmix = gz[j] * scale[scale_group(j, hc, s.head)];
          GZ[tok * M + j] = gz[j];
          G[tok * M + j] = static_cast<float>(gmix * r);
          gr += gmix * m[j] / r;
        }
        // r = (ss/K + eps)^-1/2, ss = sum v^2  =>  d r / d v = -r^3 v / K
        cx[t] = static_cast<float>(-gr * r * r * r / static_cast<double>(s.K));
        logits(m, scale, base, hc, hc, s.head, z);
        for (int i = 0; i < hc; ++i) pre[t][i] = static_cast<float>(sigmoid(z[i]) + c.hc_eps);
      }
      for (int i = 0; i < hc; ++i)
        for (int64_t d0 = 0; d0 < s.D; d0 += DC) {
          const int64_t n = std::min(DC, s.D - d0), k0 = i * s.D + d0;
          int64_t t = 0;
          for (; t < nt; t += 2) {
            const int NT = (t + 2 <= nt) ? 2 : 1;
            const XT* xk[2];
            const XT* gyd[2];
            XT* out[2];
            const float* g[2];
            float pr[2], cxx[2];
            for (int u = 0; u < NT; ++u) {
              const int64_t tok = t0 + t + u;
              xk[u] = x + tok * s.K + k0;
              gyd[u] = gy + tok * s.D + d0;
              out[u] = gx + tok * s.K + k0;
              g[u] = G.data() + tok * M;
              pr[u] = pre[t + u][i];
              cxx[u] = cx[t + u];
            }
            const float* fnk = fc.at(static_cast<size_t>(i * ndc + d0 / DC));
            if (NT == 2)
              gx_tile<2>(n, xk, gyd, pr, cxx, g, fnk, fc.ld(), M, out);
            else
              gx_tile<1>(n, xk, gyd, pr, cxx, g, fnk, fc.ld(), M, out);
          }
        }
    }
  }
  gfn_pass(s, x, G.data(), gfn);
  // Token reductions of the small parameters, in a fixed order (deterministic, thread-count independent).
  double gb[M_MAX] = {0}, gsc[3] = {0};
  for (int64_t t = 0; t < s.T; ++t)
    for (int j = 0; j < M; ++j) {
      const double g = GZ[t * M + j];
      gb[j] += g;
      gsc[scale_group(j, hc, s.head)] += g * mix[t * M + j];
    }
  for (int j = 0; j < M; ++j) gbase[j] = static_cast<float>(gb[j]);
  for (int g = 0; g < (s.head ? 1 : 3); ++g) gscale[g] = static_cast<float>(gsc[g]);
}

// ------------------------------------------------------------------------------------------- hc_post
// body(t, f_t, residual_t, post_t, comb_t) for every token t, in parallel when T·hc·D is large enough.
template <typename XT, typename Body>
void post_tokens(int64_t T, int hc, int64_t D, const XT* f, const XT* res, const float* post, const float* comb,
                 Body&& body) {
#pragma omp parallel if (T * hc * D >= kParallelMinWork)
  {
#pragma omp for schedule(dynamic, 16)
    for (int64_t t = 0; t < T; ++t) body(t, f + t * D, res + t * hc * D, post + t * hc, comb + t * hc * hc);
  }
}

// out[k, d] = post[k] * f[d] + sum_j comb[j, k] * residual[j, d]   (stream k takes column k of comb)
template <typename XT, int HCT>
void post_forward(int64_t T, int hc_rt, int64_t D, const XT* f, const XT* res, const float* post,
                  const float* comb, XT* out) {
  const int hc = HCT ? HCT : hc_rt;
  post_tokens(T, hc, D, f, res, post, comb,
              [&](int64_t t, const XT* ft, const XT* rt, const float* pt, const float* ct) {
    XT* ot = out + t * hc * D;
    int64_t d = 0;
    for (; d + 8 <= D; d += 8) {
      const V8 fv = ld8(ft + d);
      V8 rv[HC_MAX];
      for (int j = 0; j < hc; ++j) rv[j] = ld8(rt + j * D + d);
      for (int k = 0; k < hc; ++k) {
        V8 a = mul8(bcast(pt[k]), fv);
        for (int j = 0; j < hc; ++j) a = fma8(bcast(ct[j * hc + k]), rv[j], a);
        st8(ot + k * D + d, a);
      }
    }
    for (; d < D; ++d)
      for (int k = 0; k < hc; ++k) {
        float a = pt[k] * ld1(ft + d);
        for (int j = 0; j < hc; ++j) a = std::fma(ct[j * hc + k], ld1(rt + j * D + d), a);
        st1(ot + k * D + d, a);
      }
  });
}


template <typename XT, int HCT>
void post_backward(int64_t T, int hc_rt, int64_t D, const XT* f, const XT* res, const float* post,
                   const float* comb, const XT* gout, XT* gf, XT* gres, float* gpost, float* gcomb) {
  const int hc = HCT ? HCT : hc_rt;
  post_tokens(T, hc, D, f, res, post, comb,
              [&](int64_t t, const XT* ft, const XT* rt, const float* pt, const float* ct) {
    const XT* gt = gout + t * hc * D;
    V8 ap[HC_MAX], ac[HC_MAX * HC_MAX];
    for (int i = 0; i < hc; ++i) ap[i] = zero8();
    for (int i = 0; i < hc * hc; ++i) ac[i] = zero8();
    int64_t d = 0;
    for (; d + 8 <= D; d += 8) {
      const V8 fv = ld8(ft + d);
      V8 gv[HC_MAX], rv[HC_MAX];
      for (int k = 0; k < hc; ++k) gv[k] = ld8(gt + k * D + d);
      for (int j = 0; j < hc; ++j) rv[j] = ld8(rt + j * D + d);
      V8 a = zero8();
      for (int k = 0; k < hc; ++k) {
        a = fma8(bcast(pt[k]), gv[k], a);
        ap[k] = fma8(gv[k], fv, ap[k]);
      }
      st8(gf + t * D + d, a);
      for (int j = 0; j < hc; ++j) {
        V8 r = zero8();
        for (int k = 0; k < hc; ++k) {
          r = fma8(bcast(ct[j * hc + k]), gv[k], r);
          ac[j * hc + k] = fma8(rv[j], gv[k], ac[j * hc + k]);
        }
        st8(gres + t * hc * D + j * D + d, r);
      }
    }
    double sp[HC_MAX], sc[HC_MAX * HC_MAX];
    for (int k = 0; k < hc; ++k) sp[k] = hsum8(ap[k]);
    for (int i = 0; i < hc * hc; ++i) sc[i] = hsum8(ac[i]);
    for (; d < D; ++d) {
      const float fd = ld1(ft + d);
      float a = 0.f;
      for (int k = 0; k < hc; ++k) {
        const float g = ld1(gt + k * D + d);
        a = std::fma(pt[k], g, a);
        sp[k] += static_cast<double>(g) * fd;
      }
      st1(gf + t * D + d, a);
      for (int j = 0; j < hc; ++j) {
        const float rj = ld1(rt + j * D + d);
        float r = 0.f;
        for (int k = 0; k < hc; ++k) {
          const float g = ld1(gt + k * D + d);
          r = std::fma(ct[j * hc + k], g, r);
          sc[j * hc + k] += static_cast<double>(rj) * g;
        }
        st1(gres + t * hc * D + j * D + d, r);
      }
    }
    for (int k = 0; k < hc; ++k) gpost[t * hc + k] = static_cast<float>(sp[k]);
    for (int i = 0; i < hc * hc; ++i) gcomb[t * hc * hc + i] = static_cast<float>(sc[i]);
  });
}


// -------------------------------------------------------------------------------------- ABI helpers
struct Args {
  int n;
  void** p;
  int* nd;
  int64_t** sh;
  const char** dt;
  int64_t dim(int i, int d) const { return sh[i][d < 0 ? nd[i] + d : d]; }
  bool f32(int i) const { return av4::is_f32(dt[i]); }
  bool bf(int i) const { return av4::is_bf16(dt[i]); }
  template <typename T>
  T* ptr(int i) const { return static_cast<T*>(p[i]); }
};

Cfg read_cfg(const Args& a, int i, bool head) {
  const float* v = a.ptr<float>(i);
  Cfg c;
  c.iters = head ? 0 : static_cast<int>(std::lround(v[0]));
  c.hc_eps = head ? v[0] : v[1];
  c.norm_eps = head ? v[1] : v[2];
  return c;
}

// f(X{}) with X the element type of x (input 0), float or bf16; any other dtype is BAD_DTYPE.
template <typename F>
int by_x_dtype(const Args& a, F&& f) {
  if (a.f32(0))
    f(float{});
  else if (a.bf(0))
    f(bf16{});
  else
    return BAD_DTYPE;
  return OK;
}

// Inputs: x [T,hc,D], fn [M,K], scale, base [M], cfg; `arity` counts inputs and outputs.  Shape checks mirror the
// Python wrapper's contract.
int pre_shape(const Args& a, bool head, int arity, PreShape* s) {
  if (a.n != arity) return BAD_ARITY;
  if (a.nd[0] != 3 || a.nd[1] != 2) return BAD_SHAPE;
  s->T = a.dim(0, 0);
  s->hc = static_cast<int>(a.dim(0, 1));
  s->D = a.dim(0, 2);
  s->K = s->hc * s->D;
  s->M = head ? s->hc : (2 + s->hc) * s->hc;
  s->head = head;
  if (s->hc < 1 || s->hc > HC_MAX || a.dim(1, 0) != s->M || a.dim(1, 1) != s->K) return BAD_SHAPE;
  for (int i = 1; i <= 4; ++i)
    if (!a.f32(i)) return BAD_DTYPE;
  return OK;
}

int pre_fwd(const Args& a, bool head) {
  // in: x fn scale base cfg | out: y (post comb) mix rstd
  PreShape s;
  if (int e = pre_shape(a, head, head ? 8 : 10, &s)) return e;
  const Cfg c = read_cfg(a, 4, head);
  const int o = 5;
  float* post = head ? nullptr : a.ptr<float>(o + 1);
  float* comb = head ? nullptr : a.ptr<float>(o + 2);
  float* mix = a.ptr<float>(head ? o + 1 : o + 3);
  float* rstd = a.ptr<float>(head ? o + 2 : o + 4);
  return by_x_dtype(a, [&](auto t) {
    using X = decltype(t);
    pre_forward<X>(s, c, a.ptr<X>(0), a.ptr<float>(1), a.ptr<float>(2), a.ptr<float>(3), a.ptr<X>(o), post, comb,
                   mix, rstd);
  });
}

int pre_bwd(const Args& a, bool head) {
  // in: x fn scale base cfg mix rstd gy (gpost gcomb) | out: gx gfn gscale gbase
  PreShape s;
  if (int e = pre_shape(a, head, head ? 12 : 14, &s)) return e;
  const Cfg c = read_cfg(a, 4, head);
  const int gi = 7, o = head ? 8 : 10;
  if (!a.f32(5) || !a.f32(6) || std::string(a.dt[gi]) != a.dt[0]) return BAD_DTYPE;
  const float* gpost = head ? nullptr : a.ptr<float>(8);
  const float* gcomb = head ? nullptr : a.ptr<float>(9);
  return by_x_dtype(a, [&](auto t) {
    using X = decltype(t);
    pre_backward<X>(s, c, a.ptr<X>(0), a.ptr<float>(1), a.ptr<float>(2), a.ptr<float>(3), a.ptr<float>(5),
                    a.ptr<float>(6), a.ptr<X>(gi), gpost, gcomb, a.ptr<X>(o), a.ptr<float>(o + 1),
                    a.ptr<float>(o + 2), a.ptr<float>(o + 3));
  });
}

// HcPost*: f [T,D] and residual [T,hc,D] of x's dtype, post [T,hc] and comb [T,hc,hc] float32.
struct PostShape {
  int64_t T, D;
  int hc;
};

int post_shape(const Args& a, PostShape* s) {
  if (a.nd[1] != 3 || !a.f32(2) || !a.f32(3) || std::string(a.dt[0]) != a.dt[1]) return BAD_DTYPE;
  s->T = a.dim(1, 0);
  s->D = a.dim(1, 2);
  s->hc = static_cast<int>(a.dim(1, 1));
  if (s->hc < 1 || s->hc > HC_MAX) return BAD_SHAPE;
  return OK;
}

}  // namespace
}  // namespace mhc

extern "C" {

// HcPreFwd(x, fn, scale, base, cfg=[iters, hc_eps, norm_eps]) -> y, post, comb, mix, rstd
int HcPreFwd(int n, void** p, int* nd, int64_t** sh, const char** dt, void*, void*) {
  return mhc::pre_fwd({n, p, nd, sh, dt}, false);
}

// HcPreBwd(x, fn, scale, base, cfg, mix, rstd, gy, gpost, gcomb) -> gx, gfn, gscale, gbase
int HcPreBwd(int n, void** p, int* nd, int64_t** sh, const char** dt, void*, void*) {
  return mhc::pre_bwd({n, p, nd, sh, dt}, false);
}

// HcHeadFwd(x, fn, scale, base, cfg=[hc_eps, norm_eps]) -> y, mix, rstd
int HcHeadFwd(int n, void** p, int* nd, int64_t** sh, const char** dt, void*, void*) {
  return mhc::pre_fwd({n, p, nd, sh, dt}, true);
}

// HcHeadBwd(x, fn, scale, base, cfg, mix, rstd, gy) -> gx, gfn, gscale, gbase
int HcHeadBwd(int n, void** p, int* nd, int64_t** sh, const char** dt, void*, void*) {
  return mhc::pre_bwd({n, p, nd, sh, dt}, true);
}

// HcPostFwd(f [T,D], residual [T,hc,D], post [T,hc], comb [T,hc,hc]) -> out [T,hc,D]
int HcPostFwd(int n, void** p, int* nd, int64_t** sh, const char** dt, void*, void*) {
  using namespace mhc;
  if (n != 5) return BAD_ARITY;
  const Args a{n, p, nd, sh, dt};
  PostShape s;
  if (int e = post_shape(a, &s)) return e;
  return by_x_dtype(a, [&](auto t) {
    using X = decltype(t);
    auto run = s.hc == 4 ? post_forward<X, 4> : post_forward<X, 0>;
    run(s.T, s.hc, s.D, a.ptr<X>(0), a.ptr<X>(1), a.ptr<float>(2), a.ptr<float>(3), a.ptr<X>(4));
  });
}

// HcPostBwd(f, residual, post, comb, gout) -> gf, gresidual, gpost, gcomb
int HcPostBwd(int n, void** p, int* nd, int64_t** sh, const char** dt, void*, void*) {
  using namespace mhc;
  if (n != 9) return BAD_ARITY;
  const Args a{n, p, nd, sh, dt};
  if (std::string(dt[0]) != dt[4]) return BAD_DTYPE;
  PostShape s;
  if (int e = post_shape(a, &s)) return e;
  return by_x_dtype(a, [&](auto t) {
    using X = decltype(t);
    auto run = s.hc == 4 ? post_backward<X, 4> : post_backward<X, 0>;
    run(s.T, s.hc, s.D, a.ptr<X>(0), a.ptr<X>(1), a.ptr<float>(2), a.ptr<float>(3), a.ptr<X>(4), a.ptr<X>(5),
        a.ptr<X>(6), a.ptr<float>(7), a.ptr<float>(8));
  });
}

}  // extern "C"
