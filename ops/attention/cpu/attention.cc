// CPU kernels of the attention family for MindSpore ops.Custom(func_type="aot"): shared-KV sparse attention
// with sink (window + index list, or window + every visible compressed entry = HCA), its backward, a dense
// causal MQA baseline (bench only), the lightning indexer with streaming per-row top-k (+ FP4 simulation),
// and the compressor's gated-softmax pooling + RMSNorm (prefill form with backward, decode-state form).
//
// Semantics: ops/attention/reference.py. Memory: attention keeps O(H·D) per thread and never an [S, N]
// matrix; the indexer keeps one score row per query of the tile (O(TQ·N) per thread).
// Scalars travel in a float32 "cfg" tensor (aot kernels only receive tensors); shape-only arguments
// (e.g. the top-k width) travel as the shape of a dummy tensor so out_shape can be a pure shape function.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "aot.h"

namespace {

using av4::is_bf16;
using av4::numel;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// ------------------------------------------------------------------------------------------ vector helpers
#if defined(__AVX2__) && defined(__FMA__)
inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
  return _mm_cvtss_f32(lo);
}
#endif

inline float dot(const float* a, const float* b, int n) {
  int i = 0;
  float s = 0.f;
#if defined(__AVX2__) && defined(__FMA__)
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), a1);
  }
  s = hsum(_mm256_add_ps(a0, a1));
#endif
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// out[j] = a · b[j] for 4 rows b[0..3] at once (a is loaded once per chunk).
inline void dot4(const float* a, const float* const* b, int n, float* out) {
  int i = 0;
  float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#if defined(__AVX2__) && defined(__FMA__)
  __m256 c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps(), c2 = _mm256_setzero_ps(), c3 = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    __m256 va = _mm256_loadu_ps(a + i);
    c0 = _mm256_fmadd_ps(va, _mm256_loadu_ps(b[0] + i), c0);
    c1 = _mm256_fmadd_ps(va, _mm256_loadu_ps(b[1] + i), c1);
    c2 = _mm256_fmadd_ps(va, _mm256_loadu_ps(b[2] + i), c2);
    c3 = _mm256_fmadd_ps(va, _mm256_loadu_ps(b[3] + i), c3);
  }
  s0 = hsum(c0), s1 = hsum(c1), s2 = hsum(c2), s3 = hsum(c3);
#endif
  for (; i < n; ++i) {
    s0 += a[i] * b[0][i], s1 += a[i] * b[1][i], s2 += a[i] * b[2][i], s3 += a[i] * b[3][i];
  }
  out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3;
}

// o0[j] = a0 · b[j], o1[j] = a1 · b[j] for 4 rows: the 2-head x 4-entry register tile of the score step.
inline void dot2x4(const float* a0, const float* a1, const float* const* b, int n, float* o0, float* o1) {
  int i = 0;
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#if defined(__AVX2__) && defined(__FMA__)
  __m256 c[8];
  for (int u = 0; u < 8; ++u) c[u] = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 x0 = _mm256_loadu_ps(a0 + i), x1 = _mm256_loadu_ps(a1 + i);
    for (int u = 0; u < 4; ++u) {
      const __m256 bu = _mm256_loadu_ps(b[u] + i);
      c[u] = _mm256_fmadd_ps(x0, bu, c[u]);
      c[4 + u] = _mm256_fmadd_ps(x1, bu, c[4 + u]);
    }
  }
  for (int u = 0; u < 8; ++u) s[u] = hsum(c[u]);
#endif
  for (; i < n; ++i)
    for (int u = 0; u < 4; ++u) s[u] += a0[i] * b[u][i], s[4 + u] += a1[i] * b[u][i];
  for (int u = 0; u < 4; ++u) o0[u] = s[u], o1[u] = s[4 + u];
}

// y0 = y0·al0 + Σ_j p0[j]·x[j] and y1 likewise: two heads share every loaded row chunk.
inline void scale_axpy_rows2(float* y0, float* y1, float al0, float al1, const float* p0, const float* p1,
                             const float* const* x, int nj, int n) {
  int i = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 va0 = _mm256_set1_ps(al0), va1 = _mm256_set1_ps(al1);
  for (; i + 32 <= n; i += 32) {
    __m256 a[4], b[4];
    for (int u = 0; u < 4; ++u) {
      a[u] = _mm256_mul_ps(_mm256_loadu_ps(y0 + i + 8 * u), va0);
      b[u] = _mm256_mul_ps(_mm256_loadu_ps(y1 + i + 8 * u), va1);
    }
    for (int j = 0; j < nj; ++j) {
      const __m256 q0 = _mm256_set1_ps(p0[j]), q1 = _mm256_set1_ps(p1[j]);
      const float* xj = x[j] + i;
      for (int u = 0; u < 4; ++u) {
        const __m256 xv = _mm256_loadu_ps(xj + 8 * u);
        a[u] = _mm256_fmadd_ps(q0, xv, a[u]);
        b[u] = _mm256_fmadd_ps(q1, xv, b[u]);
      }
    }
    for (int u = 0; u < 4; ++u) _mm256_storeu_ps(y0 + i + 8 * u, a[u]), _mm256_storeu_ps(y1 + i + 8 * u, b[u]);
  }
#endif
  for (; i < n; ++i) {
    float u0 = y0[i] * al0, u1 = y1[i] * al1;
    for (int j = 0; j < nj; ++j) u0 += p0[j] * x[j][i], u1 += p1[j] * x[j][i];
    y0[i] = u0, y1[i] = u1;
  }
}

