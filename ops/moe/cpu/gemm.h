// Blocked fp32 GEMM for the MoE kernels: BLIS-style packing + register-tile micro-kernels.
//
//   C[m, n] (+)= sum_k A(m, k) * B(k, n)     A, B strided views (any transpose), C row-major
//
// Loop nest per (row block of C, column block [n0, n0+nb)):  pc over K step KC -> pack B (KC x nb, NR-wide
// panels, stays in L2) -> ic over M step MC -> pack A (MC x KC, MR-tall panels) -> jr/ir micro-tiles.
// Micro-kernels: AVX-512 12x32 (24 zmm accumulators) when the CPU has it, AVX2/FMA 6x16 otherwise, selected at
// run time (the library is built for x86-64-v3; the AVX-512 kernel carries its own target attribute).
// MOE_CPU_ISA=avx2 forces the AVX2 kernel (tests exercise both).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace moe {

// Element (i, j) = p[i * rs + j * cs].
struct View {
  const float* p;
  int64_t rs, cs;
  View at(int64_t i, int64_t j) const { return View{p + i * rs + j * cs, rs, cs}; }
  View t() const { return View{p, cs, rs}; }
};

using MicroKernel = void (*)(int64_t kc, const float* A, const float* B, float* C, int64_t ldc, int mr, int nr,
                             bool acc);

struct Isa {
  int MR, NR;
  MicroKernel uk;
  const char* name;
};

constexpr int64_t KC = 256;   // depth of a packed panel: a 32-wide B micro-panel (32 KB) stays in L1d; best of 128..512 (docs/performance.md)
constexpr int64_t MC = 144;   // rows of packed A per block (multiple of 6 and 12): 144 x 512 x 4 B = 288 KB in L2
constexpr int64_t NB = 256;   // columns per parallel task (multiple of 16 and 32)

// ------------------------------------------------------------------------------------------ micro-kernels
__attribute__((target("avx512f,avx512vl,fma"))) inline void uk_avx512(int64_t kc, const float* A, const float* B,
                                                                        float* C, int64_t ldc, int mr, int nr,
                                                                        bool acc) {
  constexpr int MR = 12;
  __m512 c0[MR], c1[MR];
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) {
    c0[i] = _mm512_setzero_ps();
    c1[i] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_load_ps(B), b1 = _mm512_load_ps(B + 16);
    _mm_prefetch(reinterpret_cast<const char*>(B + 256), _MM_HINT_T0);
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      const __m512 a = _mm512_set1_ps(A[i]);
      c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);
      c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
    }
    A += MR;
    B += 32;
  }
  const __mmask16 m0 = nr >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << nr) - 1u);
  const __mmask16 m1 = nr >= 32 ? __mmask16(0xFFFF) : nr > 16 ? __mmask16((1u << (nr - 16)) - 1u) : __mmask16(0);
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) {
    if (i >= mr) break;
    float* c = C + i * ldc;
    if (acc) {
      c0[i] = _mm512_add_ps(c0[i], _mm512_maskz_loadu_ps(m0, c));
      c1[i] = _mm512_add_ps(c1[i], _mm512_maskz_loadu_ps(m1, c + 16));
    }
    _mm512_mask_storeu_ps(c, m0, c0[i]);
    _mm512_mask_storeu_ps(c + 16, m1, c1[i]);
  }
}

inline void uk_avx2(int64_t kc, const float* A, const float* B, float* C, int64_t ldc, int mr, int nr, bool acc) {
  constexpr int MR = 6, NR = 16;
  __m256 c0[MR], c1[MR];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    c0[i] = _mm256_setzero_ps();
    c1[i] = _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_load_ps(B), b1 = _mm256_load_ps(B + 8);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256 a = _mm256_broadcast_ss(A + i);
      c0[i] = _mm256_fmadd_ps(a, b0, c0[i]);
      c1[i] = _mm256_fmadd_ps(a, b1, c1[i]);
    }
    A += MR;
    B += NR;
  }
  if (mr == MR && nr == NR) {
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      float* c = C + i * ldc;
      if (acc) {
        c0[i] = _mm256_add_ps(c0[i], _mm256_loadu_ps(c));
        c1[i] = _mm256_add_ps(c1[i], _mm256_loadu_ps(c + 8));
      }
      _mm256_storeu_ps(c, c0[i]);
      _mm256_storeu_ps(c + 8, c1[i]);
    }
    return;
  }
  alignas(32) float tile[MR * NR];
  for (int i = 0; i < MR; ++i) {
    _mm256_store_ps(tile + i * NR, c0[i]);
    _mm256_store_ps(tile + i * NR + 8, c1[i]);
  }
  for (int i = 0; i < mr; ++i)
    for (int j = 0; j < nr; ++j) C[i * ldc + j] = acc ? C[i * ldc + j] + tile[i * NR + j] : tile[i * NR + j];
}

