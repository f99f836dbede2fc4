// MoE CPU kernels for MindSpore `ops.Custom(func_type="aot")` (ABI in ops/common_cpu/aot.h).
//
// Vendor-semantics kernels (one-to-one with aclnn):                         backward kernels
//   MoeGatingTopK        logits -> (y, expert_idx, score)                     MoeGatingTopKGrad
//   MoeInitRouting       x, expert_idx -> (expanded_x, expanded_row_idx,      MoeInitRoutingGrad
//                        tokens_count_or_cumsum, tokens_before_capacity)
//   GroupedMatmul        x, w, group_list -> y                                GroupedMatmulGrad
//   MoeFinalizeRouting   expanded_x, scales, row_idx, x1, x2, bias, eidx      MoeFinalizeRoutingGrad
// Fused expert FFN (GEMM1 for w1|w3 + clamped SwiGLU epilogue + GEMM2):
//   GroupedFfn           x [M, D] rows grouped by group_list                  GroupedFfnGrad
//   PaddedFfn            x [E, C, D] (drop/pad layout; all-zero tail rows skipped, exact)   PaddedFfnGrad
//
// Static configuration arrives as small "params" tensors (float32 or int32) plus output shapes; optional inputs
// are 1-element dummies whose presence is flagged in params. Index tensors may be int32 or int64.
// Float tensors must be float32 except the pure data-movement paths (init routing / its grad), which move
// rows of any 2- or 4-byte dtype bit-exactly.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "aot.h"
#include "gemm.h"

namespace moek {

using moe::Job;
using moe::View;

struct Idx {  // int32 / int64 index tensor reader
  const void* p;
  bool i64;
  int64_t operator[](int64_t i) const {
    return i64 ? static_cast<const int64_t*>(p)[i] : int64_t(static_cast<const int32_t*>(p)[i]);
  }
};

inline bool is_i64(const char* dt) { return std::strcmp(dt, "int64") == 0; }
inline bool is_i32(const char* dt) { return std::strcmp(dt, "int32") == 0; }
inline Idx idx_of(void* p, const char* dt) { return Idx{p, is_i64(dt)}; }

inline int64_t elem_size(const char* dt) {
  if (std::strcmp(dt, "float32") == 0 || is_i32(dt)) return 4;
  if (std::strcmp(dt, "float16") == 0 || std::strcmp(dt, "bfloat16") == 0) return 2;
  if (is_i64(dt) || std::strcmp(dt, "float64") == 0) return 8;
  return 0;
}

// ============================================================================================ gating
// params (float32[8]): k_group, group_count, group_select_mode, norm_type (0 softmax, 1 sigmoid, 2 sqrt-softplus),
//                      routed_scaling_factor, eps, has_bias, hashed
// inputs: logits [T, E] f32, bias [E] f32 | dummy, params, input_ids [T] int | dummy, tid2eid [V, k] int | dummy
// outputs: y [T, k] f32, expert_idx [T, k] int32, score [T, E] f32
struct GateCfg {
  int k_group, group_count, group_mode, norm_type;
  float scale, eps;
  bool has_bias, hashed;
  explicit GateCfg(const float* p)
      : k_group(int(p[0])), group_count(int(p[1])), group_mode(int(p[2])), norm_type(int(p[3])), scale(p[4]),
        eps(p[5]), has_bias(p[6] != 0.f), hashed(p[7] != 0.f) {}
};

inline void scores_row(const float* l, int64_t E, int norm_type, float* s) {
  if (norm_type == 0) {
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t e = 0; e < E; ++e) m = std::max(m, l[e]);
    double z = 0;
    for (int64_t e = 0; e < E; ++e) z += (s[e] = std::exp(l[e] - m));
    const float inv = float(1.0 / z);
    for (int64_t e = 0; e < E; ++e) s[e] *= inv;
  } else if (norm_type == 1) {
    for (int64_t e = 0; e < E; ++e) s[e] = 1.f / (1.f + std::exp(-l[e]));
  } else {  // sqrt(softplus(l)), softplus = max(l, 0) + log1p(exp(-|l|))
    for (int64_t e = 0; e < E; ++e) s[e] = std::sqrt(std::max(l[e], 0.f) + std::log1p(std::exp(-std::fabs(l[e]))));
  }
}

// Top-k of `sel` over the allowed experts: larger value first, ties -> lower expert id.
inline void topk_row(const float* sel, const unsigned char* allowed, int64_t E, int64_t k, int32_t* out,
                     std::vector<unsigned char>& taken) {
  taken.assign(E, 0);
  for (int64_t j = 0; j < k; ++j) {
    int64_t best = -1;
    for (int64_t e = 0; e < E; ++e) {
      if (taken[e] || (allowed && !allowed[e])) continue;
      if (best < 0 || sel[e] > sel[best]) best = e;
    }
    if (best < 0) best = 0;  // k larger than the allowed set: cannot happen with valid configs
    taken[best] = 1;
    out[j] = int32_t(best);
  }
}