// y = y·alpha + Σ_j p[j]·x[j] over nj rows (the P·V update of one head).
inline void scale_axpy_rows(float* y, float alpha, const float* p, const float* const* x, int nj, int n) {
  int i = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 va = _mm256_set1_ps(alpha);
  for (; i + 32 <= n; i += 32) {
    __m256 y0 = _mm256_mul_ps(_mm256_loadu_ps(y + i), va), y1 = _mm256_mul_ps(_mm256_loadu_ps(y + i + 8), va);
    __m256 y2 = _mm256_mul_ps(_mm256_loadu_ps(y + i + 16), va), y3 = _mm256_mul_ps(_mm256_loadu_ps(y + i + 24), va);
    for (int j = 0; j < nj; ++j) {
      const __m256 pj = _mm256_set1_ps(p[j]);
      const float* xj = x[j] + i;
      y0 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(xj), y0);
      y1 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(xj + 8), y1);
      y2 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(xj + 16), y2);
      y3 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(xj + 24), y3);
    }
    _mm256_storeu_ps(y + i, y0), _mm256_storeu_ps(y + i + 8, y1);
    _mm256_storeu_ps(y + i + 16, y2), _mm256_storeu_ps(y + i + 24, y3);
  }
#endif
  for (; i < n; ++i) {
    float acc = y[i] * alpha;
    for (int j = 0; j < nj; ++j) acc += p[j] * x[j][i];
    y[i] = acc;
  }
}

inline void axpy(float* y, float a, const float* x, int n) {
  int i = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 va = _mm256_set1_ps(a);
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
#endif
  for (; i < n; ++i) y[i] += a * x[i];
}

// out[e] = Σ_threads part[th][e] for e < n, summed in part's type, thread 0 first.
template <typename A>
void sum_threads(const std::vector<std::vector<A>>& part, int64_t n, float* out) {
  for (int64_t e = 0; e < n; ++e) {
    A s = 0;
    for (const auto& t : part) s += t[e];
    out[e] = static_cast<float>(s);
  }
}

// A float32 view of a float32 or bf16 tensor (bf16 is widened once into an owned buffer).
struct F32View {
  const float* p = nullptr;
  std::vector<float> own;
  F32View(const void* data, const char* dtype, int64_t n) {
    if (is_bf16(dtype)) {
      own.resize(n);
      const uint16_t* h = static_cast<const uint16_t*>(data);
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) own[i] = av4::bf16_to_f32(h[i]);
      p = own.data();
    } else {
      p = static_cast<const float*>(data);
    }
  }
};

inline void store_row(void* dst, const char* dtype, int64_t off, const float* src, int64_t n) {
  if (is_bf16(dtype)) {
    uint16_t* h = static_cast<uint16_t*>(dst) + off;
    for (int64_t i = 0; i < n; ++i) h[i] = av4::f32_to_bf16(src[i]);
  } else {
    std::memcpy(static_cast<float*>(dst) + off, src, n * sizeof(float));
  }
}

// ------------------------------------------------------------------------------------ sparse attention
// The candidate list of query (b, t): window ids, then either an explicit compressed id list or (HCA)
// the range [cmp_offset, cmp_offset + visible). -1 ids are skipped.
struct Cands {
  const int32_t* widx;  // [B, S, W]
  int W;
  const int32_t* cidx;  // [B, S, K] or null
  int K;
  int ratio;            // > 0: HCA range instead of cidx
  int64_t cmp_offset, n_cmp, start_pos;
  int64_t S;

  // Fill ids for (b, t) into out (capacity W + K or W + n_cmp); returns the count.
  int collect(int64_t b, int64_t t, int32_t* out) const {
    int n = 0;
    const int32_t* w = widx + (b * S + t) * W;
    for (int j = 0; j < W; ++j)
      if (w[j] >= 0) out[n++] = w[j];
    if (cidx) {
      const int32_t* c = cidx + (b * S + t) * K;
      for (int j = 0; j < K; ++j)
        if (c[j] >= 0) out[n++] = c[j];
    } else if (ratio > 0) {
      int64_t vis = std::min<int64_t>((start_pos + t + 1) / ratio, n_cmp);
      for (int64_t i = 0; i < vis; ++i) out[n++] = static_cast<int32_t>(cmp_offset + i);
    }
    return n;
  }
  int capacity() const { return W + (cidx ? K : (ratio > 0 ? static_cast<int>(n_cmp) : 0)); }
};

constexpr int JB = 16;  // entries per online-softmax step

// One query row, all heads: out[H, D], lse[H]. ids[n] index rows of kvb ([N, D]); dense=true uses rows 0..n-1.
void attend_row(const float* q, const float* kvb, const float* sink, const int32_t* ids, int n, int H, int D,
                float scale, float* out, float* lse, float* m, float* l, float* sc, float* corr) {
  for (int h = 0; h < H; ++h) m[h] = kNegInf, l[h] = 0.f;
  std::fill(out, out + static_cast<int64_t>(H) * D, 0.f);
  const float* rows[JB];
  for (int j0 = 0; j0 < n; j0 += JB) {
    const int nj = std::min(JB, n - j0);
    for (int j = 0; j < nj; ++j) rows[j] = kvb + static_cast<int64_t>(ids[j0 + j]) * D;
    // scores, 2 heads x 4 entries per register tile
    int h = 0;
    for (; h + 2 <= H; h += 2) {
      const float* q0 = q + static_cast<int64_t>(h) * D;
      const float* q1 = q0 + D;
      int j = 0;
      for (; j + 4 <= nj; j += 4) dot2x4(q0, q1, rows + j, D, sc + h * JB + j, sc + (h + 1) * JB + j);
      for (; j < nj; ++j) sc[h * JB + j] = dot(q0, rows[j], D), sc[(h + 1) * JB + j] = dot(q1, rows[j], D);
    }
    for (; h < H; ++h) {
      const float* qh = q + static_cast<int64_t>(h) * D;
      int j = 0;
      for (; j + 4 <= nj; j += 4) dot4(qh, rows + j, D, sc + h * JB + j);
      for (; j < nj; ++j) sc[h * JB + j] = dot(qh, rows[j], D);
    }
    // online softmax per head: corr[h] rescales the running sum and accumulator
    for (h = 0; h < H; ++h) {
      float* s = sc + h * JB;
      float mx = m[h];
      for (int j = 0; j < nj; ++j) s[j] *= scale, mx = std::max(mx, s[j]);
      corr[h] = (m[h] == kNegInf) ? 0.f : std::exp(m[h] - mx);
      float sum = 0.f;
      for (int j = 0; j < nj; ++j) s[j] = std::exp(s[j] - mx), sum += s[j];
      l[h] = l[h] * corr[h] + sum;
      m[h] = mx;
    }
    for (h = 0; h + 2 <= H; h += 2)
      scale_axpy_rows2(out + static_cast<int64_t>(h) * D, out + static_cast<int64_t>(h + 1) * D, corr[h], corr[h + 1],
                       sc + h * JB, sc + (h + 1) * JB, rows, nj, D);
    for (; h < H; ++h) scale_axpy_rows(out + static_cast<int64_t>(h) * D, corr[h], sc + h * JB, rows, nj, D);
  }
  for (int h = 0; h < H; ++h) {
    const float mf = std::max(m[h], sink[h]);
    const float a = (m[h] == kNegInf) ? 0.f : std::exp(m[h] - mf);
    const float den = l[h] * a + std::exp(sink[h] - mf);
    const float f = a / den;
    float* o = out + static_cast<int64_t>(h) * D;
    for (int d = 0; d < D; ++d) o[d] *= f;
    lse[h] = mf + std::log(den);
  }
}

