// 8-lane float vectors for the mHC CPU kernels: AVX2+FMA when the build targets x86-64-v3, plain loops otherwise.
// Element types: float, or uint16_t holding raw bfloat16 (widened exactly, narrowed round-to-nearest-even).
// Explicit FMAs are used because ops/build.py compiles with -ffp-contract=off (no implicit contraction).
#pragma once
#include <cstdint>

#include "aot.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MHC_AVX2 1
#endif

namespace mhc {

using bf16 = uint16_t;

#ifdef MHC_AVX2
struct V8 {
  __m256 v;
};
inline V8 zero8() { return {_mm256_setzero_ps()}; }
inline V8 bcast(float s) { return {_mm256_set1_ps(s)}; }
inline V8 ld8(const float* p) { return {_mm256_loadu_ps(p)}; }
inline V8 ld8(const bf16* p) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))};
}
inline void st8(float* p, V8 a) { _mm256_storeu_ps(p, a.v); }
inline void st8(bf16* p, V8 a) {
  // Round to nearest even on the 32-bit pattern; NaN lanes become a quiet NaN like av4::f32_to_bf16.
  __m256i u = _mm256_castps_si256(a.v);
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
  __m256i qnan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  __m256i isnan = _mm256_castps_si256(_mm256_cmp_ps(a.v, a.v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, qnan, isnan);
  __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);  // lanes 0-3 | 4-7
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}
inline V8 fma8(V8 a, V8 b, V8 c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }  // a*b + c
inline V8 mul8(V8 a, V8 b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline V8 add8(V8 a, V8 b) { return {_mm256_add_ps(a.v, b.v)}; }
inline float hsum8(V8 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#else
struct V8 {
  float v[8];
};
inline V8 zero8() { return V8{}; }
inline V8 bcast(float s) {
  V8 r;
  for (int i = 0; i < 8; ++i) r.v[i] = s;
  return r;
}
inline V8 ld8(const float* p) {
  V8 r;
  for (int i = 0; i < 8; ++i) r.v[i] = p[i];
  return r;
}
inline V8 ld8(const bf16* p) {
  V8 r;
  for (int i = 0; i < 8; ++i) r.v[i] = av4::bf16_to_f32(p[i]);
  return r;
}
inline void st8(float* p, V8 a) {
  for (int i = 0; i < 8; ++i) p[i] = a.v[i];
}
inline void st8(bf16* p, V8 a) {
  for (int i = 0; i < 8; ++i) p[i] = av4::f32_to_bf16(a.v[i]);
}
inline V8 fma8(V8 a, V8 b, V8 c) {
  for (int i = 0; i < 8; ++i) c.v[i] = a.v[i] * b.v[i] + c.v[i];
  return c;
}
inline V8 mul8(V8 a, V8 b) {
  for (int i = 0; i < 8; ++i) a.v[i] *= b.v[i];
  return a;
}
inline V8 add8(V8 a, V8 b) {
  for (int i = 0; i < 8; ++i) a.v[i] += b.v[i];
  return a;
}
inline float hsum8(V8 a) {
  float s = 0;
  for (int i = 0; i < 8; ++i) s += a.v[i];
  return s;
}
#endif

inline float ld1(const float* p) { return *p; }
inline float ld1(const bf16* p) { return av4::bf16_to_f32(*p); }
inline void st1(float* p, float v) { *p = v; }
inline void st1(bf16* p, float v) { *p = av4::f32_to_bf16(v); }

}  // namespace mhc