extern "C" int MoeGatingTopK(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*,
                             void*) {
  if (nparam != 8) return 1;
  const float* logits = static_cast<const float*>(params[0]);
  const float* bias = static_cast<const float*>(params[1]);
  const GateCfg cfg(static_cast<const float*>(params[2]));
  const Idx ids_in = idx_of(params[3], dtypes[3]);
  const Idx table = idx_of(params[4], dtypes[4]);
  float* y = static_cast<float*>(params[5]);
  int32_t* eidx = static_cast<int32_t*>(params[6]);
  float* score = static_cast<float*>(params[7]);
  if (!av4::is_f32(dtypes[0])) return 2;
  const int64_t T = shapes[0][0], E = shapes[0][1], k = shapes[5][1];
  const int64_t tk = ndims[4] == 2 ? shapes[4][1] : 0;
  if (cfg.hashed && tk != k) return 3;
  const int G = std::max(1, cfg.group_count);
  if (E % G != 0) return 4;
  const int64_t per = E / G;
  {
    moe::parallel_for(T, 16, [&](int64_t t) {
      static thread_local std::vector<float> sel, gscore;
      static thread_local std::vector<unsigned char> taken, allowed;
      static thread_local std::vector<int32_t> gsel;
      sel.resize(E);
      gscore.resize(G);
      allowed.resize(E);
      gsel.resize(G);
      const float* l = logits + t * E;
      float* s = score + t * E;
      scores_row(l, E, cfg.norm_type, s);
      int32_t* ids = eidx + t * k;
      if (cfg.hashed) {
        const int64_t tok = ids_in[t];
        for (int64_t j = 0; j < k; ++j) ids[j] = int32_t(table[tok * tk + j]);
      } else {
        for (int64_t e = 0; e < E; ++e) sel[e] = s[e] + (cfg.has_bias ? bias[e] : 0.f);
        const unsigned char* allow = nullptr;
        if (G > 1) {
          for (int g = 0; g < G; ++g) {
            const float* v = sel.data() + g * per;
            if (cfg.group_mode == 1) {  // sum of the group's top-2
              float a = -std::numeric_limits<float>::infinity(), b = a;
              for (int64_t i = 0; i < per; ++i) {
                if (v[i] > a) {
                  b = a;
                  a = v[i];
                } else if (v[i] > b) {
                  b = v[i];
                }
              }
              gscore[g] = per > 1 ? a + b : a;
            } else {
              gscore[g] = *std::max_element(v, v + per);
            }
          }
          topk_row(gscore.data(), nullptr, G, std::min<int64_t>(cfg.k_group, G), gsel.data(), taken);
          std::fill(allowed.begin(), allowed.end(), 0);
          for (int g = 0; g < std::min(cfg.k_group, G); ++g)
            std::fill(allowed.begin() + gsel[g] * per, allowed.begin() + (gsel[g] + 1) * per, 1);
          allow = allowed.data();
        }
        topk_row(sel.data(), allow, E, k, ids, taken);
      }
      double sum = 0;
      for (int64_t j = 0; j < k; ++j) sum += s[ids[j]];
      const double norm = cfg.norm_type == 0 ? 1.0 : 1.0 / (sum + cfg.eps);
      for (int64_t j = 0; j < k; ++j) y[t * k + j] = float(s[ids[j]] * norm * cfg.scale);
    });
  }
  return 0;
}

// inputs: logits [T, E], expert_idx [T, k], params, dy [T, k], dscore [T, E]  ->  dlogits [T, E]
extern "C" int MoeGatingTopKGrad(int nparam, void** params, int*, int64_t** shapes, const char** dtypes, void*,
                                 void*) {
  if (nparam != 6) return 1;
  const float* logits = static_cast<const float*>(params[0]);
  const Idx eidx = idx_of(params[1], dtypes[1]);
  const GateCfg cfg(static_cast<const float*>(params[2]));
  const float* dy = static_cast<const float*>(params[3]);
  const float* dscore = static_cast<const float*>(params[4]);
  float* dl = static_cast<float*>(params[5]);
  const int64_t T = shapes[0][0], E = shapes[0][1], k = shapes[1][1];
  {
    moe::parallel_for(T, 16, [&](int64_t t) {
      static thread_local std::vector<float> s, ds;
      s.resize(E);
      ds.resize(E);
      const float* l = logits + t * E;
      scores_row(l, E, cfg.norm_type, s.data());
      for (int64_t e = 0; e < E; ++e) ds[e] = dscore[t * E + e];
      const float* g = dy + t * k;
      if (cfg.norm_type == 0) {
        for (int64_t j = 0; j < k; ++j) ds[eidx[t * k + j]] += g[j] * cfg.scale;
      } else {
        double S = 0, dot = 0;
        for (int64_t j = 0; j < k; ++j) {
          const double sj = s[eidx[t * k + j]];
          S += sj;
          dot += g[j] * sj;
        }
        const double inv = 1.0 / (S + cfg.eps);
        for (int64_t j = 0; j < k; ++j) ds[eidx[t * k + j]] += float(cfg.scale * (g[j] * inv - dot * inv * inv));
      }
      float* o = dl + t * E;
      if (cfg.norm_type == 0) {
        double dot = 0;
        for (int64_t e = 0; e < E; ++e) dot += double(ds[e]) * s[e];
        for (int64_t e = 0; e < E; ++e) o[e] = float(s[e] * (ds[e] - dot));
      } else if (cfg.norm_type == 1) {
        for (int64_t e = 0; e < E; ++e) o[e] = ds[e] * s[e] * (1.f - s[e]);
      } else {  // d sqrt(softplus(l)) = sigmoid(l) / (2 sqrt(softplus(l)))
        for (int64_t e = 0; e < E; ++e) {
          const float sig = 1.f / (1.f + std::exp(-l[e]));
          o[e] = s[e] > 0.f ? ds[e] * sig / (2.f * s[e]) : 0.f;
        }
      }
    });
  }
  return 0;
}