struct AttnArgs {
  int64_t B, S, H, D, N;
  Cands cand;
  float scale;
  bool dense = false;   // dense causal baseline: entries 0..t of the first S rows
  int64_t dense_stride = 1;
};

AttnArgs parse_attn(int nparam, void** params, int* ndims, int64_t** shapes, int& cfg_i) {
  // inputs: q, kv, sink, widx, [cidx], cfg ; outputs follow
  AttnArgs a{};
  a.B = shapes[0][0], a.S = shapes[0][1], a.H = shapes[0][2], a.D = shapes[0][3], a.N = shapes[1][1];
  a.cand.widx = static_cast<const int32_t*>(params[3]);
  a.cand.W = static_cast<int>(shapes[3][2]);
  a.cand.S = a.S;
  const bool has_c = (ndims[4] == 3);
  a.cand.cidx = has_c ? static_cast<const int32_t*>(params[4]) : nullptr;
  a.cand.K = has_c ? static_cast<int>(shapes[4][2]) : 0;
  cfg_i = has_c ? 5 : 4;
  const float* cfg = static_cast<const float*>(params[cfg_i]);
  a.scale = cfg[0];
  a.cand.ratio = static_cast<int>(cfg[1]);
  a.cand.cmp_offset = static_cast<int64_t>(cfg[2]);
  a.cand.start_pos = static_cast<int64_t>(cfg[3]);
  a.cand.n_cmp = std::max<int64_t>(0, a.N - a.cand.cmp_offset);
  (void)nparam;
  return a;
}

int attn_forward(const AttnArgs& a, const void* qp, const char* qdt, const void* kvp, const char* kvdt,
                 const float* sink, void* outp, float* lse) {
  const int64_t H = a.H, D = a.D;
  F32View kv(kvp, kvdt, a.B * a.N * D);
  const bool qbf = is_bf16(qdt);
#pragma omp parallel
  {
    std::vector<float> q(H * D), o(H * D), m(H), l(H), sc(H * JB), corr(H);
    std::vector<int32_t> ids(a.dense ? a.N : std::max(1, a.cand.capacity()));
#pragma omp for schedule(dynamic, 4)
    for (int64_t r = 0; r < a.B * a.S; ++r) {
      const int64_t b = r / a.S, t = r % a.S;
      for (int64_t i = 0; i < H * D; ++i) q[i] = av4::load(qp, qbf, r * H * D + i);
      int n;
      if (a.dense) {   // query row t is position (t+1)·stride - 1 (stride > 1: the bench samples rows)
        n = static_cast<int>((t + 1) * a.dense_stride);
        for (int i = 0; i < n; ++i) ids[i] = i;
      } else {
        n = a.cand.collect(b, t, ids.data());
      }
      attend_row(q.data(), kv.p + b * a.N * D, sink, ids.data(), n, static_cast<int>(H), static_cast<int>(D),
                 a.scale, o.data(), lse + r * H, m.data(), l.data(), sc.data(), corr.data());
      store_row(outp, qdt, r * H * D, o.data(), H * D);
    }
  }
  return 0;
}

}  // namespace

extern "C" {

// q[B,S,H,D], kv[B,N,D], sink[H] f32, widx[B,S,W] i32, [cidx[B,S,K] i32], cfg f32[4] = {scale, ratio,
// cmp_offset, start_pos} (ratio > 0 and no cidx: HCA, every visible entry) -> out[B,S,H,D], lse[B,S,H] f32.
int SparseAttnFwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  int ci;
  AttnArgs a = parse_attn(nparam, params, ndims, shapes, ci);
  return attn_forward(a, params[0], dtypes[0], params[1], dtypes[1], static_cast<const float*>(params[2]),
                      params[ci + 1], static_cast<float*>(params[ci + 2]));
}

// Dense causal MQA (bench baseline): q, kv, sink, widx (ignored), cfg {scale, stride} -> out, lse. Query row t
// attends to kv rows 0 .. (t+1)·stride - 1 (stride 1: ordinary causal attention over all S tokens).
int DenseCausalFwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  int ci;
  AttnArgs a = parse_attn(nparam, params, ndims, shapes, ci);
  a.dense = true;
  a.dense_stride = std::max<int64_t>(1, a.cand.ratio);
  a.cand.ratio = 0;
  return attn_forward(a, params[0], dtypes[0], params[1], dtypes[1], static_cast<const float*>(params[2]),
                      params[ci + 1], static_cast<float*>(params[ci + 2]));
}