inline const Isa& isa() {
  static const Isa chosen = [] {
    const char* force = std::getenv("MOE_CPU_ISA");
    const bool want512 = !(force && std::strcmp(force, "avx2") == 0);
    __builtin_cpu_init();
    if (want512 && __builtin_cpu_supports("avx512f")) return Isa{12, 32, uk_avx512, "avx512"};
    return Isa{6, 16, uk_avx2, "avx2"};
  }();
  return chosen;
}

// ------------------------------------------------------------------------------------------ scratch
struct Buf {  // 64-byte aligned, grow-only
  float* p = nullptr;
  size_t n = 0;
  ~Buf() { std::free(p); }
  float* get(size_t want) {
    if (want > n) {
      std::free(p);
      n = std::max(want, n * 3 / 2);
      p = static_cast<float*>(std::aligned_alloc(64, ((n * sizeof(float) + 63) / 64) * 64));
    }
    return p;
  }
};

struct Scratch {
  Buf a, b, t0, t1, t2;
};

inline Scratch& scratch() {
  static thread_local Scratch s;
  return s;
}

// ------------------------------------------------------------------------------------------ packing
// A block (mc x kc) -> MR-tall panels: Ap[panel][k][i], zero-padded rows.
inline void pack_a(View A, int64_t mc, int64_t kc, int MR, float* Ap) {
  for (int64_t i0 = 0; i0 < mc; i0 += MR) {
    const int mr = int(std::min<int64_t>(MR, mc - i0));
    float* dst = Ap + i0 * kc;
    if (A.cs == 1 && mr == MR && MR % 4 == 0) {  // full panel of a row-major A: 4 x 4 register transposes
      const int64_t k4 = kc / 4 * 4;
      for (int i = 0; i < MR; i += 4) {
        const float* r0 = A.p + (i0 + i) * A.rs;
        const float* r1 = r0 + A.rs;
        const float* r2 = r1 + A.rs;
        const float* r3 = r2 + A.rs;
        for (int64_t k = 0; k < k4; k += 4) {
          __m128 a0 = _mm_loadu_ps(r0 + k), a1 = _mm_loadu_ps(r1 + k), a2 = _mm_loadu_ps(r2 + k),
                 a3 = _mm_loadu_ps(r3 + k);
          _MM_TRANSPOSE4_PS(a0, a1, a2, a3);
          _mm_storeu_ps(dst + k * MR + i, a0);
          _mm_storeu_ps(dst + (k + 1) * MR + i, a1);
          _mm_storeu_ps(dst + (k + 2) * MR + i, a2);
          _mm_storeu_ps(dst + (k + 3) * MR + i, a3);
        }
        for (int64_t k = k4; k < kc; ++k) {
          dst[k * MR + i] = r0[k];
          dst[k * MR + i + 1] = r1[k];
          dst[k * MR + i + 2] = r2[k];
          dst[k * MR + i + 3] = r3[k];
        }
      }
    } else if (A.cs == 1) {
      for (int i = 0; i < mr; ++i) {
        const float* src = A.p + (i0 + i) * A.rs;
        for (int64_t k = 0; k < kc; ++k) dst[k * MR + i] = src[k];
      }
      for (int i = mr; i < MR; ++i)
        for (int64_t k = 0; k < kc; ++k) dst[k * MR + i] = 0.f;
    } else if (A.rs == 1) {
      for (int64_t k = 0; k < kc; ++k) {
        const float* src = A.p + k * A.cs + i0;
        float* d = dst + k * MR;
        int i = 0;
        for (; i < mr; ++i) d[i] = src[i];
        for (; i < MR; ++i) d[i] = 0.f;
      }
    } else {
      for (int64_t k = 0; k < kc; ++k)
        for (int i = 0; i < MR; ++i) dst[k * MR + i] = i < mr ? A.p[(i0 + i) * A.rs + k * A.cs] : 0.f;
    }
  }
}