// ============================================================================================ init routing
// params (int32[2]): drop_pad_mode, count_or_cumsum_flag (1 cumsum, otherwise count)
// inputs: x [T, H] (any 2/4-byte dtype), expert_idx [T, k] int, params
// outputs: expanded_x [n_out, H] (dropless; n_out = min(active_num, T*k)) or [E, C, H] (drop/pad),
//          expanded_row_idx [T*k] int32, tokens_count_or_cumsum [E] int32, tokens_before_capacity [E] int32
// Rows whose expert id is outside [0, E) are inactive: row idx -1, never materialised (expert-parallel local
// selection relies on this). Order inside an expert = flattened (token, k) order, i.e. a stable key sort.
extern "C" int MoeInitRouting(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*,
                              void*) {
  if (nparam != 7) return 1;
  const char* x = static_cast<const char*>(params[0]);
  const Idx eidx = idx_of(params[1], dtypes[1]);
  const int32_t* cfg = static_cast<const int32_t*>(params[2]);
  char* out = static_cast<char*>(params[3]);
  int32_t* row_idx = static_cast<int32_t*>(params[4]);
  int32_t* count_out = static_cast<int32_t*>(params[5]);
  int32_t* before = static_cast<int32_t*>(params[6]);
  const int64_t es = elem_size(dtypes[0]);
  if (es == 0 || std::strcmp(dtypes[0], dtypes[3]) != 0) return 2;
  const int64_t T = shapes[0][0], H = shapes[0][1], K = shapes[1][1], N = T * K, E = shapes[5][0];
  const bool drop_pad = cfg[0] == 1;
  if (drop_pad != (ndims[3] == 3)) return 3;
  const int64_t C = drop_pad ? shapes[3][1] : 0;
  const int64_t n_out = drop_pad ? E * C : shapes[3][0];
  const int64_t row_bytes = H * es;

  std::vector<int64_t> cnt(E + 1, 0), start(E + 1, 0), fill(E + 1, 0);
  std::vector<int32_t> key(N);
  for (int64_t i = 0; i < N; ++i) {
    const int64_t e = eidx[i];
    key[i] = int32_t(e >= 0 && e < E ? e : E);
    ++cnt[key[i]];
  }
  for (int64_t e = 1; e <= E; ++e) start[e] = start[e - 1] + cnt[e - 1];
  for (int64_t i = 0; i < N; ++i) {
    const int64_t e = key[i];
    const int64_t pos = fill[e]++;
    if (e == E) {
      row_idx[i] = -1;
    } else if (drop_pad) {
      row_idx[i] = pos < C ? int32_t(e * C + pos) : -1;
    } else {
      row_idx[i] = int32_t(start[e] + pos);
    }
  }
  int64_t run = 0;
  for (int64_t e = 0; e < E; ++e) {
    before[e] = int32_t(cnt[e]);
    const int64_t kept = drop_pad ? std::min(cnt[e], C) : cnt[e];
    run += kept;
    count_out[e] = int32_t(cfg[1] == 1 ? run : kept);
  }
  // Rows nobody writes (padding, inactive tail, rows past active_num) are zero.
  std::vector<unsigned char> written(n_out, 0);
  for (int64_t i = 0; i < N; ++i)
    if (row_idx[i] >= 0 && row_idx[i] < n_out) written[row_idx[i]] = 1;
  const int64_t grain = std::max<int64_t>(1, (256 << 10) / std::max<int64_t>(1, row_bytes));   // >= 256 KB a task
  moe::parallel_for(N, grain, [&](int64_t i) {
    const int64_t r = row_idx[i];
    if (r >= 0 && r < n_out) std::memcpy(out + r * row_bytes, x + (i / K) * row_bytes, row_bytes);
  });
  moe::parallel_for(n_out, grain, [&](int64_t r) {
    if (!written[r]) std::memset(out + r * row_bytes, 0, row_bytes);
  });
  return 0;
}