// Backward: inputs q, kv, sink, widx, [cidx], cfg, out, lse, dout -> dq[B,S,H,D], dkv[B,N,D], dsink[H].
// p_j = exp(z_j - lse), delta = dO·out, dz_j = p_j (dO·v_j - delta), dq = scale Σ dz_j v_j,
// dkv_j += scale Σ_h dz_hj q_h + Σ_h p_hj dO_h (key = value), dsink = -exp(sink - lse)·delta.
// dkv is accumulated in one private buffer per thread (static row split, so the result is bitwise reproducible
// for a given thread count), then reduced in thread order (O(threads·N·D) extra memory).
int SparseAttnBwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  int ci;
  AttnArgs a = parse_attn(nparam, params, ndims, shapes, ci);
  const int64_t B = a.B, S = a.S, H = a.H, D = a.D, N = a.N;
  F32View q(params[0], dtypes[0], B * S * H * D);
  F32View kv(params[1], dtypes[1], B * N * D);
  const float* sink = static_cast<const float*>(params[2]);
  F32View out(params[ci + 1], dtypes[ci + 1], B * S * H * D);
  const float* lse = static_cast<const float*>(params[ci + 2]);
  F32View dout(params[ci + 3], dtypes[ci + 3], B * S * H * D);
  void* dq_p = params[ci + 4];
  void* dkv_p = params[ci + 5];
  float* dsink = static_cast<float*>(params[ci + 6]);
  const int nt = omp_get_max_threads();
  std::vector<std::vector<float>> dkv_t(nt), dsink_t(nt, std::vector<float>(H, 0.f));
#pragma omp parallel
  {
    const int tid = omp_get_thread_num();
    std::vector<float>& dkv = dkv_t[tid];
    dkv.assign(B * N * D, 0.f);
    std::vector<float> dq(H * D), delta(H), p(JB), dp(JB);
    std::vector<int32_t> ids(std::max(1, a.cand.capacity()));
#pragma omp for schedule(static)  // static: a fixed row->thread split keeps the dkv reduction deterministic
    for (int64_t r = 0; r < B * S; ++r) {
      const int64_t b = r / S, t = r % S;
      const int n = a.cand.collect(b, t, ids.data());
      const float* qr = q.p + r * H * D;
      const float* dor = dout.p + r * H * D;
      const float* lr = lse + r * H;
      std::fill(dq.begin(), dq.end(), 0.f);
      for (int64_t h = 0; h < H; ++h) {
        delta[h] = dot(dor + h * D, out.p + r * H * D + h * D, static_cast<int>(D));
        dsink_t[tid][h] -= std::exp(sink[h] - lr[h]) * delta[h];
      }
      const float* kvb = kv.p + b * N * D;
      float* dkvb = dkv.data() + b * N * D;
      for (int j = 0; j < n; ++j) {
        const float* v = kvb + static_cast<int64_t>(ids[j]) * D;
        float* dv = dkvb + static_cast<int64_t>(ids[j]) * D;
        for (int64_t h = 0; h < H; ++h) {
          const float z = dot(qr + h * D, v, static_cast<int>(D)) * a.scale;
          const float pj = std::exp(z - lr[h]);
          const float dz = pj * (dot(dor + h * D, v, static_cast<int>(D)) - delta[h]);
          axpy(dq.data() + h * D, a.scale * dz, v, static_cast<int>(D));
          axpy(dv, a.scale * dz, qr + h * D, static_cast<int>(D));
          axpy(dv, pj, dor + h * D, static_cast<int>(D));
        }
      }
      store_row(dq_p, dtypes[0], r * H * D, dq.data(), H * D);
    }
  }
  std::vector<float> acc(B * N * D, 0.f);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < B * N * D; ++i) {
    float s = 0.f;
    for (int th = 0; th < nt; ++th)
      if (!dkv_t[th].empty()) s += dkv_t[th][i];
    acc[i] = s;
  }
  store_row(dkv_p, dtypes[1], 0, acc.data(), B * N * D);
  sum_threads(dsink_t, H, dsink);
  return 0;
}


// Same kernels under a second name for the 5-input (window-only / HCA) Custom primitive: MindSpore keys a Custom
// op's bprop by its kernel symbol, so two arities sharing one symbol would get each other's backward.
int SparseAttnFwdW(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void* s, void* e) {
  return SparseAttnFwd(nparam, params, ndims, shapes, dtypes, s, e);
}
int SparseAttnBwdW(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void* s, void* e) {
  return SparseAttnBwd(nparam, params, ndims, shapes, dtypes, s, e);
}

}  // extern "C"