// dst[kk * ldd + j] = src[j * lds + kk] for an 8 x 8 block.
inline void transpose8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + lds), r2 = _mm256_loadu_ps(src + 2 * lds),
         r3 = _mm256_loadu_ps(src + 3 * lds), r4 = _mm256_loadu_ps(src + 4 * lds), r5 = _mm256_loadu_ps(src + 5 * lds),
         r6 = _mm256_loadu_ps(src + 6 * lds), r7 = _mm256_loadu_ps(src + 7 * lds);
  __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
         t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
         t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  r0 = _mm256_shuffle_ps(t0, t2, 0x44);
  r1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  r2 = _mm256_shuffle_ps(t1, t3, 0x44);
  r3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  r4 = _mm256_shuffle_ps(t4, t6, 0x44);
  r5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  r6 = _mm256_shuffle_ps(t5, t7, 0x44);
  r7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(dst + 0 * ldd, _mm256_permute2f128_ps(r0, r4, 0x20));
  _mm256_storeu_ps(dst + 1 * ldd, _mm256_permute2f128_ps(r1, r5, 0x20));
  _mm256_storeu_ps(dst + 2 * ldd, _mm256_permute2f128_ps(r2, r6, 0x20));
  _mm256_storeu_ps(dst + 3 * ldd, _mm256_permute2f128_ps(r3, r7, 0x20));
  _mm256_storeu_ps(dst + 4 * ldd, _mm256_permute2f128_ps(r0, r4, 0x31));
  _mm256_storeu_ps(dst + 5 * ldd, _mm256_permute2f128_ps(r1, r5, 0x31));
  _mm256_storeu_ps(dst + 6 * ldd, _mm256_permute2f128_ps(r2, r6, 0x31));
  _mm256_storeu_ps(dst + 7 * ldd, _mm256_permute2f128_ps(r3, r7, 0x31));
}

// B block (kc x nb) -> NR-wide panels: Bp[panel][k][j], zero-padded columns.
inline void pack_b(View B, int64_t kc, int64_t nb, int NR, float* Bp) {
  for (int64_t j0 = 0; j0 < nb; j0 += NR) {
    const int nr = int(std::min<int64_t>(NR, nb - j0));
    float* dst = Bp + j0 * kc;
    if (B.cs == 1) {
      for (int64_t k = 0; k < kc; ++k) {
        const float* src = B.p + k * B.rs + j0;
        float* d = dst + k * NR;
        if (nr == NR) {
          std::memcpy(d, src, sizeof(float) * NR);
        } else {
          int j = 0;
          for (; j < nr; ++j) d[j] = src[j];
          for (; j < NR; ++j) d[j] = 0.f;
        }
      }
    } else if (B.rs == 1) {  // B(k, j) = W[j][k] (Linear weight layout): 8x8 register transposes
      int64_t k = 0;
      if (nr % 8 == 0) {  // 8 source rows at a time, walked along k: 8 sequential read streams
        const int64_t k8 = kc / 8 * 8;
        for (int j = 0; j < nr; j += 8) {
          const float* src = B.p + (j0 + j) * B.cs;
          for (int64_t kb = 0; kb < k8; kb += 8) {
            if (kb % 16 == 0)  // weights stream from DRAM in short (kc-long) row segments: prefetch 4 lines ahead
              for (int r = 0; r < 8; ++r)
                _mm_prefetch(reinterpret_cast<const char*>(src + r * B.cs + kb + 64), _MM_HINT_T0);
            transpose8(src + kb, B.cs, dst + kb * NR + j, NR);
          }
        }
        for (int64_t kb = 0; kb < k8; ++kb)
          for (int j = nr; j < NR; ++j) dst[kb * NR + j] = 0.f;
        k = k8;
      }
      for (; k < kc; ++k)
        for (int j = 0; j < NR; ++j) dst[k * NR + j] = j < nr ? B.p[(j0 + j) * B.cs + k] : 0.f;
    } else {
      for (int64_t k = 0; k < kc; ++k)
        for (int j = 0; j < NR; ++j) dst[k * NR + j] = j < nr ? B.p[k * B.rs + (j0 + j) * B.cs] : 0.f;
    }
  }
}

// ------------------------------------------------------------------------------------------ few-row path
// C[m, j] (+)= sum_k A[m, k] * W[j, k] for M <= kSmallM rows and W in its natural [N, K] layout (B.rs == 1): each
// weight row is read once, sequentially, no packing — the memory-bound regime of experts holding a handful of
// tokens, where packing (a transposed copy of the weights) would double the traffic. Register blocks: RM rows of A
// x RW rows of W accumulators (AVX-512: 4x4 or 8x2 zmm; AVX2: 4x2 or 8x1 ymm).
constexpr int64_t kSmallM = 8;