// inputs: d_expanded ([n_out, H] or [E, C, H]), expanded_row_idx [T*k], x_like [T, H] (shape only)
// output: dx [T, H] = sum_k d_expanded[row_idx[t*k + j]]     (float32)
extern "C" int MoeInitRoutingGrad(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                                  void*, void*) {
  if (nparam != 4) return 1;
  if (!av4::is_f32(dtypes[0])) return 2;
  const float* g = static_cast<const float*>(params[0]);
  const Idx row = idx_of(params[1], dtypes[1]);
  float* dx = static_cast<float*>(params[3]);
  const int64_t T = shapes[3][0], H = shapes[3][1], N = shapes[1][0], K = T > 0 ? N / T : 0;
  const int64_t rows = av4::numel(ndims[0], shapes[0]) / std::max<int64_t>(H, 1);
  moe::parallel_for(T, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, H * K)), [&](int64_t t) {
    float* o = dx + t * H;
    std::memset(o, 0, sizeof(float) * H);
    for (int64_t j = 0; j < K; ++j) {
      const int64_t r = row[t * K + j];
      if (r < 0 || r >= rows) continue;
      const float* src = g + r * H;
      for (int64_t h = 0; h < H; ++h) o[h] += src[h];
    }
  });
  return 0;
}

// ============================================================================================ finalize routing
// params (int32[4]): drop_pad_mode (0..3; 0/1 column-arranged idx[k*T + t], 2/3 row-arranged idx[t*K + k]),
//                    has_x1, has_x2, has_bias
// inputs: expanded_x ([R, H] or [E, C, H]), scales [T, K] f32, row_idx [T*K] int, x1 [T, H]|dummy, x2|dummy,
//         bias [E, H]|dummy, expert_idx [T, K]|dummy, params     ->  out [T, H]
inline int64_t fin_pos(int mode, int64_t t, int64_t j, int64_t T, int64_t K) {
  return (mode == 0 || mode == 1) ? j * T + t : t * K + j;
}

extern "C" int MoeFinalizeRouting(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                                  void*, void*) {
  if (nparam != 9) return 1;
  for (int i : {0, 1, 8})
    if (!av4::is_f32(dtypes[i])) return 2;
  const float* ex = static_cast<const float*>(params[0]);
  const float* sc = static_cast<const float*>(params[1]);
  const Idx row = idx_of(params[2], dtypes[2]);
  const float* x1 = static_cast<const float*>(params[3]);
  const float* x2 = static_cast<const float*>(params[4]);
  const float* bias = static_cast<const float*>(params[5]);
  const Idx eidx = idx_of(params[6], dtypes[6]);
  const int32_t* cfg = static_cast<const int32_t*>(params[7]);
  float* out = static_cast<float*>(params[8]);
  const int64_t T = shapes[8][0], H = shapes[8][1], K = shapes[1][1];
  const int64_t R = av4::numel(ndims[0], shapes[0]) / std::max<int64_t>(H, 1);
  const int mode = cfg[0];
  const bool has_x1 = cfg[1], has_x2 = cfg[2], has_bias = cfg[3];
  moe::parallel_for(T, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, H * K)), [&](int64_t t) {
    float* o = out + t * H;
    if (has_x1) {
      std::memcpy(o, x1 + t * H, sizeof(float) * H);
    } else {
      std::memset(o, 0, sizeof(float) * H);
    }
    if (has_x2)
      for (int64_t h = 0; h < H; ++h) o[h] += x2[t * H + h];
    for (int64_t j = 0; j < K; ++j) {
      const int64_t r = row[fin_pos(mode, t, j, T, K)];
      if (r < 0 || r >= R) continue;
      const float s = sc[t * K + j];
      const float* src = ex + r * H;
      for (int64_t h = 0; h < H; ++h) o[h] += s * src[h];
      if (has_bias) {
        const float* b = bias + eidx[t * K + j] * H;
        for (int64_t h = 0; h < H; ++h) o[h] += s * b[h];
      }
    }
  });
  return 0;
}