// ------------------------------------------------------------------------------------ lightning indexer
namespace {

// In-place normalised fast Walsh-Hadamard transform (Sylvester order, scale d^-1/2); d a power of two.
void fwht(float* x, int d) {
  for (int len = 1; len < d; len <<= 1)
    for (int i = 0; i < d; i += len << 1)
      for (int j = i; j < i + len; ++j) {
        const float u = x[j], v = x[j + len];
        x[j] = u + v, x[j + len] = u - v;
      }
  const float s = 1.0f / std::sqrt(static_cast<float>(d));
  for (int i = 0; i < d; ++i) x[i] *= s;
}

// fp4_act_quant(inplace): blocks of 32, scale 2^ceil(log2(amax/6)) (amax >= 6·2^-126), RNE onto E2M1.
void fp4_quant(float* x, int n) {
  for (int b0 = 0; b0 < n; b0 += 32) {
    float amax = 0.f;
    for (int i = b0; i < b0 + 32; ++i) amax = std::max(amax, std::fabs(x[i]));
    amax = std::max(amax, 6.0f * std::ldexp(1.0f, -126));
    int e;
    const float mant = std::frexp(static_cast<double>(amax) / 6.0, &e);  // y = mant·2^e, mant in [0.5, 1)
    if (mant == 0.5f) e -= 1;                                             // exact powers of two
    const double scale = std::ldexp(1.0, e);
    for (int i = b0; i < b0 + 32; ++i) {
      double v = std::min(6.0, std::max(-6.0, x[i] / scale));
      const double av = std::fabs(v);
      const double step = av < 2 ? 0.5 : (av < 4 ? 1.0 : 2.0);
      const double qv = std::nearbyint(av / step) * step;
      x[i] = static_cast<float>((v < 0 ? -qv : qv) * scale);
    }
  }
}

constexpr int TQ = 8;    // queries per tile (share each streamed key block)
constexpr int KB = 64;   // keys per block

// out[j] = q · kT[:, j] for the KB keys of a transposed block kT[d][KB] (outer-product form, no horizontal sums).
inline void scores_kt(const float* q, const float* kT, int d, float* out) {
#if defined(__AVX2__) && defined(__FMA__)
  static_assert(KB == 64, "8 accumulators of 8 lanes");
  __m256 a[8];
  for (int u = 0; u < 8; ++u) a[u] = _mm256_setzero_ps();
  for (int e = 0; e < d; ++e) {
    const __m256 b = _mm256_broadcast_ss(q + e);
    const float* r = kT + static_cast<int64_t>(e) * KB;
    for (int u = 0; u < 8; ++u) a[u] = _mm256_fmadd_ps(b, _mm256_loadu_ps(r + 8 * u), a[u]);
  }
  for (int u = 0; u < 8; ++u) _mm256_storeu_ps(out + 8 * u, a[u]);
#else
  for (int j = 0; j < KB; ++j) out[j] = 0.f;
  for (int e = 0; e < d; ++e)
    for (int j = 0; j < KB; ++j) out[j] += q[e] * kT[static_cast<int64_t>(e) * KB + j];
#endif
}

}  // namespace

extern "C" {

// q[B,S,H,d], k[B,N,d], w[B,S,H] (f32/bf16), cfg f32[4] = {ratio, start_pos, fp4, 0}, sel[kk] (shape only)
// -> idx[B,S,kk] int32: top-kk visible entries by Σ_h w·ReLU(q_h·k), ascending ids, -1 padded, ties to the
// lower id. Streaming: one score row per query of the current tile; never an [S, N] matrix; key blocks past the
// tile's last visible entry are never read, so a cached step costs O(visible entries), not O(N).
// start (nullable): int32[B] first position of each row (a cached step), replacing cfg's start_pos.
static int indexer_run(void** params, int64_t** shapes, const char** dtypes, const float* cfg, const int32_t* start,
                       int64_t kk, int32_t* idx) {
  const int64_t B = shapes[0][0], S = shapes[0][1], H = shapes[0][2], d = shapes[0][3], N = shapes[1][1];
  const int64_t ratio = static_cast<int64_t>(cfg[0]), start_cfg = static_cast<int64_t>(cfg[1]);
  const bool fp4 = cfg[2] != 0.f;
  F32View kview(params[1], dtypes[1], B * N * d);
  const float* k = kview.p;
  std::vector<float> krot;
  if (fp4) {
    krot.assign(k, k + B * N * d);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < B * N; ++r) {
      fwht(krot.data() + r * d, static_cast<int>(d));
      fp4_quant(krot.data() + r * d, static_cast<int>(d));
    }
    k = krot.data();
  }
  const bool qbf = is_bf16(dtypes[0]), wbf = is_bf16(dtypes[2]);
  const int64_t ntile = (S + TQ - 1) / TQ;
#pragma omp parallel
  {
    std::vector<float> qt(TQ * H * d), wt(TQ * H), score(TQ * N), kT(d * KB), dots(KB);
    std::vector<double> tot(KB);
    std::vector<int32_t> cand(N);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < B * ntile; ++task) {
      const int64_t b = task / ntile, t0 = (task % ntile) * TQ, nq = std::min<int64_t>(TQ, S - t0);
      const int64_t start_pos = start ? static_cast<int64_t>(start[b]) : start_cfg;
      int64_t vis[TQ], vmax = 0;
      for (int64_t i = 0; i < nq; ++i) {
        const int64_t r = b * S + t0 + i;
        for (int64_t e = 0; e < H * d; ++e) qt[i * H * d + e] = av4::load(params[0], qbf, r * H * d + e);
        for (int64_t h = 0; h < H; ++h) wt[i * H + h] = av4::load(params[2], wbf, r * H + h);
        if (fp4)
          for (int64_t h = 0; h < H; ++h) {
            fwht(qt.data() + (i * H + h) * d, static_cast<int>(d));
            fp4_quant(qt.data() + (i * H + h) * d, static_cast<int>(d));
          }
        vis[i] = std::max<int64_t>(0, std::min<int64_t>(N, (start_pos + t0 + i + 1) / ratio));
        vmax = std::max(vmax, vis[i]);
      }
      const float* kb = k + b * N * d;
      for (int64_t j0 = 0; j0 < vmax; j0 += KB) {            // stream key blocks once per tile
        const int64_t nj = std::min<int64_t>(KB, vmax - j0);
        // transpose the block to kT[d][KB] (zero tail): scores of 64 keys are then 8 vector FMAs per q element
        for (int64_t j = 0; j < KB; ++j) {
          const float* row = kb + (j0 + j) * d;
          for (int64_t e = 0; e < d; ++e) kT[e * KB + j] = j < nj ? row[e] : 0.f;
        }
        for (int64_t i = 0; i < nq; ++i) {
          const int64_t jend = std::min<int64_t>(nj, vis[i] - j0);
          if (jend <= 0) continue;
          std::fill(tot.begin(), tot.end(), 0.0);
          for (int64_t h = 0; h < H; ++h) {
            scores_kt(qt.data() + (i * H + h) * d, kT.data(), static_cast<int>(d), dots.data());
            const double wh = wt[i * H + h];
            for (int64_t j = 0; j < jend; ++j) tot[j] += wh * std::max(0.f, dots[j]);   // heads summed in double
          }
          for (int64_t j = 0; j < jend; ++j) score[i * N + j0 + j] = static_cast<float>(tot[j]);
        }
      }
      for (int64_t i = 0; i < nq; ++i) {                     // per-row exact top-k, ties to the lower id
        int32_t* o = idx + (b * S + t0 + i) * kk;
        const int64_t v = vis[i];
        const float* sr = score.data() + i * N;
        int64_t take = std::min(kk, v);
        for (int64_t j = 0; j < v; ++j) cand[j] = static_cast<int32_t>(j);
        if (v > kk) {
          auto better = [sr](int32_t x, int32_t y) { return sr[x] > sr[y] || (sr[x] == sr[y] && x < y); };
          std::nth_element(cand.begin(), cand.begin() + kk, cand.begin() + v, better);
          std::sort(cand.begin(), cand.begin() + kk);
        }
        for (int64_t j = 0; j < take; ++j) o[j] = cand[j];
        for (int64_t j = take; j < kk; ++j) o[j] = -1;
      }
    }
  }
  return 0;
}