template <int RM, int RW>
__attribute__((target("avx512f,avx512vl,fma"))) inline void small_nt_avx512(int64_t M, int64_t nb, int64_t K,
                                                                              const float* A, int64_t lda,
                                                                              const float* W, int64_t ldw, float* C,
                                                                              int64_t ldc, bool acc) {
  for (int64_t j = 0; j < nb; j += RW) {
    const int jn = int(std::min<int64_t>(RW, nb - j));
    __m512 s[RM][RW];
    for (int m = 0; m < RM; ++m)
      for (int q = 0; q < RW; ++q) s[m][q] = _mm512_setzero_ps();
    const float* w[RW];
    for (int q = 0; q < RW; ++q) w[q] = W + (j + std::min(q, jn - 1)) * ldw;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
      __m512 wv[RW];
#pragma GCC unroll 4
      for (int q = 0; q < RW; ++q) wv[q] = _mm512_loadu_ps(w[q] + k);
#pragma GCC unroll 8
      for (int m = 0; m < RM; ++m) {
        if (m >= M) break;
        const __m512 a = _mm512_loadu_ps(A + m * lda + k);
#pragma GCC unroll 4
        for (int q = 0; q < RW; ++q) s[m][q] = _mm512_fmadd_ps(a, wv[q], s[m][q]);
      }
    }
    for (int m = 0; m < M; ++m)
      for (int q = 0; q < jn; ++q) {
        float v = _mm512_reduce_add_ps(s[m][q]);
        for (int64_t kk = k; kk < K; ++kk) v += A[m * lda + kk] * w[q][kk];
        C[m * ldc + j + q] = acc ? C[m * ldc + j + q] + v : v;
      }
  }
}

template <int RM, int RW>
inline void small_nt_avx2(int64_t M, int64_t nb, int64_t K, const float* A, int64_t lda, const float* W, int64_t ldw,
                          float* C, int64_t ldc, bool acc) {
  for (int64_t j = 0; j < nb; j += RW) {
    const int jn = int(std::min<int64_t>(RW, nb - j));
    __m256 s[RM][RW];
    for (int m = 0; m < RM; ++m)
      for (int q = 0; q < RW; ++q) s[m][q] = _mm256_setzero_ps();
    const float* w[RW];
    for (int q = 0; q < RW; ++q) w[q] = W + (j + std::min(q, jn - 1)) * ldw;
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
      __m256 wv[RW];
      for (int q = 0; q < RW; ++q) wv[q] = _mm256_loadu_ps(w[q] + k);
      for (int m = 0; m < RM; ++m) {
        if (m >= M) break;
        const __m256 a = _mm256_loadu_ps(A + m * lda + k);
        for (int q = 0; q < RW; ++q) s[m][q] = _mm256_fmadd_ps(a, wv[q], s[m][q]);
      }
    }
    for (int m = 0; m < M; ++m)
      for (int q = 0; q < jn; ++q) {
        alignas(32) float t[8];
        _mm256_store_ps(t, s[m][q]);
        float v = t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
        for (int64_t kk = k; kk < K; ++kk) v += A[m * lda + kk] * w[q][kk];
        C[m * ldc + j + q] = acc ? C[m * ldc + j + q] + v : v;
      }
  }
}

// True when handled: A row-major, B = Wᵀ view of a row-major [N, K] weight, M <= kSmallM.
inline bool gemm_small_nt(int64_t M, int64_t nb, int64_t K, View A, View B, float* C, int64_t ldc, bool acc) {
  if (M > kSmallM || A.cs != 1 || B.rs != 1 || K <= 0) return false;
  const bool wide = std::strcmp(isa().name, "avx512") == 0;
  if (M <= 4) {
    if (wide)
      small_nt_avx512<4, 4>(M, nb, K, A.p, A.rs, B.p, B.cs, C, ldc, acc);
    else
      small_nt_avx2<4, 2>(M, nb, K, A.p, A.rs, B.p, B.cs, C, ldc, acc);
  } else {
    if (wide)
      small_nt_avx512<8, 2>(M, nb, K, A.p, A.rs, B.p, B.cs, C, ldc, acc);
    else
      small_nt_avx2<8, 1>(M, nb, K, A.p, A.rs, B.p, B.cs, C, ldc, acc);
  }
  return true;
}