// inputs: expanded_x, scales, row_idx, bias|dummy, expert_idx|dummy, params, dout [T, H]
// outputs: d_expanded (shape of expanded_x), d_scales [T, K], d_bias (shape of bias input)
extern "C" int MoeFinalizeRoutingGrad(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                                      void*, void*) {
  if (nparam != 10) return 1;
  const float* ex = static_cast<const float*>(params[0]);
  const float* sc = static_cast<const float*>(params[1]);
  const Idx row = idx_of(params[2], dtypes[2]);
  const float* bias = static_cast<const float*>(params[3]);
  const Idx eidx = idx_of(params[4], dtypes[4]);
  const int32_t* cfg = static_cast<const int32_t*>(params[5]);
  const float* dout = static_cast<const float*>(params[6]);
  float* dex = static_cast<float*>(params[7]);
  float* dsc = static_cast<float*>(params[8]);
  float* dbias = static_cast<float*>(params[9]);
  const int64_t T = shapes[6][0], H = shapes[6][1], K = shapes[1][1];
  const int64_t R = av4::numel(ndims[0], shapes[0]) / std::max<int64_t>(H, 1);
  const int mode = cfg[0];
  const bool has_bias = cfg[3];
  std::memset(dex, 0, sizeof(float) * R * H);
  std::memset(dbias, 0, sizeof(float) * av4::numel(ndims[9], shapes[9]));
  moe::parallel_for(T, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, H * K)), [&](int64_t t) {
    const float* g = dout + t * H;
    for (int64_t j = 0; j < K; ++j) {
      const int64_t r = row[fin_pos(mode, t, j, T, K)];
      if (r < 0 || r >= R) {
        dsc[t * K + j] = 0.f;
        continue;
      }
      const float s = sc[t * K + j];
      const float* src = ex + r * H;
      float* d = dex + r * H;  // each valid row index is used by exactly one (t, k): no race
      double dot = 0;
      for (int64_t h = 0; h < H; ++h) {
        d[h] += s * g[h];
        dot += double(g[h]) * src[h];
      }
      if (has_bias) {
        const float* b = bias + eidx[t * K + j] * H;
        for (int64_t h = 0; h < H; ++h) dot += double(g[h]) * b[h];
      }
      dsc[t * K + j] = float(dot);
    }
  });
  if (has_bias) {  // serial over tokens: several tokens share an expert's bias row
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < K; ++j) {
        const int64_t r = row[fin_pos(mode, t, j, T, K)];
        if (r < 0 || r >= R) continue;
        const float s = sc[t * K + j];
        float* d = dbias + eidx[t * K + j] * H;
        for (int64_t h = 0; h < H; ++h) d[h] += s * dout[t * H + h];
      }
  }
  return 0;
}

// ============================================================================================ groups
struct Groups {
  std::vector<int64_t> start, cnt;
  int64_t covered = 0;  // rows [0, covered) belong to some group
};

// group_list (cumsum when type 0, counts when type 1) over M rows; groups are clipped to [0, M).
inline Groups make_groups(Idx gl, int64_t E, int type, int64_t M) {
  Groups g;
  g.start.resize(E);
  g.cnt.resize(E);
  int64_t prev = 0;
  for (int64_t e = 0; e < E; ++e) {
    int64_t end = type == 0 ? gl[e] : prev + gl[e];
    end = std::max(prev, std::min(end, M));
    g.start[e] = prev;
    g.cnt[e] = end - prev;
    prev = end;
  }
  g.covered = prev;
  return g;
}

// Drop/pad layout [E, C, D]: group e = rows [e*C, e*C + n_e) where n_e excludes trailing all-zero rows. Those
// rows give exactly zero output and zero gradients, so skipping them is exact.
inline Groups padded_groups(const float* x, int64_t E, int64_t C, int64_t D) {
  Groups g;
  g.start.resize(E);
  g.cnt.resize(E);
  moe::parallel_for(E, 1, [&](int64_t e) {
    int64_t n = C;
    while (n > 0) {
      const float* r = x + (e * C + n - 1) * D;
      bool zero = true;
      for (int64_t d = 0; d < D && zero; ++d) zero = r[d] == 0.f;
      if (!zero) break;
      --n;
    }
    g.start[e] = e * C;
    g.cnt[e] = n;
  });
  g.covered = E * C;
  return g;
}

// Zero rows of a [M, N] matrix outside the groups.
inline void zero_uncovered(float* y, int64_t M, int64_t N, const Groups& g) {
  std::vector<unsigned char> in(M, 0);
  for (size_t e = 0; e < g.start.size(); ++e)
    for (int64_t r = g.start[e]; r < g.start[e] + g.cnt[e]; ++r) in[r] = 1;
  moe::parallel_for(M, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, N)), [&](int64_t r) {
    if (!in[r]) std::memset(y + r * N, 0, sizeof(float) * N);
  });
}

// ============================================================================================ grouped matmul
// params (int32[2]): group_list_type (0 cumsum, 1 count), transpose_weight (w stored [E, N, K])
// inputs: x [M, K] f32, w [E, K, N] | [E, N, K] f32, group_list [E] int, params  ->  y [M, N]
struct GmmShape {
  int64_t M, K, N, E;
  bool tw;
};

inline GmmShape gmm_shape(int64_t** shapes, const int32_t* cfg) {
  GmmShape s;
  s.M = shapes[0][0];
  s.K = shapes[0][1];
  s.E = shapes[1][0];
  s.tw = cfg[1] != 0;
  s.N = s.tw ? shapes[1][1] : shapes[1][2];
  return s;
}

inline View weight_view(const float* w, const GmmShape& s, int64_t e) {  // (k, n) view of expert e
  const float* p = w + e * s.K * s.N;
  return s.tw ? View{p, 1, s.K} : View{p, s.N, 1};
}