int IndexerFwd(int, void** params, int*, int64_t** shapes, const char** dtypes, void*, void*) {
  return indexer_run(params, shapes, dtypes, static_cast<const float*>(params[3]), nullptr, shapes[4][0],
                     static_cast<int32_t*>(params[5]));
}

// The cached-step form: q, k, w as IndexerFwd, start int32[B] (row b's first position), cfg, sel -> idx.
int IndexerFwdP(int, void** params, int*, int64_t** shapes, const char** dtypes, void*, void*) {
  return indexer_run(params, shapes, dtypes, static_cast<const float*>(params[4]),
                     static_cast<const int32_t*>(params[3]), shapes[5][0], static_cast<int32_t*>(params[6]));
}

}  // extern "C"

// ------------------------------------------------------------------------------------------ compressor
namespace {

struct PoolArgs {
  int64_t B, S, W, m, c, n;  // W = coff·c
  int64_t L;                 // slots per block: 2m overlapping, m otherwise
  bool overlap;
  float eps;
};

// Slot s of block i: token and channel offset in kvp/scp, and the ape row/offset. false = empty slot.
inline bool slot(const PoolArgs& a, int64_t i, int64_t s, int64_t& tok, int64_t& ch, int64_t& ape_off) {
  if (a.overlap) {
    if (s < a.m) {
      if (i == 0) return false;
      tok = (i - 1) * a.m + s, ch = 0, ape_off = s * a.W;
    } else {
      tok = i * a.m + (s - a.m), ch = a.c, ape_off = (s - a.m) * a.W + a.c;
    }
  } else {
    tok = i * a.m + s, ch = 0, ape_off = s * a.W;
  }
  return true;
}

PoolArgs pool_args(int64_t** shapes, const float* cfg) {
  PoolArgs a{};
  a.B = shapes[0][0], a.S = shapes[0][1], a.W = shapes[0][2];
  a.m = shapes[2][0], a.c = shapes[3][0];
  a.overlap = a.W == 2 * a.c;
  a.L = a.overlap ? 2 * a.m : a.m;
  a.n = a.S / a.m;
  a.eps = cfg[0];
  return a;
}

// Block i of batch b before its RMSNorm: y = Σ_slots softmax_slots(scp + ape) ⊙ kvp per channel, leaving the slot max
// mx and the denominator den for the backward; returns Σ y².  y, mx, den hold c floats each.
double pool_block(const PoolArgs& a, const float* kvp, const float* scp, const float* ape, int64_t b, int64_t i,
                  float* y, float* mx, float* den) {
  std::fill(mx, mx + a.c, kNegInf);
  std::fill(den, den + a.c, 0.f);
  std::fill(y, y + a.c, 0.f);
  int64_t tok, ch, ao;
  for (int64_t s = 0; s < a.L; ++s) {
    if (!slot(a, i, s, tok, ch, ao)) continue;
    const float* sc = scp + (b * a.S + tok) * a.W + ch;
    for (int64_t e = 0; e < a.c; ++e) mx[e] = std::max(mx[e], sc[e] + ape[ao + e]);
  }
  for (int64_t s = 0; s < a.L; ++s) {
    if (!slot(a, i, s, tok, ch, ao)) continue;
    const float* sc = scp + (b * a.S + tok) * a.W + ch;
    const float* kv = kvp + (b * a.S + tok) * a.W + ch;
    for (int64_t e = 0; e < a.c; ++e) {
      const float p = std::exp(sc[e] + ape[ao + e] - mx[e]);
      den[e] += p, y[e] += p * kv[e];
    }
  }
  double ss = 0;
  for (int64_t e = 0; e < a.c; ++e) y[e] /= den[e], ss += static_cast<double>(y[e]) * y[e];
  return ss;
}

}  // namespace