// ------------------------------------------------------------------------------------------ single-thread block
// C[0:M, 0:nb] (+)= A[0:M, 0:K] * B[0:K, 0:nb]   (B already offset to the block's first column)
inline void gemm_block(int64_t M, int64_t nb, int64_t K, View A, View B, float* C, int64_t ldc, bool acc) {
  if (M <= 0 || nb <= 0) return;
  if (K <= 0) {
    if (!acc)
      for (int64_t i = 0; i < M; ++i) std::memset(C + i * ldc, 0, sizeof(float) * nb);
    return;
  }
  if (gemm_small_nt(M, nb, K, A, B, C, ldc, acc)) return;
  const Isa& s = isa();
  Scratch& ws = scratch();
  const int64_t nbp = (nb + s.NR - 1) / s.NR * s.NR;
  float* Bp = ws.b.get(size_t(KC) * nbp);
  for (int64_t pc = 0; pc < K; pc += KC) {
    const int64_t kc = std::min(KC, K - pc);
    pack_b(B.at(pc, 0), kc, nb, s.NR, Bp);
    for (int64_t ic = 0; ic < M; ic += MC) {
      const int64_t mc = std::min(MC, M - ic);
      const int64_t mcp = (mc + s.MR - 1) / s.MR * s.MR;
      float* Ap = ws.a.get(size_t(mcp) * KC);
      pack_a(A.at(ic, pc), mc, kc, s.MR, Ap);
      for (int64_t jr = 0; jr < nb; jr += s.NR)
        for (int64_t ir = 0; ir < mc; ir += s.MR)
          s.uk(kc, Ap + ir * kc, Bp + jr * kc, C + (ic + ir) * ldc + jr, ldc, int(std::min<int64_t>(s.MR, mc - ir)),
               int(std::min<int64_t>(s.NR, nb - jr)), acc || pc > 0);
    }
  }
}