extern "C" int GroupedMatmul(int nparam, void** params, int*, int64_t** shapes, const char** dtypes, void*, void*) {
  if (nparam != 5) return 1;
  if (!av4::is_f32(dtypes[0]) || !av4::is_f32(dtypes[1])) return 2;
  const float* x = static_cast<const float*>(params[0]);
  const float* w = static_cast<const float*>(params[1]);
  const int32_t* cfg = static_cast<const int32_t*>(params[3]);
  float* y = static_cast<float*>(params[4]);
  const GmmShape s = gmm_shape(shapes, cfg);
  const Groups g = make_groups(idx_of(params[2], dtypes[2]), s.E, cfg[0], s.M);
  std::vector<Job> jobs;
  for (int64_t e = 0; e < s.E; ++e)
    if (g.cnt[e] > 0)
      jobs.push_back(Job{g.cnt[e], s.N, s.K, View{x + g.start[e] * s.K, s.K, 1}, weight_view(w, s, e),
                         y + g.start[e] * s.N, s.N, false});
  moe::run_jobs(jobs);
  zero_uncovered(y, s.M, s.N, g);
  return 0;
}

// inputs: x, w, group_list, params, dy [M, N]  ->  dx [M, K], dw (shape of w)
extern "C" int GroupedMatmulGrad(int nparam, void** params, int*, int64_t** shapes, const char** dtypes, void*,
                                 void*) {
  if (nparam != 7) return 1;
  const float* x = static_cast<const float*>(params[0]);
  const float* w = static_cast<const float*>(params[1]);
  const int32_t* cfg = static_cast<const int32_t*>(params[3]);
  const float* dy = static_cast<const float*>(params[4]);
  float* dx = static_cast<float*>(params[5]);
  float* dw = static_cast<float*>(params[6]);
  const GmmShape s = gmm_shape(shapes, cfg);
  const Groups g = make_groups(idx_of(params[2], dtypes[2]), s.E, cfg[0], s.M);
  std::vector<Job> jobs;
  for (int64_t e = 0; e < s.E; ++e) {
    const int64_t m = g.cnt[e], r0 = g.start[e];
    const View dY{dy + r0 * s.N, s.N, 1}, X{x + r0 * s.K, s.K, 1};
    if (m > 0) jobs.push_back(Job{m, s.K, s.N, dY, weight_view(w, s, e).t(), dx + r0 * s.K, s.K, false});
    float* dwe = dw + e * s.K * s.N;
    if (s.tw)  // dW_e [N, K] = dY^T X
      jobs.push_back(Job{s.N, s.K, m, dY.t(), X, dwe, s.K, false});
    else  // dW_e [K, N] = X^T dY
      jobs.push_back(Job{s.K, s.N, m, X.t(), dY, dwe, s.N, false});
  }
  moe::run_jobs(jobs);
  zero_uncovered(dx, s.M, s.K, g);
  return 0;
}

// ============================================================================================ fused expert FFN
// y_e = (silu(min(x W1ᵀ, L)) * clamp(x W3ᵀ, -L, L)) W2ᵀ per group (L <= 0: no clamp).  w1, w3 [E, I, D]; w2 [E, D, I]
struct FfnShape {
  int64_t E, I, D;
};

inline float silu(float g) { return g / (1.f + std::exp(-g)); }

// A tile of the gate/up projections: expert e, columns [n0, n0 + NB) of I.
struct FfnTile {
  int64_t e, n0;
};

// The tiles of every expert that has rows, largest groups first (the longest tasks start first).
inline std::vector<FfnTile> ffn_tiles(const Groups& g, const FfnShape& s) {
  std::vector<FfnTile> tiles;
  for (int64_t e = 0; e < s.E; ++e)
    if (g.cnt[e] > 0)
      for (int64_t n0 = 0; n0 < s.I; n0 += moe::NB) tiles.push_back({e, n0});
  std::stable_sort(tiles.begin(), tiles.end(),
                   [&](const FfnTile& a, const FfnTile& b) { return g.cnt[a.e] > g.cnt[b.e]; });
  return tiles;
}

// G = X_e W1[e, n0:n0+nb]ᵀ and U = X_e W3[e, n0:n0+nb]ᵀ, [m, nb] each, in the calling thread's scratch t0, t1.
struct GateUp {
  int64_t e, n0, nb, m, r0;
  float *G, *U;
};

inline GateUp gate_up(const float* x, const float* w1, const float* w3, const Groups& g, const FfnShape& s,
                      const FfnTile& tile) {
  GateUp t{tile.e, tile.n0, std::min(moe::NB, s.I - tile.n0), g.cnt[tile.e], g.start[tile.e], nullptr, nullptr};
  moe::Scratch& ws = moe::scratch();
  t.G = ws.t0.get(size_t(t.m) * t.nb);
  t.U = ws.t1.get(size_t(t.m) * t.nb);
  moe::gemm_block_dual(t.m, t.nb, s.D, View{x + t.r0 * s.D, s.D, 1}, View{w1 + (t.e * s.I + t.n0) * s.D, 1, s.D},
                       View{w3 + (t.e * s.I + t.n0) * s.D, 1, s.D}, t.G, t.U, t.nb);
  return t;
}