extern "C" {

// kvp[B,S,coff·c], scp[B,S,coff·c] (projections, ape not added), ape[m,coff·c], norm_w[c], cfg f32[1] = {eps}
// -> out[B,S//m,c] = RMSNorm(Σ_slots softmax(scp + ape) ⊙ kvp) with the overlap slot map of the reference Compressor (docs/numerics.md).
int CompressPoolFwd(int, void** params, int*, int64_t** shapes, const char** dtypes, void*, void*) {
  const PoolArgs a = pool_args(shapes, static_cast<const float*>(params[4]));
  F32View kvp(params[0], dtypes[0], a.B * a.S * a.W), scp(params[1], dtypes[1], a.B * a.S * a.W);
  const float* ape = static_cast<const float*>(params[2]);
  const float* nw = static_cast<const float*>(params[3]);
#pragma omp parallel
  {
    std::vector<float> y(a.c), mx(a.c), den(a.c);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < a.B * a.n; ++r) {
      const int64_t b = r / a.n, i = r % a.n;
      const double ss = pool_block(a, kvp.p, scp.p, ape, b, i, y.data(), mx.data(), den.data());
      const float rs = static_cast<float>(1.0 / std::sqrt(ss / a.c + a.eps));
      for (int64_t e = 0; e < a.c; ++e) y[e] = y[e] * rs * nw[e];
      store_row(params[5], dtypes[0], r * a.c, y.data(), a.c);
    }
  }
  return 0;
}

// Backward of CompressPoolFwd: inputs kvp, scp, ape, norm_w, cfg, dout -> dkvp, dscp, dape, dnorm_w.
int CompressPoolBwd(int, void** params, int*, int64_t** shapes, const char** dtypes, void*, void*) {
  const PoolArgs a = pool_args(shapes, static_cast<const float*>(params[4]));
  F32View kvp(params[0], dtypes[0], a.B * a.S * a.W), scp(params[1], dtypes[1], a.B * a.S * a.W);
  const float* ape = static_cast<const float*>(params[2]);
  const float* nw = static_cast<const float*>(params[3]);
  F32View dout(params[5], dtypes[5], a.B * a.n * a.c);
  std::vector<float> dkvp(a.B * a.S * a.W, 0.f), dscp(a.B * a.S * a.W, 0.f);  // tail tokens stay 0
  const int nt = omp_get_max_threads();
  std::vector<std::vector<double>> dape_t(nt, std::vector<double>(a.m * a.W, 0.0)), dnw_t(nt, std::vector<double>(a.c, 0.0));
#pragma omp parallel
  {
    const int tid = omp_get_thread_num();
    std::vector<float> y(a.c), mx(a.c), den(a.c), g(a.c);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < a.B * a.n; ++r) {
      const int64_t b = r / a.n, i = r % a.n;
      const double ss = pool_block(a, kvp.p, scp.p, ape, b, i, y.data(), mx.data(), den.data());
      const double rs = 1.0 / std::sqrt(ss / a.c + a.eps);
      // RMSNorm backward: out = w·y·rs; dy = rs·(w⊙dout) - y·rs³·Σ(w⊙dout⊙y)/c
      const float* dor = dout.p + r * a.c;
      double gy = 0;
      for (int64_t e = 0; e < a.c; ++e) {
        dnw_t[tid][e] += static_cast<double>(dor[e]) * y[e] * rs;
        g[e] = dor[e] * nw[e];
        gy += static_cast<double>(g[e]) * y[e];
      }
      for (int64_t e = 0; e < a.c; ++e) g[e] = static_cast<float>(rs * g[e] - y[e] * rs * rs * rs * gy / a.c);
      // softmax pooling backward: dkv_s = p_s·dy, dsc_s = p_s·(kv_s - y)·dy
      int64_t tok, ch, ao;
      for (int64_t s = 0; s < a.L; ++s) {
        if (!slot(a, i, s, tok, ch, ao)) continue;
        const int64_t off = (b * a.S + tok) * a.W + ch;
        const float* sc = scp.p + off;
        const float* kv = kvp.p + off;
        for (int64_t e = 0; e < a.c; ++e) {
          const float p = std::exp(sc[e] + ape[ao + e] - mx[e]) / den[e];
          const float ds = p * (kv[e] - y[e]) * g[e];
          dkvp[off + e] = p * g[e];
          dscp[off + e] = ds;
          dape_t[tid][ao + e] += ds;
        }
      }
    }
  }
  store_row(params[6], dtypes[0], 0, dkvp.data(), a.B * a.S * a.W);
  store_row(params[7], dtypes[1], 0, dscp.data(), a.B * a.S * a.W);
  float* dape = static_cast<float*>(params[8]);
  float* dnw = static_cast<float*>(params[9]);
  sum_threads(dape_t, a.m * a.W, dape);
  sum_threads(dnw_t, a.c, dnw);
  return 0;
}