// C1 = A * B1 and C2 = A * B2 over the same rows (the w1 / w3 GEMMs of SwiGLU): A is packed once for both.
inline void gemm_block_dual(int64_t M, int64_t nb, int64_t K, View A, View B1, View B2, float* C1, float* C2,
                            int64_t ldc) {
  if (M <= 0 || nb <= 0) return;
  if (K <= 0) {
    for (int64_t i = 0; i < M; ++i) {
      std::memset(C1 + i * ldc, 0, sizeof(float) * nb);
      std::memset(C2 + i * ldc, 0, sizeof(float) * nb);
    }
    return;
  }
  if (gemm_small_nt(M, nb, K, A, B1, C1, ldc, false)) {
    gemm_small_nt(M, nb, K, A, B2, C2, ldc, false);
    return;
  }
  const Isa& s = isa();
  Scratch& ws = scratch();
  const int64_t nbp = (nb + s.NR - 1) / s.NR * s.NR;
  float* Bp = ws.b.get(size_t(2) * KC * nbp);
  float* Bp2 = Bp + size_t(KC) * nbp;
  for (int64_t pc = 0; pc < K; pc += KC) {
    const int64_t kc = std::min(KC, K - pc);
    pack_b(B1.at(pc, 0), kc, nb, s.NR, Bp);
    pack_b(B2.at(pc, 0), kc, nb, s.NR, Bp2);
    for (int64_t ic = 0; ic < M; ic += MC) {
      const int64_t mc = std::min(MC, M - ic);
      const int64_t mcp = (mc + s.MR - 1) / s.MR * s.MR;
      float* Ap = ws.a.get(size_t(mcp) * KC);
      pack_a(A.at(ic, pc), mc, kc, s.MR, Ap);
      for (int b = 0; b < 2; ++b) {
        const float* Bb = b ? Bp2 : Bp;
        float* C = b ? C2 : C1;
        for (int64_t jr = 0; jr < nb; jr += s.NR)
          for (int64_t ir = 0; ir < mc; ir += s.MR)
            s.uk(kc, Ap + ir * kc, Bb + jr * kc, C + (ic + ir) * ldc + jr, ldc, int(std::min<int64_t>(s.MR, mc - ir)),
                 int(std::min<int64_t>(s.NR, nb - jr)), pc > 0);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------ parallel jobs
// One GEMM of a batch: C[M, N] (+)= A[M, K] B[K, N]. Split over column blocks of NB into tasks.
struct Job {
  int64_t M, N, K;
  View A, B;
  float* C;
  int64_t ldc;
  bool acc;
};

// ------------------------------------------------------------------------------------------ thread pool
// Persistent workers that BLOCK when idle. Not OpenMP: `import mindspore` already loads libgomp with its default
// spin-wait policy, and spinning OpenMP workers next to MindSpore's own pool turned a 50 us dispatch into tens of
// milliseconds on a loaded 2-core host. Threads: MOE_CPU_THREADS, else OMP_NUM_THREADS, else all cores. A second
// concurrent caller (another MindSpore thread) runs its loop serially instead of waiting. The caller works through
// the tasks itself and waits only for workers that actually joined (see run()). Tasks must not depend on which
// thread runs them (none here do), so results are the same whoever runs what.
class Pool {
 public:
  static Pool& get() {
    static Pool pool;
    return pool;
  }
  int threads() const { return int(workers_.size()) + 1; }

  void run(int64_t n, const std::function<void(int64_t)>& f) {
    if (n <= 0) return;
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (n == 1 || workers_.empty() || !busy.owns_lock()) {
      for (int64_t i = 0; i < n; ++i) f(i);
      return;
    }
    {
      std::lock_guard<std::mutex> lk(m_);
      job_ = &f;
      n_ = n;
      next_.store(0);
      ++generation_;
    }
    cv_.notify_all();
    for (int64_t i; (i = next_.fetch_add(1)) < n;) f(i);
    // Every task is claimed. Close the job so that a worker which has not woken up yet never joins it, then wait
    // only for the workers that did join (they finish the tasks they claimed). The caller never waits for a
    // sleeping thread to be scheduled: on a loaded host that wait is a whole scheduler tick (~4 ms).
    std::unique_lock<std::mutex> lk(m_);
    job_ = nullptr;
    done_.wait(lk, [&] { return active_ == 0; });
  }

  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
      ++generation_;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

 private:
  Pool() {
    int n = 0;
    for (const char* var : {"MOE_CPU_THREADS", "OMP_NUM_THREADS"})
      if (const char* v = std::getenv(var))
        if (*v && (n = std::atoi(v)) > 0) break;
    if (n <= 0) n = int(std::max(1u, std::thread::hardware_concurrency()));
    for (int i = 1; i < n; ++i) workers_.emplace_back([this] { loop(); });
  }

  void loop() {
    uint64_t seen = 0;
    for (;;) {
      const std::function<void(int64_t)>* f;
      int64_t n;
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return generation_ != seen; });
        seen = generation_;
        if (stop_) return;
        f = job_;
        if (f == nullptr) continue;          // woke after the caller finished the job alone
        n = n_;
        ++active_;
      }
      for (int64_t i; (i = next_.fetch_add(1)) < n;) (*f)(i);
      std::lock_guard<std::mutex> lk(m_);
      if (--active_ == 0) done_.notify_one();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex m_, busy_;
  std::condition_variable cv_, done_;
  const std::function<void(int64_t)>* job_ = nullptr;
  int64_t n_ = 0;
  std::atomic<int64_t> next_{0};
  int active_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

template <class F>
inline void parallel_tasks(int64_t n, F&& f) {
  const std::function<void(int64_t)> fn = [&](int64_t i) { f(i); };
  Pool::get().run(n, fn);
}

// Parallel loop over [0, n) in contiguous chunks of at least `grain` iterations; small loops run inline.
template <class F>
inline void parallel_for(int64_t n, int64_t grain, F&& f) {
  if (n <= 0) return;
  const int64_t threads = Pool::get().threads();
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(threads * 4, n / std::max<int64_t>(1, grain)));
  if (chunks == 1) {
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
  parallel_tasks(chunks, [&](int64_t c) {
    const int64_t b = n * c / chunks, e = n * (c + 1) / chunks;
    for (int64_t i = b; i < e; ++i) f(i);
  });
}

inline void run_jobs(const std::vector<Job>& jobs) {
  struct Task {
    int job;
    int64_t n0;
    double cost;
  };
  std::vector<Task> tasks;
  for (size_t j = 0; j < jobs.size(); ++j) {
    const Job& jb = jobs[j];
    if (jb.N <= 0 || jb.M <= 0) continue;
    for (int64_t n0 = 0; n0 < jb.N; n0 += NB) tasks.push_back({int(j), n0, double(jb.M + 4) * double(jb.K + 4)});
  }
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) { return a.cost > b.cost; });
  parallel_tasks(int64_t(tasks.size()), [&](int64_t t) {
    const Job& jb = jobs[tasks[t].job];
    const int64_t n0 = tasks[t].n0, nb = std::min(NB, jb.N - n0);
    gemm_block(jb.M, nb, jb.K, jb.A, jb.B.at(0, n0), jb.C + n0, jb.ldc, jb.acc);
  });
}

}  // namespace moe