// Forward; optionally keeps G, U (pre-clamp) and H for the backward pass.
inline void ffn_forward(const float* x, const float* w1, const float* w2, const float* w3, const Groups& g,
                        const FfnShape& s, float L, float* y, float* H) {
  // Phase 1: per (expert, column block of I): G, U tiles -> H.
  const std::vector<FfnTile> tiles = ffn_tiles(g, s);
  moe::parallel_tasks(int64_t(tiles.size()), [&](int64_t ti) {
    const GateUp t = gate_up(x, w1, w3, g, s, tiles[ti]);
    const int64_t nb = t.nb;
    for (int64_t i = 0; i < t.m; ++i) {
      float* h = H + (t.r0 + i) * s.I + t.n0;
      const float* gr = t.G + i * nb;
      const float* ur = t.U + i * nb;
      if (L > 0.f) {
        for (int64_t j = 0; j < nb; ++j) h[j] = silu(std::min(gr[j], L)) * std::min(std::max(ur[j], -L), L);
      } else {
        for (int64_t j = 0; j < nb; ++j) h[j] = silu(gr[j]) * ur[j];
      }
    }
  });
  // Phase 2: y_e = H_e W2_eᵀ.
  std::vector<Job> jobs;
  for (int64_t e = 0; e < s.E; ++e)
    if (g.cnt[e] > 0)
      jobs.push_back(Job{g.cnt[e], s.D, s.I, View{H + g.start[e] * s.I, s.I, 1}, View{w2 + e * s.D * s.I, 1, s.I},
                         y + g.start[e] * s.D, s.D, false});
  moe::run_jobs(jobs);
}

inline void ffn_backward(const float* x, const float* w1, const float* w2, const float* w3, const Groups& g,
                         const FfnShape& s, float L, const float* dy, int64_t M, float* dx, float* dw1, float* dw2,
                         float* dw3) {
  const size_t rows = size_t(std::min<int64_t>(M, g.covered));     // groups are contiguous from row 0
  std::vector<float> H(rows * s.I), dG(rows * s.I), dU(rows * s.I);
  // Phase 1: recompute G, U; dH = dY W2 (W2_e [D, I] is the (k=D, n=I) row-major view); then H, dG, dU.
  const std::vector<FfnTile> tiles = ffn_tiles(g, s);
  moe::parallel_tasks(int64_t(tiles.size()), [&](int64_t ti) {
    const GateUp t = gate_up(x, w1, w3, g, s, tiles[ti]);
    const int64_t nb = t.nb;
    float* dHt = moe::scratch().t2.get(size_t(t.m) * nb);
    moe::gemm_block(t.m, nb, s.D, View{dy + t.r0 * s.D, s.D, 1}, View{w2 + t.e * s.D * s.I + t.n0, s.I, 1}, dHt, nb,
                    false);
    for (int64_t i = 0; i < t.m; ++i) {
      const int64_t o = (t.r0 + i) * s.I + t.n0;
      for (int64_t j = 0; j < nb; ++j) {
        const float gv = t.G[i * nb + j], uv = t.U[i * nb + j], dh = dHt[i * nb + j];
        const bool gin = !(L > 0.f) || gv < L;
        const bool uin = !(L > 0.f) || (uv > -L && uv < L);
        const float gc = gin ? gv : L;
        const float uc = uin ? uv : (uv > 0.f ? L : -L);
        const float sg = 1.f / (1.f + std::exp(-gc));
        const float si = gc * sg;
        H[o + j] = si * uc;
        dG[o + j] = gin ? dh * uc * (sg * (1.f + gc * (1.f - sg))) : 0.f;
        dU[o + j] = uin ? dh * si : 0.f;
      }
    }
  });
  // Phase 2: dX_e = dG W1 + dU W3;  dW2_e = dYᵀ H;  dW1_e = dGᵀ X;  dW3_e = dUᵀ X.
  std::vector<Job> first, second;
  for (int64_t e = 0; e < s.E; ++e) {
    const int64_t m = g.cnt[e], r0 = g.start[e];
    const View X{x + r0 * s.D, s.D, 1}, dY{dy + r0 * s.D, s.D, 1};
    const View dGe{dG.data() + r0 * s.I, s.I, 1}, dUe{dU.data() + r0 * s.I, s.I, 1}, He{H.data() + r0 * s.I, s.I, 1};
    if (m > 0) {
      first.push_back(Job{m, s.D, s.I, dGe, View{w1 + e * s.I * s.D, s.D, 1}, dx + r0 * s.D, s.D, false});
      second.push_back(Job{m, s.D, s.I, dUe, View{w3 + e * s.I * s.D, s.D, 1}, dx + r0 * s.D, s.D, true});
    }
    first.push_back(Job{s.D, s.I, m, dY.t(), He, dw2 + e * s.D * s.I, s.I, false});
    first.push_back(Job{s.I, s.D, m, dGe.t(), X, dw1 + e * s.I * s.D, s.D, false});
    first.push_back(Job{s.I, s.D, m, dUe.t(), X, dw3 + e * s.I * s.D, s.D, false});
  }
  moe::run_jobs(first);
  moe::run_jobs(second);
}