// Decode-state form: kvp[B,T,W], scp[B,T,W], ape[m,W], norm_w[c], kv_state[B,coff·m,W], score_state[B,coff·m,W],
// cfg f32[2] = {start_pos, eps}, sel[n_new] (shape only) -> entries[B,n_new,c], kv_state', score_state'.
// Token by token as reference.compress_kv_step (canonical state: emptied slots are kv 0 / score -inf).
int CompressStepFwd(int, void** params, int*, int64_t** shapes, const char**, void*, void*) {
  const int64_t B = shapes[0][0], T = shapes[0][1], W = shapes[0][2], m = shapes[2][0], c = shapes[3][0];
  const int64_t SL = shapes[4][1], n_new = shapes[7][0];
  const bool overlap = W == 2 * c;
  const float* kvp = static_cast<const float*>(params[0]);
  const float* scp = static_cast<const float*>(params[1]);
  const float* ape = static_cast<const float*>(params[2]);
  const float* nw = static_cast<const float*>(params[3]);
  const float* cfg = static_cast<const float*>(params[6]);
  const int64_t start_pos = static_cast<int64_t>(cfg[0]);
  const float eps = cfg[1];
  float* ent = static_cast<float*>(params[8]);
  float* ks = static_cast<float*>(params[9]);
  float* ss = static_cast<float*>(params[10]);
  std::memcpy(ks, params[4], B * SL * W * sizeof(float));
  std::memcpy(ss, params[5], B * SL * W * sizeof(float));
  const int64_t off = overlap ? m : 0, L = overlap ? 2 * m : m;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    float* K = ks + b * SL * W;
    float* Sc = ss + b * SL * W;
    std::vector<float> y(c), mx(c), den(c);
    int64_t e_out = 0;
    for (int64_t j = 0; j < T; ++j) {
      const int64_t p = start_pos + j, s = off + p % m;
      for (int64_t e = 0; e < W; ++e) {
        K[s * W + e] = kvp[(b * T + j) * W + e];
        Sc[s * W + e] = scp[(b * T + j) * W + e] + ape[(p % m) * W + e];
      }
      if ((p + 1) % m) continue;
      std::fill(mx.begin(), mx.end(), kNegInf);
      std::fill(den.begin(), den.end(), 0.f);
      std::fill(y.begin(), y.end(), 0.f);
      for (int64_t sl = 0; sl < L; ++sl) {
        const int64_t ch = (overlap && sl >= m) ? c : 0;
        for (int64_t e = 0; e < c; ++e) mx[e] = std::max(mx[e], Sc[sl * W + ch + e]);
      }
      for (int64_t sl = 0; sl < L; ++sl) {
        const int64_t ch = (overlap && sl >= m) ? c : 0;
        for (int64_t e = 0; e < c; ++e) {
          const float sv = Sc[sl * W + ch + e];
          if (sv == kNegInf) continue;
          const float pr = std::exp(sv - mx[e]);
          den[e] += pr, y[e] += pr * K[sl * W + ch + e];
        }
      }
      double sq = 0;
      for (int64_t e = 0; e < c; ++e) y[e] /= den[e], sq += static_cast<double>(y[e]) * y[e];
      const float rs = static_cast<float>(1.0 / std::sqrt(sq / c + eps));
      for (int64_t e = 0; e < c; ++e) ent[(b * n_new + e_out) * c + e] = y[e] * rs * nw[e];
      ++e_out;
      if (overlap) {
        std::memcpy(K, K + m * W, m * W * sizeof(float));
        std::memcpy(Sc, Sc + m * W, m * W * sizeof(float));
      }
      for (int64_t e = off * W; e < L * W; ++e) K[e] = 0.f, Sc[e] = kNegInf;
    }
  }
  return 0;
}

}  // extern "C"

// ------------------------------------------------------------------------------------------------ RoPE
namespace {

// x viewed as [A, M, G, d], tables cos2/sin2 [M, w] doubled per pair (cos2 = (c0, c0, c1, c1, ...),
// sin2 = (-s0, +s0, -s1, +s1, ...)): y = x with its last w dims rotated, rot = r·cos2 + pairswap(r)·sin2 (inverse:
// − pairswap(r)·sin2). Two products then one add per element, as the composite's Mul, Mul, Add (no contraction:
// the library is built with -ffp-contract=off), so the result is bitwise the composite's. One pass over x.
// transpose = the backward: dx[2i] = dy[2i]·c[2i] + dy[2i+1]·sin2[2i+1], dx[2i+1] = dy[2i+1]·c[2i+1] + dy[2i]·sin2[2i]
// (the exact transpose for any tables; for doubled ones, the inverse rotation).
void rope_rows(const float* x, const float* cs, const float* sn, float* y, int64_t A, int64_t M, int64_t G,
               int64_t d, int64_t w, float sign, bool transpose) {
  const int64_t rows = A * M * G, keep = d - w;
#pragma omp parallel for schedule(static) if (rows * d >= (1 << 16))
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t m = (r / G) % M;
    const float* xr = x + r * d;
    float* yr = y + r * d;
    if (keep > 0) std::memcpy(yr, xr, keep * sizeof(float));
    const float* a = xr + keep;
    const float* c = cs + m * w;
    const float* s = sn + m * w;
    float* o = yr + keep;
    for (int64_t i = 0; i + 1 < w; i += 2) {
      const float s0 = sign * s[transpose ? i + 1 : i], s1 = sign * s[transpose ? i : i + 1];
      const float p0 = a[i] * c[i], q0 = a[i + 1] * s0;
      const float p1 = a[i + 1] * c[i + 1], q1 = a[i] * s1;
      o[i] = p0 + q0;
      o[i + 1] = p1 + q1;
    }
  }
}

int rope_kernel(void** params, int* ndims, int64_t** shapes, const char** dtypes, bool transpose) {
  if (!av4::is_f32(dtypes[0]) || !av4::is_f32(dtypes[1]) || !av4::is_f32(dtypes[2])) return 1;
  const float* cfg = static_cast<const float*>(params[3]);
  const int64_t A = static_cast<int64_t>(cfg[0]), M = static_cast<int64_t>(cfg[1]), G = static_cast<int64_t>(cfg[2]);
  const int64_t d = shapes[0][ndims[0] - 1], w = shapes[1][ndims[1] - 1];
  if (w > d || w % 2 || A * M * G * d != numel(ndims[0], shapes[0]) || M * w != numel(ndims[1], shapes[1]) ||
      M * w != numel(ndims[2], shapes[2]))
    return 2;
  rope_rows(static_cast<const float*>(params[0]), static_cast<const float*>(params[1]),
            static_cast<const float*>(params[2]), static_cast<float*>(params[4]), A, M, G, d, w, cfg[3], transpose);
  return 0;
}

}  // namespace

extern "C" {

// x[..., d] f32, cos2[..., w], sin2[..., w] (M·w elements), cfg f32[4] = {A, M, G, sign} with x = [A, M, G, d]
// row-major and table row m for x[a, m, g]; sign +1 rotates, -1 rotates back -> y like x.
int RopeFwd(int, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  return rope_kernel(params, ndims, shapes, dtypes, false);
}

// Backward, same inputs with dy in place of x -> dx = the transpose applied to dy (a second symbol: MindSpore
// keys a Custom op's bprop by its kernel symbol).
int RopeBwd(int, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  return rope_kernel(params, ndims, shapes, dtypes, true);
}

}  // extern "C"