inline bool ffn_dtypes_ok(const char** dtypes) {
  for (int i = 0; i < 4; ++i)
    if (!av4::is_f32(dtypes[i])) return false;
  return true;
}

// The operands of the four FFN entry points: x, w1 [E, I, D], w2 [E, D, I], w3 [E, I, D], then
//   grouped: x [M, D], group_list [E] int, params float32[2] {swiglu_limit, group_list_type};
//   padded:  x [E, C, D] (group e = its rows up to the last nonzero one), params float32[1] {swiglu_limit}.
// `next` is the index of the first parameter after them (y forward; dy, dx, dw1, dw2, dw3 backward).
struct FfnCall {
  const float *x, *w1, *w2, *w3;
  FfnShape s;
  int64_t M;
  float L;
  Groups g;
  int next;
};

inline FfnCall ffn_call(void** params, int64_t** shapes, const char** dtypes, bool padded) {
  FfnCall c;
  c.x = static_cast<const float*>(params[0]);
  c.w1 = static_cast<const float*>(params[1]);
  c.w2 = static_cast<const float*>(params[2]);
  c.w3 = static_cast<const float*>(params[3]);
  c.s = FfnShape{shapes[1][0], shapes[1][1], shapes[1][2]};
  if (padded) {
    const int64_t C = shapes[0][1];
    c.M = c.s.E * C;
    c.L = static_cast<const float*>(params[4])[0];
    c.g = padded_groups(c.x, c.s.E, C, c.s.D);
    c.next = 5;
  } else {
    const float* p = static_cast<const float*>(params[5]);
    c.M = shapes[0][0];
    c.L = p[0];
    c.g = make_groups(idx_of(params[4], dtypes[4]), c.s.E, int(p[1]), c.M);
    c.next = 6;
  }
  return c;
}

// -> y; rows outside the groups are 0.
inline int ffn_entry(int nparam, void** params, int64_t** shapes, const char** dtypes, bool padded) {
  if (nparam != (padded ? 6 : 7)) return 1;
  if (!ffn_dtypes_ok(dtypes)) return 2;
  const FfnCall c = ffn_call(params, shapes, dtypes, padded);
  std::vector<float> H(size_t(c.g.covered) * c.s.I);   // groups are contiguous from row 0: rows past covered unused
  float* y = static_cast<float*>(params[c.next]);
  ffn_forward(c.x, c.w1, c.w2, c.w3, c.g, c.s, c.L, y, H.data());
  zero_uncovered(y, c.M, c.s.D, c.g);
  return 0;
}

// dy -> dx, dw1, dw2, dw3; dx rows outside the groups are 0.
inline int ffn_grad_entry(int nparam, void** params, int64_t** shapes, const char** dtypes, bool padded) {
  if (nparam != (padded ? 10 : 11)) return 1;
  if (!ffn_dtypes_ok(dtypes)) return 2;
  const FfnCall c = ffn_call(params, shapes, dtypes, padded);
  auto d = [&](int k) { return static_cast<float*>(params[c.next + 1 + k]); };   // dx, dw1, dw2, dw3
  ffn_backward(c.x, c.w1, c.w2, c.w3, c.g, c.s, c.L, static_cast<const float*>(params[c.next]), c.M, d(0), d(1),
               d(2), d(3));
  zero_uncovered(d(0), c.M, c.s.D, c.g);
  return 0;
}

// inputs: x [M, D], w1, w2, w3, group_list [E] int, params  ->  y [M, D]
extern "C" int GroupedFfn(int nparam, void** params, int*, int64_t** shapes, const char** dtypes, void*, void*) {
  return ffn_entry(nparam, params, shapes, dtypes, false);
}

// inputs: x, w1, w2, w3, group_list, params, dy  ->  dx, dw1, dw2, dw3
extern "C" int GroupedFfnGrad(int nparam, void** params, int*, int64_t** shapes, const char** dtypes, void*, void*) {
  return ffn_grad_entry(nparam, params, shapes, dtypes, false);
}

// inputs: x [E, C, D], w1, w2, w3, params  ->  y [E, C, D]
extern "C" int PaddedFfn(int nparam, void** params, int*, int64_t** shapes, const char** dtypes, void*, void*) {
  return ffn_entry(nparam, params, shapes, dtypes, true);
}

// inputs: x, w1, w2, w3, params, dy  ->  dx, dw1, dw2, dw3
extern "C" int PaddedFfnGrad(int nparam, void** params, int*, int64_t** shapes, const char** dtypes, void*, void*) {
  return ffn_grad_entry(nparam, params, shapes, dtypes, true);
}

// Introspection for tests/bench: 1 when the AVX-512 micro-kernel is in use, 0 for AVX2.
extern "C" int MoeCpuIsaIsAvx512() { return std::strcmp(moe::isa().name, "avx512") == 0; }

}  // namespace moek
