// Intrinsic layer of the AscendC CPU emulator: the CCE intrinsics the real asc-devkit headers call in CPU-debug mode
// (ASCENDC_CPU_DEBUG), given semantics on the host, plus a model of the pipes that reports races. Everything above
// this layer -- TPipe, TQue, LocalTensor, DataCopyPad, Muls, ... -- is the real asc-devkit code. See docs/ascendc.md
// ("Running kernel bodies on CPU") for what is modelled and what is not.
//
// Semantics follow the AscendC API documentation of the corresponding APIs (DataCopyPad, the level-0 vector APIs
// with repeat / block-stride / repeat-stride parameters, counter vs normal mask mode, Cast rounding modes); they are
// written from the documentation and the headers' call sites, not from the ISA manual.
//
// Pipe model. Every instruction is executed at once, in program order, and stamped with (pipe, sequence number).
// Each UB byte remembers the last instruction that wrote it and the last one, per pipe, that read it. An access
// from pipe P to a byte last written by (Q, q) is a race unless P has synchronised with Q's instruction q:
//   P != Q:  set_flag(Q, P, e) after q, then wait_flag(Q, P, e)      (or Q's barrier seen through the scalar pipe)
//   P == Q == V:  pipe_barrier(PIPE_V) after q (vector instructions overlap in the pipeline)
// and a write from P over a byte some other pipe Q read at q (write-after-read) likewise needs P to have waited for
// q. A wait on the scalar pipe S orders every later instruction (the scalar unit issues them). Scalar accesses
// (LocalTensor GetValue/SetValue) are plain memory in CPU-debug mode and are not tracked. A race aborts the core
// with "emu race: ..." naming both instructions. L1 and L0A/L0B/L0C are host arrays too and are tracked the same
// way (the Cube pipes MTE1, M and FIX; see the Cube section at the end).
#pragma once
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <unordered_map>

namespace av4_emu {

enum Pipe { P_S = 0, P_V, P_M, P_MTE1, P_MTE2, P_MTE3, P_ALL, P_MTE4, P_MTE5, P_V2, P_FIX, P_N };
inline const char* PipeName(int p) {
  static const char* n[] = {"S", "V", "M", "MTE1", "MTE2", "MTE3", "ALL", "MTE4", "MTE5", "V2", "FIX"};
  return p >= 0 && p < P_N ? n[p] : "?";
}

[[noreturn]] inline void Fail(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::fprintf(stderr, "emu: ");
  std::vfprintf(stderr, fmt, ap);
  std::fprintf(stderr, "\n");
  va_end(ap);
  std::fflush(stderr);
  std::_Exit(3);
}

struct Stamp {
  int pipe = -1;
  uint64_t seq = 0;
  const char* what = "";
};
struct Shadow {
  Stamp write;
  Stamp read[P_N];
};

struct State {
  uint64_t seq[P_N] = {};
  uint64_t synced[P_N][P_N] = {};      // synced[P][Q]: P may rely on every Q instruction with seq <= this
  struct Flag {
    uint64_t seq = 0;
    uint64_t synced[P_N] = {};
  } flags[P_N][P_N][16];                // set_flag(Q, P, e): Q's seq and what Q had synchronised with, at the set
  bool counterMode = false;
  uint64_t maskHi = ~0ull, maskLo = ~0ull;
  uint64_t padValue = 0;
  uint64_t ctrl = 0;
  uint64_t acc = 0;   // reduction accumulator (get_acc_val)
  uint64_t maxMinCnt = 0;   // last vcmax / vcmin result (get_max_min_cnt)
  uint64_t vms4 = 0;        // pairs taken from each list by the last vmrgsort4 (get_vms4_sr)
  uint64_t rsvd = 0;        // elements gathered by the last vreducev2 (get_rsvd_cnt)
  bool checkRaces = true;
  std::unordered_map<uintptr_t, Shadow> shadow;   // per 4-byte UB word
};
inline State& S() {
  static State s;
  return s;
}

inline uint64_t Issue(int pipe) { return ++S().seq[pipe]; }

inline void Access(const void* p, size_t bytes, int pipe, uint64_t seq, bool write, const char* what) {
  State& st = S();
  if (!st.checkRaces) return;
  const uintptr_t a0 = reinterpret_cast<uintptr_t>(p) >> 2, a1 = (reinterpret_cast<uintptr_t>(p) + bytes + 3) >> 2;
  for (uintptr_t a = a0; a < a1; ++a) {
    Shadow& sh = st.shadow[a];
    const Stamp& w = sh.write;
    if (w.pipe >= 0 && !(w.pipe == pipe && (w.seq == seq || write))) {   // same-pipe write-after-write is ordered
      const bool sameV = w.pipe == pipe && pipe == P_V;
      if ((w.pipe != pipe || sameV) && st.synced[pipe][w.pipe] < w.seq)
        Fail("race: %s (pipe %s) %s UB %p written by %s (pipe %s #%llu) with no %s", what, PipeName(pipe),
             write ? "overwrites" : "reads", reinterpret_cast<void*>(a << 2), w.what, PipeName(w.pipe),
             (unsigned long long)w.seq, sameV ? "PipeBarrier<PIPE_V> between them" : "SetFlag/WaitFlag between them");
    }
    if (write) {
      for (int q = 0; q < P_N; ++q) {
        const Stamp& r = sh.read[q];
        if (r.pipe >= 0 && q != pipe && st.synced[pipe][q] < r.seq)
          Fail("race: %s (pipe %s) overwrites UB %p still read by %s (pipe %s #%llu) with no SetFlag/WaitFlag",
               what, PipeName(pipe), reinterpret_cast<void*>(a << 2), r.what, PipeName(q),
               (unsigned long long)r.seq);
      }
      sh.write = Stamp{pipe, seq, what};
      for (auto& r : sh.read) r = Stamp{};
    } else {
      sh.read[pipe] = Stamp{pipe, seq, what};
    }
  }
}

inline void Barrier(int pipe) {
  State& st = S();
  if (pipe == P_ALL) {
    for (int p = 0; p < P_N; ++p)
      for (int q = 0; q < P_N; ++q) st.synced[p][q] = st.seq[q];
  } else {
    st.synced[pipe][pipe] = st.seq[pipe];
  }
}
inline void SetFlag(int src, int dst, int e) {
  State::Flag& f = S().flags[src][dst][e & 15];
  f.seq = S().seq[src];
  for (int q = 0; q < P_N; ++q) f.synced[q] = q == src ? S().seq[src] : S().synced[src][q];
}
inline void WaitFlag(int src, int dst, int e) {
  State& st = S();
  const State::Flag& f = st.flags[src][dst][e & 15];
  // dst now follows every src instruction up to the set, and (transitively) what src had waited for -- including
  // dst's own earlier instructions (V -> MTE2 -> V orders two vector ops); a wait on the scalar pipe orders
  // everything the scalar unit issues afterwards, i.e. every pipe
  for (int p = 0; p < P_N; ++p) {
    if (p != dst && dst != P_S) continue;
    for (int q = 0; q < P_N; ++q) {
      if (st.synced[p][q] < f.synced[q]) st.synced[p][q] = f.synced[q];
    }
  }
}

// ------------------------------------------------------------------------------------------ number formats
inline float F16ToF32(uint16_t h) {
  const uint32_t s = (h >> 15) & 1, e = (h >> 10) & 31, m = h & 1023;
  float v;
  if (e == 0) v = std::ldexp(static_cast<float>(m), -24);
  else if (e == 31) v = m ? NAN : INFINITY;
  else v = std::ldexp(static_cast<float>(m | 1024), static_cast<int>(e) - 25);
  return s ? -v : v;
}
inline uint16_t F32ToF16(float f) {   // round to nearest even
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000;
  const uint32_t ax = x & 0x7fffffff;
  if (ax >= 0x7f800000) return static_cast<uint16_t>(sign | 0x7c00 | (ax > 0x7f800000 ? 0x200 : 0));
  if (ax >= 0x477ff000) return static_cast<uint16_t>(sign | 0x7c00);       // overflow -> inf
  if (ax < 0x38800000) {                                                    // subnormal half
    const float a = std::fabs(f) * 16777216.0f;                             // units of 2^-24
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(a)));
  }
  uint32_t m = ax + 0xfff + ((ax >> 13) & 1);
  return static_cast<uint16_t>(sign | ((m - 0x38000000) >> 13));
}
inline float Bf16ToF32(uint16_t b) {
  const uint32_t x = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
inline uint16_t F32ToBf16(float f, char mode) {   // r: nearest even, z: toward zero, f: floor, c: ceil, a: away
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((x >> 16) | 0x40);
  const uint32_t low = x & 0xffff, neg = x >> 31;
  uint32_t hi = x >> 16;
  switch (mode) {
    case 'r': hi = (x + 0x7fff + ((x >> 16) & 1)) >> 16; break;
    case 'a': hi = (x + 0x8000) >> 16; break;
    case 'z': break;
    case 'f': if (low && neg) ++hi; break;
    case 'c': if (low && !neg) ++hi; break;
    default: Fail("bf16 rounding mode %c not emulated", mode);
  }
  return static_cast<uint16_t>(hi);
}

// element kinds the vector ops see (by pointer type): float, int32, half, bfloat16, int16
template <class T>
struct Kind {
  static constexpr int bytes = sizeof(T);
};
template <class T>
inline float Load(const T* p) {
  if constexpr (std::is_same<T, float>::value) return *p;
  else if constexpr (std::is_integral<T>::value) return static_cast<float>(*p);
  else {
    uint16_t b;
    std::memcpy(&b, p, 2);
    return std::is_same<T, bfloat16_t>::value ? Bf16ToF32(b) : F16ToF32(b);
  }
}
template <class T>
inline void Store(T* p, float v) {
  if constexpr (std::is_same<T, float>::value) *p = v;
  else if constexpr (std::is_integral<T>::value) *p = static_cast<T>(v);
  else {
    const uint16_t b = std::is_same<T, bfloat16_t>::value ? F32ToBf16(v, 'r') : F32ToF16(v);
    std::memcpy(p, &b, 2);
  }
}
template <class C>
inline float Scalar(const C& c) {
  if constexpr (std::is_arithmetic<C>::value) return static_cast<float>(c);
  else {
    uint16_t b;
    std::memcpy(&b, &c, 2);
    return std::is_same<C, bfloat16_t>::value ? Bf16ToF32(b) : F16ToF32(b);
  }
}

// ------------------------------------------------------------------------------------------ vector engine
// Element e of a vector instruction (counter mode: e < count; normal mode: masked lanes of `repeat` repeats of
// 256 bytes) sits in repeat e / perRep, lane e % perRep; an operand of element size b lays lane l at
// block (l / (32 / b)) * blkStride + repeat * repStride blocks from its base.
struct Geometry {
  uint64_t blk, rep;
};
template <class T>
inline T* At(T* base, uint64_t r, uint64_t lane, Geometry g) {
  const uint64_t perBlk = 32 / sizeof(T);
  return reinterpret_cast<T*>(reinterpret_cast<uint8_t*>(base) + (r * g.rep + (lane / perBlk) * g.blk) * 32) +
         lane % perBlk;
}
template <class F>
inline void ForLanes(uint64_t repeat, int laneBytes, F&& f) {
  const State& st = S();
  const uint64_t perRep = 256 / laneBytes;
  if (st.counterMode) {
    const uint64_t n = st.maskLo;
    for (uint64_t e = 0; e < n; ++e) f(e / perRep, e % perRep);
  } else {
    for (uint64_t r = 0; r < repeat; ++r)
      for (uint64_t l = 0; l < perRep; ++l) {
        const bool on = l < 64 ? (st.maskLo >> l) & 1 : (st.maskHi >> (l - 64)) & 1;
        if (on) f(r, l);
      }
  }
}

// dst[e] = op(src0[e], src1[e]) with recorded accesses; lanes sized by the widest operand
template <class D, class A, class B, class Op>
inline void Binary(const char* what, D* dst, A* a, B* b, uint64_t repeat, Geometry gd, Geometry ga, Geometry gb,
                   Op op, bool readsDst = false) {
  const uint64_t s = Issue(P_V);
  const int lane = static_cast<int>(std::max(sizeof(D), std::max(sizeof(A), b ? sizeof(B) : sizeof(A))));
  ForLanes(repeat, lane, [&](uint64_t r, uint64_t l) {
    A* pa = At(a, r, l, ga);
    Access(pa, sizeof(A), P_V, s, false, what);
    float vb = 0;
    if (b) {
      B* pb = At(b, r, l, gb);
      Access(pb, sizeof(B), P_V, s, false, what);
      vb = Load(pb);
    }
    D* pd = At(dst, r, l, gd);
    const float va = Load(pa);
    const float dv = Load(pd);
    if (readsDst) Access(pd, sizeof(D), P_V, s, false, what);
    Access(pd, sizeof(D), P_V, s, true, what);
    Store(pd, op(va, vb, dv));
  });
}

}  // namespace av4_emu

// ------------------------------------------------------------------------------------------------- intrinsics
// pipes / flags / masks
inline void pipe_barrier(pipe_t p) { av4_emu::Barrier(static_cast<int>(p)); }
template <class E>
inline void set_flag(pipe_t src, pipe_t dst, E e) { av4_emu::SetFlag(src, dst, static_cast<int>(e)); }
template <class E>
inline void wait_flag(pipe_t src, pipe_t dst, E e) { av4_emu::WaitFlag(src, dst, static_cast<int>(e)); }
inline void set_mask_count() { av4_emu::S().counterMode = true; }
inline void set_mask_norm() { av4_emu::S().counterMode = false; }
template <class H, class L>
inline void set_vector_mask(H hi, L lo) {
  av4_emu::S().maskHi = static_cast<uint64_t>(hi);
  av4_emu::S().maskLo = static_cast<uint64_t>(lo);
}
template <class V>
inline void set_mov_pad_val(V v) { av4_emu::S().padValue = static_cast<uint64_t>(v); }
template <class... A>
inline void set_padding(A&&...) {}
template <class... A>
inline void set_atomic_none(A&&...) {}
template <class... A>
inline void set_l1_3d_size(A&&...) {}
inline int64_t get_ctrl() { return static_cast<int64_t>(av4_emu::S().ctrl); }
template <class V>
inline void set_ctrl(V v) { av4_emu::S().ctrl = static_cast<uint64_t>(v); }
inline int64_t sbitset0(uint64_t x, int64_t i) { return static_cast<int64_t>(x & ~(1ull << i)); }
inline int64_t sbitset1(uint64_t x, int64_t i) { return static_cast<int64_t>(x | (1ull << i)); }
inline int64_t sff0(uint64_t x) {   // position of the first 0 bit from the LSB
  for (int i = 0; i < 64; ++i)
    if (!((x >> i) & 1)) return i;
  return 64;
}
inline int64_t sff1(uint64_t x) {
  for (int i = 0; i < 64; ++i)
    if ((x >> i) & 1) return i;
  return 64;
}

// DataCopyPad GM -> UB: nBurst rows of lenBurst bytes; GM rows srcGap bytes apart, UB rows start 32-byte aligned
// with dstGap 32-byte blocks between them; leftPad / rightPad elements of the pad value around each row.
template <int B, class D, class Sp>
inline void CopyGmToUbAlign(D* dst, Sp* src, uint64_t nBurst, uint64_t lenBurst, uint64_t leftPad, uint64_t rightPad,
                            uint64_t srcGap, uint64_t dstGap, const char* what) {
  const uint64_t s = av4_emu::Issue(av4_emu::P_MTE2);
  uint8_t* d = reinterpret_cast<uint8_t*>(dst);
  const uint8_t* g = reinterpret_cast<const uint8_t*>(src);
  const uint64_t rowBytes = (leftPad + rightPad) * B + lenBurst, rowStride = (rowBytes + 31) / 32 * 32 + dstGap * 32;
  for (uint64_t r = 0; r < nBurst; ++r) {
    uint8_t* row = d + r * rowStride;
    av4_emu::Access(row, (rowBytes + 31) / 32 * 32, av4_emu::P_MTE2, s, true, what);
    for (uint64_t i = 0; i < leftPad; ++i) std::memcpy(row + i * B, &av4_emu::S().padValue, B);
    std::memcpy(row + leftPad * B, g + r * (lenBurst + srcGap), lenBurst);
    for (uint64_t i = 0; i < rightPad; ++i) std::memcpy(row + leftPad * B + lenBurst + i * B, &av4_emu::S().padValue, B);
  }
}
template <int B, class D, class Sp>
inline void CopyUbToGmAlign(D* dst, Sp* src, uint64_t nBurst, uint64_t lenBurst, uint64_t srcGap, uint64_t dstGap,
                            const char* what) {
  const uint64_t s = av4_emu::Issue(av4_emu::P_MTE3);
  uint8_t* g = reinterpret_cast<uint8_t*>(dst);
  const uint8_t* u = reinterpret_cast<const uint8_t*>(src);
  const uint64_t rowStride = (lenBurst + 31) / 32 * 32 + srcGap * 32;
  for (uint64_t r = 0; r < nBurst; ++r) {
    av4_emu::Access(u + r * rowStride, lenBurst, av4_emu::P_MTE3, s, false, what);
    std::memcpy(g + r * (lenBurst + dstGap), u + r * rowStride, lenBurst);
  }
}
#define AV4_EMU_COPY_ALIGN(B)                                                                                       \
  template <class D, class Sp, class... R>                                                                          \
  inline void copy_gm_to_ubuf_align_b##B(D* dst, Sp* src, int, uint64_t n, uint64_t len, uint64_t lp, uint64_t rp, \
                                         uint64_t sg, uint64_t dg) {                                                \
    CopyGmToUbAlign<B / 8>(dst, src, n, len, lp, rp, sg, dg, "copy_gm_to_ubuf_align_b" #B);                         \
  }                                                                                                                 \
  template <class D, class Sp>                                                                                      \
  inline void copy_ubuf_to_gm_align_b##B(D* dst, Sp* src, int, uint64_t n, uint64_t len, uint64_t, uint64_t,         \
                                         uint64_t sg, uint64_t dg) {                                                \
    CopyUbToGmAlign<B / 8>(dst, src, n, len, sg, dg, "copy_ubuf_to_gm_align_b" #B);                                 \
  }
AV4_EMU_COPY_ALIGN(8)
AV4_EMU_COPY_ALIGN(16)
AV4_EMU_COPY_ALIGN(32)
#undef AV4_EMU_COPY_ALIGN

// DataCopy GM <-> UB in 32-byte blocks: nBurst bursts of lenBurst blocks, gaps in blocks
template <class D, class Sp>
inline void copy_gm_to_ubuf(D* dst, Sp* src, int, uint64_t n, uint64_t len, uint64_t sg, uint64_t dg) {
  const uint64_t s = av4_emu::Issue(av4_emu::P_MTE2);
  for (uint64_t r = 0; r < n; ++r) {
    uint8_t* d = reinterpret_cast<uint8_t*>(dst) + r * (len + dg) * 32;
    av4_emu::Access(d, len * 32, av4_emu::P_MTE2, s, true, "copy_gm_to_ubuf");
    std::memcpy(d, reinterpret_cast<const uint8_t*>(src) + r * (len + sg) * 32, len * 32);
  }
}
template <class D, class Sp>
inline void copy_ubuf_to_gm(D* dst, Sp* src, int, uint64_t n, uint64_t len, uint64_t sg, uint64_t dg) {
  const uint64_t s = av4_emu::Issue(av4_emu::P_MTE3);
  for (uint64_t r = 0; r < n; ++r) {
    const uint8_t* u = reinterpret_cast<const uint8_t*>(src) + r * (len + sg) * 32;
    av4_emu::Access(u, len * 32, av4_emu::P_MTE3, s, false, "copy_ubuf_to_gm");
    std::memcpy(reinterpret_cast<uint8_t*>(dst) + r * (len + dg) * 32, u, len * 32);
  }
}

// binary: v*(dst, src0, src1, repeat, dstBlk, src0Blk, src1Blk, dstRep, src0Rep, src1Rep)
#define AV4_EMU_BINARY(name, expr)                                                                                  \
  template <class D, class A, class B, class... R>                                                                  \
  inline void name(D* dst, A* a, B* b, uint64_t repeat, uint64_t db, uint64_t ab, uint64_t bb, uint64_t dr,         \
                   uint64_t ar, uint64_t br, R...) {                                                                \
    av4_emu::Binary(#name, dst, a, b, repeat, {db, dr}, {ab, ar}, {bb, br},                                         \
                    [](float x, float y, float d) { (void)d; return (expr); });                                    \
  }
AV4_EMU_BINARY(vadd, x + y)
AV4_EMU_BINARY(vsub, x - y)
AV4_EMU_BINARY(vmul, x * y)
AV4_EMU_BINARY(vdiv, x / y)
AV4_EMU_BINARY(vmax, x > y ? x : y)
AV4_EMU_BINARY(vmin, x < y ? x : y)
#undef AV4_EMU_BINARY

// scalar forms: v*s(dst, src, scalar, repeat, dstBlk, srcBlk, dstRep, srcRep); vaxpy: dst += scalar * src
#define AV4_EMU_SCALAR(name, expr, readsDst)                                                                        \
  template <class D, class A, class C, class... R>                                                                  \
  inline void name(D* dst, A* a, C c, uint64_t repeat, uint64_t db, uint64_t ab, uint64_t dr, uint64_t ar, R...) { \
    const float s = av4_emu::Scalar(c);                                                                             \
    av4_emu::Binary<D, A, A>(#name, dst, a, nullptr, repeat, {db, dr}, {ab, ar}, {0, 0},                            \
                             [s](float x, float, float d) { (void)d; return (expr); }, readsDst);                  \
  }
AV4_EMU_SCALAR(vadds, x + s, false)
AV4_EMU_SCALAR(vmuls, x * s, false)
AV4_EMU_SCALAR(vmaxs, x > s ? x : s, false)
AV4_EMU_SCALAR(vmins, x < s ? x : s, false)
AV4_EMU_SCALAR(vaxpy, d + s * x, true)
#undef AV4_EMU_SCALAR

// unary: v*(dst, src, repeat, dstBlk, srcBlk, dstRep, srcRep)
#define AV4_EMU_UNARY(name, expr)                                                                                   \
  template <class D, class A, class... R>                                                                           \
  inline void name(D* dst, A* a, uint64_t repeat, uint64_t db, uint64_t ab, uint64_t dr, uint64_t ar, R...) {      \
    av4_emu::Binary<D, A, A>(#name, dst, a, nullptr, repeat, {db, dr}, {ab, ar}, {0, 0},                            \
                             [](float x, float, float) { return (expr); });                                        \
  }
AV4_EMU_UNARY(vexp, std::exp(x))
AV4_EMU_UNARY(vln, std::log(x))
AV4_EMU_UNARY(vsqrt, std::sqrt(x))
AV4_EMU_UNARY(vrec, 1.0f / x)
AV4_EMU_UNARY(vabs, std::fabs(x))
AV4_EMU_UNARY(vrelu, x > 0 ? x : 0.0f)
AV4_EMU_UNARY(vconv_bf162f32, x)
AV4_EMU_UNARY(vconv_f162f32, x)
AV4_EMU_UNARY(vconv_f322f16, x)
AV4_EMU_UNARY(vconv_s322f32, x)   // int32 -> float (exact below 2^24: ids, counts)
AV4_EMU_UNARY(vconv_s82f16, x)    // int8 -> half (exact; Engram dequant)
#undef AV4_EMU_UNARY

template <class D, class A, class... R>
inline void vconv_f322bf16r(D* dst, A* a, uint64_t repeat, uint64_t db, uint64_t ab, uint64_t dr, uint64_t ar, R...) {
  const uint64_t s = av4_emu::Issue(av4_emu::P_V);
  av4_emu::ForLanes(repeat, 4, [&](uint64_t r, uint64_t l) {
    A* pa = av4_emu::At(a, r, l, {ab, ar});
    D* pd = av4_emu::At(dst, r, l, {db, dr});
    av4_emu::Access(pa, 4, av4_emu::P_V, s, false, "vconv_f322bf16r");
    av4_emu::Access(pd, 2, av4_emu::P_V, s, true, "vconv_f322bf16r");
    const uint16_t b = av4_emu::F32ToBf16(*reinterpret_cast<const float*>(pa), 'r');
    std::memcpy(pd, &b, 2);
  });
}

// vbrcb(dst, src, dstBlk, dstRep, repeat) (Brcb): per repeat r, element i < 8 of src[8 r ...] fills the 32-byte
// block of dst at (r * dstRep + i * dstBlk) blocks (bits copied: 16- or 32-bit elements)
template <class D, class A>
inline void vbrcb(D* dst, A* src, uint64_t db, uint64_t dr, uint64_t repeat) {
  static_assert(sizeof(D) == sizeof(A), "vbrcb: source and destination elements have one width");
  const uint64_t s = av4_emu::Issue(av4_emu::P_V);
  for (uint64_t r = 0; r < repeat; ++r)
    for (uint64_t i = 0; i < 8; ++i) {
      A* pa = src + r * 8 + i;
      av4_emu::Access(pa, sizeof(A), av4_emu::P_V, s, false, "vbrcb");
      D* blk = reinterpret_cast<D*>(reinterpret_cast<uint8_t*>(dst) + (r * dr + i * db) * 32);
      for (uint64_t k = 0; k < 32 / sizeof(D); ++k) {
        av4_emu::Access(blk + k, sizeof(D), av4_emu::P_V, s, true, "vbrcb");
        std::memcpy(blk + k, pa, sizeof(D));
      }
    }
}

// vector_dup(dst, scalar, repeat, dstBlk, srcBlk, dstRep, srcRep)
template <class D, class C, class... R>
inline void vector_dup(D* dst, C c, uint64_t repeat, uint64_t db, uint64_t, uint64_t dr, uint64_t, R...) {
  const float v = av4_emu::Scalar(c);
  const uint64_t s = av4_emu::Issue(av4_emu::P_V);
  av4_emu::ForLanes(repeat, sizeof(D), [&](uint64_t r, uint64_t l) {
    D* pd = av4_emu::At(dst, r, l, {db, dr});
    av4_emu::Access(pd, sizeof(D), av4_emu::P_V, s, true, "vector_dup");
    if constexpr (std::is_integral<D>::value) *pd = static_cast<D>(c);
    else av4_emu::Store(pd, v);
  });
}

// vcadd(dst, src, repeat, dstRepStride, srcBlkStride, srcRepStride, mode): per repeat the sum of its active lanes
// goes to dst[r * dstRepStride] (units of one element); mode 1 (ReduceSum, counter mode) sums every active lane
// into the accumulator register read back with get_acc_val. Summation is float, in lane order.
template <class D, class A, class... R>
inline void vcadd(D* dst, A* a, uint64_t repeat, uint64_t dstRep, uint64_t srcBlk, uint64_t srcRep, int mode, R...) {
  const uint64_t s = av4_emu::Issue(av4_emu::P_V);
  double total = 0;   // mode 1
  float acc[256] = {};
  uint64_t maxRep = 0;
  av4_emu::ForLanes(repeat, sizeof(A), [&](uint64_t r, uint64_t l) {
    A* pa = av4_emu::At(a, r, l, {srcBlk, srcRep});
    av4_emu::Access(pa, sizeof(A), av4_emu::P_V, s, false, "vcadd");
    if (r >= 256) av4_emu::Fail("vcadd: more than 255 repeats");
    acc[r] += av4_emu::Load(pa);
    total += av4_emu::Load(pa);
    if (r + 1 > maxRep) maxRep = r + 1;
  });
  if (mode == 1) {
    const float t = static_cast<float>(total);
    uint64_t bits = 0;
    std::memcpy(&bits, &t, 4);
    av4_emu::S().acc = bits;
    return;
  }
  const uint64_t reps = av4_emu::S().counterMode ? maxRep : repeat;
  for (uint64_t r = 0; r < reps; ++r) {
    D* pd = dst + r * dstRep;
    av4_emu::Access(pd, sizeof(D), av4_emu::P_V, s, true, "vcadd");
    av4_emu::Store(pd, acc[r]);
  }
}
inline int64_t get_acc_val() { return static_cast<int64_t>(av4_emu::S().acc); }

// vcmax / vcmin(dst, src, repeat, dstRepStride, srcBlkStride, srcRepStride, order): per repeat the largest
// (smallest) active lane -> dst[r * dstRepStride * width], width 2 for VALUE_INDEX / INDEX_VALUE (value and the lane
// index as raw bits), 1 for ONLY_VALUE / ONLY_INDEX. Equal values: the lowest lane (an assumption: the kernels that
// need a tie rule re-scan below the reported index). The last result is also kept for get_max_min_cnt.
namespace av4_emu {
template <bool kMax, class D, class A>
inline void ReduceExtreme(const char* what, D* dst, A* a, uint64_t repeat, uint64_t dstRep, uint64_t srcBlk,
                          uint64_t srcRep, int order) {
  const uint64_t s = Issue(P_V);
  float best[256];
  uint32_t lane[256];
  bool seen[256] = {};
  uint64_t maxRep = 0;
  ForLanes(repeat, sizeof(A), [&](uint64_t r, uint64_t l) {
    if (r >= 256) Fail("%s: more than 255 repeats", what);
    A* pa = At(a, r, l, {srcBlk, srcRep});
    Access(pa, sizeof(A), P_V, s, false, what);
    const float v = Load(pa);
    if (!seen[r] || (kMax ? v > best[r] : v < best[r])) best[r] = v, lane[r] = static_cast<uint32_t>(l), seen[r] = true;
    if (r + 1 > maxRep) maxRep = r + 1;
  });
  const uint64_t reps = S().counterMode ? maxRep : repeat;
  const int width = (order == 0 || order == 1) ? 2 : 1;
  for (uint64_t r = 0; r < reps; ++r) {
    if (!seen[r]) continue;
    D* pd = dst + r * dstRep * width;
    Access(pd, sizeof(D) * width, P_V, s, true, what);
    D vbits, ibits;
    Store(&vbits, best[r]);
    std::memset(&ibits, 0, sizeof(D));
    std::memcpy(&ibits, &lane[r], sizeof(D) < 4 ? sizeof(D) : 4);
    if (order == 0) pd[0] = vbits, pd[1] = ibits;
    else if (order == 1) pd[0] = ibits, pd[1] = vbits;
    else pd[0] = order == 2 ? vbits : ibits;
    uint64_t v = 0;
    std::memcpy(&v, &vbits, sizeof(D));
    S().maxMinCnt = v | (static_cast<uint64_t>(lane[r]) << 32);
  }
}
}  // namespace av4_emu
template <class D, class A, class O, class... R>
inline void vcmax(D* dst, A* a, uint64_t repeat, uint64_t dstRep, uint64_t srcBlk, uint64_t srcRep, O order, R...) {
  av4_emu::ReduceExtreme<true>("vcmax", dst, a, repeat, dstRep, srcBlk, srcRep, static_cast<int>(order));
}
template <class D, class A, class O, class... R>
inline void vcmin(D* dst, A* a, uint64_t repeat, uint64_t dstRep, uint64_t srcBlk, uint64_t srcRep, O order, R...) {
  av4_emu::ReduceExtreme<false>("vcmin", dst, a, repeat, dstRep, srcBlk, srcRep, static_cast<int>(order));
}
inline int64_t get_max_min_cnt() { return static_cast<int64_t>(av4_emu::S().maxMinCnt); }

// Cross-core flags (ffts_cross_core_sync(pipe, config) = CrossCoreSetFlag / SyncAll; wait_flag_dev(flag) =
// CrossCoreWaitFlag), config = 1 + (mode << 4) + (flag << 8), over counters in GM shared by the forked cores:
//   mode 0  every core of the setter's type sets flag f; a core of that type may pass its n-th wait on f once all
//           of them have set it n times (SyncAll, all-AIC or all-AIV barrier)
//   mode 1  the two AIV cores of a group: the n-th wait passes once both have set f n times
//   mode 2  AIC <-> AIV of one group: a set by the AIC lets each of its two AIV pass one wait; the AIC's n-th wait
//           passes once BOTH of its AIV have set f n times
// A wait that cannot pass within 60 s (a flag never set, a mismatched count) stops the run, naming the flag, and so
// does a wait that finds more than 15 sets of its flag not yet waited for (the hardware counter is 4 bits).
#include <sched.h>
#include <time.h>
namespace av4_emu {
constexpr int kMaxGroups = 64;
struct CrossCore {
  int64_t all[2][16];                   // mode 0 sets, per core type (0 AIC, 1 AIV)
  int64_t pair[kMaxGroups][2][16];      // mode 1 sets by AIV sub-block 0 / 1 of a group
  int64_t toAic[kMaxGroups][2][16];     // mode 2 sets by AIV sub-block 0 / 1 for the group's AIC
  int64_t toAiv[kMaxGroups][16];        // mode 2 sets by the group's AIC (each of its AIV may pass one wait)
};
struct CrossCoreSelf {
  CrossCore* shared = nullptr;
  int aic = 0, aiv = 1;                 // cores of each type in the launch
  int group = 0, sub = 0, isAic = 0;
  int64_t passed[16] = {};
};
inline CrossCoreSelf& XCore() {
  static CrossCoreSelf x;
  return x;
}
inline int64_t XLoad(const int64_t& v) { return __atomic_load_n(&v, __ATOMIC_SEQ_CST); }
inline int64_t XMin(int64_t a, int64_t b) { return a < b ? a : b; }
// waits on flag f this core may have passed in total
inline int64_t XAvail(int f) {
  const CrossCoreSelf& x = XCore();
  const CrossCore& c = *x.shared;
  const int n = x.isAic ? x.aic : x.aiv;
  int64_t v = n ? XLoad(c.all[x.isAic ? 0 : 1][f]) / n : 0;
  if (x.isAic) return v + XMin(XLoad(c.toAic[x.group][0][f]), XLoad(c.toAic[x.group][1][f]));
  return v + XMin(XLoad(c.pair[x.group][0][f]), XLoad(c.pair[x.group][1][f])) + XLoad(c.toAiv[x.group][f]);
}
}  // namespace av4_emu
template <class P, class M>
inline void ffts_cross_core_sync(P, M config) {
  av4_emu::CrossCoreSelf& x = av4_emu::XCore();
  if (!x.shared) av4_emu::Fail("cross-core flag outside a launch");
  const uint64_t cfg = static_cast<uint64_t>(config);
  const int mode = (cfg >> 4) & 3, f = (cfg >> 8) & 15;
  av4_emu::CrossCore& c = *x.shared;
  if (mode == 0) __atomic_add_fetch(&c.all[x.isAic ? 0 : 1][f], 1, __ATOMIC_SEQ_CST);
  else if (mode == 1 && !x.isAic) __atomic_add_fetch(&c.pair[x.group][x.sub][f], 1, __ATOMIC_SEQ_CST);
  else if (mode == 2 && x.isAic) __atomic_add_fetch(&c.toAiv[x.group][f], 1, __ATOMIC_SEQ_CST);
  else if (mode == 2) __atomic_add_fetch(&c.toAic[x.group][x.sub][f], 1, __ATOMIC_SEQ_CST);
  else av4_emu::Fail("cross-core flag mode %d from an %s core not emulated", mode, x.isAic ? "AIC" : "AIV");
}
template <class F>
inline void wait_flag_dev(F flag) {
  av4_emu::CrossCoreSelf& x = av4_emu::XCore();
  if (!x.shared) av4_emu::Fail("cross-core wait outside a launch");
  const int f = static_cast<int>(flag) & 15;
  const time_t t0 = time(nullptr);
  int64_t avail;
  while ((avail = av4_emu::XAvail(f)) <= x.passed[f]) {
    if (time(nullptr) - t0 > 60)
      av4_emu::Fail("cross-core wait on flag %d (%s core, group %d, wait %lld) never satisfied: deadlock", f,
                    x.isAic ? "AIC" : "AIV", x.group, (long long)x.passed[f] + 1);
    sched_yield();
  }
  if (avail - x.passed[f] > 15)
    av4_emu::Fail("cross-core flag %d (%s core, group %d): more than 15 sets not waited for", f,
                  x.isAic ? "AIC" : "AIV", x.group);
  ++x.passed[f];
}

// UB -> UB DataCopy (copy_ubuf_to_ubuf, on the vector pipe): nBurst bursts of lenBurst 32-byte blocks, gaps in blocks
template <class D, class Sp>
inline void copy_ubuf_to_ubuf(D* dst, Sp* src, int, uint64_t n, uint64_t len, uint64_t sg, uint64_t dg) {
  const uint64_t s = av4_emu::Issue(av4_emu::P_V);
  for (uint64_t r = 0; r < n; ++r) {
    const uint8_t* u = reinterpret_cast<const uint8_t*>(src) + r * (len + sg) * 32;
    uint8_t* d = reinterpret_cast<uint8_t*>(dst) + r * (len + dg) * 32;
    av4_emu::Access(u, len * 32, av4_emu::P_V, s, false, "copy_ubuf_to_ubuf");
    av4_emu::Access(d, len * 32, av4_emu::P_V, s, true, "copy_ubuf_to_ubuf");
    std::memmove(d, u, len * 32);
  }
}

// Sort32 (vbitsort): per repeat, 32 float scores + 32 uint32 indices -> 32 (score, index) pairs, scores descending;
// equal scores keep their input order (lower position first -- an assumption, see docs/ascendc.md).
// MrgSort (vmrgsort4): merges up to 4 descending lists of (score, index) pairs (validBit says which), equal scores
// taken from the lower-numbered list first; repeat r shifts every list and dst by the lists' total length. With
// "exhausted suspension" it stops when a list runs out; get_vms4_sr reports how many pairs each list gave.
namespace av4_emu {
struct Pair32 {
  float v;
  uint32_t i;
};
}  // namespace av4_emu
template <class D, class A, class I, class... R>
inline void vbitsort(D* dst, A* scores, I* idx, uint64_t repeat, R...) {
  static_assert(sizeof(A) == 4, "Sort32 emulated for float scores");
  const uint64_t s = av4_emu::Issue(av4_emu::P_V);
  for (uint64_t r = 0; r < repeat; ++r) {
    av4_emu::Pair32 p[32];
    av4_emu::Access(scores + r * 32, 128, av4_emu::P_V, s, false, "vbitsort");
    av4_emu::Access(idx + r * 32, 128, av4_emu::P_V, s, false, "vbitsort");
    for (int j = 0; j < 32; ++j) {
      std::memcpy(&p[j].v, scores + r * 32 + j, 4);
      std::memcpy(&p[j].i, idx + r * 32 + j, 4);
    }
    for (int a = 1; a < 32; ++a)   // stable insertion sort, descending
      for (int b = a; b > 0 && p[b].v > p[b - 1].v; --b) std::swap(p[b], p[b - 1]);
    uint8_t* d = reinterpret_cast<uint8_t*>(dst) + r * 256;
    av4_emu::Access(d, 256, av4_emu::P_V, s, true, "vbitsort");
    std::memcpy(d, p, 256);
  }
}
template <class D, class L, class... R>
inline void vmrgsort4(D* dst, L* lists, uint64_t lengths, uint64_t config, R...) {
  const uint64_t s = av4_emu::Issue(av4_emu::P_V);
  const uint64_t repeat = config & 0xFF, valid = (config >> 8) & 0xF;
  const bool suspend = (config >> 12) & 1;
  uint64_t len[4], total = 0;
  for (int l = 0; l < 4; ++l) {
    len[l] = ((valid >> l) & 1) ? (lengths >> (16 * l)) & 0xFFFF : 0;
    total += len[l];
  }
  uint64_t used[4] = {};
  for (uint64_t r = 0; r < (repeat ? repeat : 1); ++r) {
    const av4_emu::Pair32* src[4];
    for (int l = 0; l < 4; ++l) {
      src[l] = reinterpret_cast<const av4_emu::Pair32*>(lists[l]) + r * total;
      used[l] = 0;
      if (len[l]) av4_emu::Access(src[l], len[l] * 8, av4_emu::P_V, s, false, "vmrgsort4");
    }
    av4_emu::Pair32* out = reinterpret_cast<av4_emu::Pair32*>(dst) + r * total;
    av4_emu::Pair32 tmp[4096];
    uint64_t n = 0;
    for (;;) {
      int best = -1;
      bool exhausted = false;
      for (int l = 0; l < 4; ++l) {
        if (!len[l]) continue;
        if (used[l] == len[l]) {
          exhausted = true;
          continue;
        }
        if (best < 0 || src[l][used[l]].v > src[best][used[best]].v) best = l;
      }
      if (best < 0 || (suspend && exhausted)) break;
      if (n >= 4096) av4_emu::Fail("vmrgsort4: more than 4096 pairs");
      tmp[n++] = src[best][used[best]++];
    }
    av4_emu::Access(out, n * 8, av4_emu::P_V, s, true, "vmrgsort4");
    std::memcpy(out, tmp, n * 8);
  }
  av4_emu::S().vms4 = used[0] | (used[1] << 16) | (used[2] << 32) | (used[3] << 48);
}
inline int64_t get_vms4_sr() { return static_cast<int64_t>(av4_emu::S().vms4); }

// GatherMask (vreducev2) with the built-in patterns: 1 even lanes, 2 odd lanes, 7 all (32-bit or 16-bit lanes,
// 256 bytes per repeat, results packed); the number gathered is read back with get_rsvd_cnt.
template <class D, class A, class B, class... R>
inline void vreducev2(D* dst, A* src, B*, uint64_t repeat, uint64_t blk, uint64_t mode, uint64_t rep, uint64_t,
                      R...) {
  const uint64_t s = av4_emu::Issue(av4_emu::P_V);
  const uint64_t lanes = 256 / sizeof(A);
  uint64_t n = 0;
  for (uint64_t r = 0; r < repeat; ++r)
    for (uint64_t l = 0; l < lanes; ++l) {
      const bool take = mode == 1 ? (l % 2 == 0) : mode == 2 ? (l % 2 == 1) : mode == 7 ? true : false;
      if (mode != 1 && mode != 2 && mode != 7) av4_emu::Fail("vreducev2 pattern %llu not emulated", (unsigned long long)mode);
      if (!take) continue;
      A* pa = av4_emu::At(src, r, l, {blk, rep});
      av4_emu::Access(pa, sizeof(A), av4_emu::P_V, s, false, "vreducev2");
      av4_emu::Access(dst + n, sizeof(D), av4_emu::P_V, s, true, "vreducev2");
      std::memcpy(dst + n, pa, sizeof(D));
      ++n;
    }
  av4_emu::S().rsvd = n;
}
inline int64_t get_rsvd_cnt() { return static_cast<int64_t>(av4_emu::S().rsvd); }

// ------------------------------------------------------------------------------------------------- Cube unit
// The data path of the AI Cube core (docs/ascendc.md, "Cube unit"): GM -> L1 (MTE2; plain or ND -> NZ), L1 -> L0A /
// L0B (MTE1, 512-byte fractals, optionally transposed), Mmad (pipe M: L0A x L0B -> L0C, float32 accumulation),
// L0C -> GM (FIX; NZ -> ND, float32 -> half / bfloat16). L1 / L0 are host arrays in CPU-debug mode, so the pipe
// model above tracks them by address exactly like UB.
// Formats. A fractal is 16 rows x C0 elements, C0 = 32 bytes / element size (16 for half / bfloat16, 8 for float,
// 32 for int8), 512 bytes. NZ (L1): fractal columns of C0 elements, rows padded; element (r, c) at
// (c / C0) * C0Stride + r * C0 + c % C0. L0A ("Zz"): fractals row-major over (m1, k1); L0B ("Zn"): fractals
// row-major over (k1, n1), each holding the 16 x C0 block of B^T (n rows, k columns); L0C: NZ of 16 x 16 float
// fractals, (r, c) at (c / 16) * M16 * 16 + r * 16 + c % 16 with M16 = m rounded up to 16. Mmad multiplies the
// padded shapes (k rounded up to C0): padding the kernel leaves undefined reaches the result, as on the device.
namespace av4_emu {
struct CubeState {
  uint64_t ndPara = 1;   // set_nd_para: ndNum [15:0], srcNdStride [31:16], dstNdStride [47:32]
};
inline CubeState& Cube() {
  static CubeState c;
  return c;
}
template <class T>
constexpr uint64_t C0() { return 32 / sizeof(T); }
}  // namespace av4_emu

// DataCopy GM -> L1: nBurst bursts of lenBurst 32-byte blocks, gaps (srcStride, dstStride) in blocks
template <class D, class Sp, class... R>
inline void copy_gm_to_cbuf(D* dst, Sp* src, int8_t, uint16_t nBurst, uint16_t lenBurst, uint16_t srcGap,
                            uint16_t dstGap, R...) {
  const uint64_t s = av4_emu::Issue(av4_emu::P_MTE2);
  for (uint64_t r = 0; r < nBurst; ++r) {
    uint8_t* d = reinterpret_cast<uint8_t*>(dst) + r * (lenBurst + dstGap) * 32ull;
    const uint8_t* g = reinterpret_cast<const uint8_t*>(src) + r * (lenBurst + srcGap) * 32ull;
    av4_emu::Access(d, lenBurst * 32ull, av4_emu::P_MTE2, s, true, "DataCopy GM->L1");
    std::memcpy(d, g, lenBurst * 32ull);
  }
}

// DataCopy GM -> L1 with Nd2NzParams: ndNum matrices of nValue rows x dValue elements (rows srcDValue elements
// apart, matrices srcNdMatrixStride apart) -> NZ: row r, column c of matrix i at dst + i * dstNzMatrixStride +
// (c / C0) * dstNzC0Stride * C0 + r * dstNzNStride * C0 + c % C0 (strides in C0 blocks, matrix stride in elements).
// Only the given rows / columns are written; padding keeps what L1 held.
namespace av4_emu {
template <class T>
inline void Nd2Nz(T* dst, const T* src, uint16_t ndNum, uint16_t nValue, uint16_t dValue, uint16_t srcNdStride,
                  uint16_t srcDValue, uint16_t c0Stride, uint16_t nStride, uint16_t dstNdStride, const char* what) {
  const uint64_t s = Issue(P_MTE2);
  constexpr uint64_t c0 = C0<T>();
  for (uint64_t i = 0; i < ndNum; ++i)
    for (uint64_t r = 0; r < nValue; ++r)
      for (uint64_t c = 0; c < dValue; ++c) {
        T* d = dst + i * dstNdStride + (c / c0) * c0Stride * c0 + r * nStride * c0 + c % c0;
        Access(d, sizeof(T), P_MTE2, s, true, what);
        std::memcpy(d, src + i * srcNdStride + r * srcDValue + c, sizeof(T));
      }
}
}  // namespace av4_emu
#define AV4_EMU_ND2NZ(name)                                                                                          \
  template <class D, class Sp>                                                                                       \
  inline void name(D* dst, Sp* src, uint8_t, uint16_t ndNum, uint16_t nValue, uint16_t dValue, uint16_t srcNdStride, \
                   uint16_t srcDValue, uint16_t c0Stride, uint16_t nStride, uint16_t dstNdStride) {                  \
    av4_emu::Nd2Nz(dst, reinterpret_cast<const D*>(src), ndNum, nValue, dValue, srcNdStride, srcDValue, c0Stride,   \
                   nStride, dstNdStride, "DataCopy GM->L1 (ND2NZ)");                                                \
  }
AV4_EMU_ND2NZ(copy_gm_to_cbuf_multi_nd2nz_b16)
AV4_EMU_ND2NZ(copy_gm_to_cbuf_multi_nd2nz_b32s)
AV4_EMU_ND2NZ(copy_gm_to_cbuf_multi_nd2nz_b8)
#undef AV4_EMU_ND2NZ

// InitConstValue on L1 (create_cbuf_matrix, pipe MTE2): repeat [15:0] times blockNum [31:16] 32-byte blocks of the
// value, dstGap [47:32] blocks between repeats
namespace av4_emu {
template <class D, class V>
inline void CreateMatrix(D* dst, int64_t config, V value, uint64_t blockBytes, int pipe, const char* what) {
  const uint64_t s = Issue(pipe);
  const uint64_t rep = config & 0x7FFF, blocks = (config >> 16) & 0x7FFF, gap = (config >> 32) & 0x7FFF;
  uint8_t* d = reinterpret_cast<uint8_t*>(dst);
  for (uint64_t r = 0; r < rep; ++r) {
    uint8_t* p = d + r * (blocks + gap) * blockBytes;
    Access(p, blocks * blockBytes, pipe, s, true, what);
    for (uint64_t b = 0; b < blocks * blockBytes; b += sizeof(V)) std::memcpy(p + b, &value, sizeof(V));
  }
}
}  // namespace av4_emu
template <class D, class V>
inline void create_cbuf_matrix(D* dst, int64_t config, V value) {
  av4_emu::CreateMatrix(dst, config, value, 32, av4_emu::P_MTE2, "InitConstValue L1");
}
template <class D, class V>
inline void create_cbuf_matrix_bf16(D* dst, int64_t config, V value) {
  av4_emu::CreateMatrix(dst, config, value, 32, av4_emu::P_MTE2, "InitConstValue L1");
}
template <class D, class V>
inline void create_ca_matrix(D* dst, int64_t config, V value) {
  av4_emu::CreateMatrix(dst, config, value, 512, av4_emu::P_MTE1, "InitConstValue L0A");
}
template <class D, class V>
inline void create_cb_matrix(D* dst, int64_t config, V value) {
  av4_emu::CreateMatrix(dst, config, value, 512, av4_emu::P_MTE1, "InitConstValue L0B");
}

// DataCopy L1 -> GM (pipe MTE3): nBurst bursts of lenBurst 32-byte blocks, gaps in blocks
template <class D, class Sp, class... R>
inline void copy_cbuf_to_gm(D* dst, Sp* src, uint8_t, uint16_t nBurst, uint16_t lenBurst, uint16_t srcGap,
                            uint16_t dstGap, R...) {
  const uint64_t s = av4_emu::Issue(av4_emu::P_MTE3);
  for (uint64_t r = 0; r < nBurst; ++r) {
    const uint8_t* u = reinterpret_cast<const uint8_t*>(src) + r * (lenBurst + srcGap) * 32ull;
    av4_emu::Access(u, lenBurst * 32ull, av4_emu::P_MTE3, s, false, "DataCopy L1->GM");
    std::memcpy(reinterpret_cast<uint8_t*>(dst) + r * (lenBurst + dstGap) * 32ull, u, lenBurst * 32ull);
  }
}

// LoadData 2D, L1 -> L0A / L0B (pipe MTE1): repeat r moves the 512-byte fractal at src + (startIndex + r *
// srcStride) fractals to dst + r * (1 + dstGap) fractals, transposing the 16 x 16 fractal when asked (16-bit types)
namespace av4_emu {
template <class D>
inline void Load2D(D* dst, const D* src, uint64_t start, uint64_t repeat, uint64_t srcStride, uint64_t dstGap,
                   bool transpose, const char* what) {
  const uint64_t s = Issue(P_MTE1);
  if (transpose && sizeof(D) != 2) Fail("%s: transposing 2D load emulated for 16-bit types only", what);
  for (uint64_t r = 0; r < repeat; ++r) {
    const uint8_t* f = reinterpret_cast<const uint8_t*>(src) + (start + r * srcStride) * 512;
    uint8_t* d = reinterpret_cast<uint8_t*>(dst) + r * (1 + dstGap) * 512;
    Access(f, 512, P_MTE1, s, false, what);
    Access(d, 512, P_MTE1, s, true, what);
    if (!transpose) {
      std::memmove(d, f, 512);
    } else {
      uint16_t t[256];
      for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) std::memcpy(&t[j * 16 + i], f + (i * 16 + j) * 2, 2);
      std::memcpy(d, t, 512);
    }
  }
}
}  // namespace av4_emu
template <class D, class Sp, class... R>
inline void load_cbuf_to_ca(D* dst, Sp* src, uint16_t start, uint8_t repeat, uint16_t srcStride, uint16_t dstGap,
                            uint8_t, bool transpose, R...) {
  av4_emu::Load2D(dst, reinterpret_cast<const D*>(src), start, repeat, srcStride, dstGap, transpose,
                  "LoadData L1->L0A");
}
template <class D, class Sp, class... R>
inline void load_cbuf_to_cb(D* dst, Sp* src, uint16_t start, uint8_t repeat, uint16_t srcStride, uint16_t dstGap,
                            uint8_t, bool transpose, R...) {
  av4_emu::Load2D(dst, reinterpret_cast<const D*>(src), start, repeat, srcStride, dstGap, transpose,
                  "LoadData L1->L0B");
}

// Mmad (pipe M): C[m, n] (=|+=) A[m, k] B[k, n] over the padded k (a multiple of C0), float accumulation in
// k order; cmatrixInitVal starts from zero, otherwise C accumulates onto L0C. Bias (cmatrixSource) not emulated.
template <class C, class A, class B>
inline void mad(C* c, A* a, B* b, uint16_t m, uint16_t k, uint16_t n, uint8_t unitFlag, bool kAlign,
                bool cmatrixSource, bool init) {
  static_assert(std::is_same<C, float>::value, "Mmad emulated for float accumulation");
  static_assert(sizeof(A) == 2 || sizeof(A) == 4, "Mmad emulated for half, bfloat16 and float operands");
  if (cmatrixSource || unitFlag) av4_emu::Fail("Mmad: bias from C2 / unit flag not emulated");
  (void)kAlign;
  const uint64_t s = av4_emu::Issue(av4_emu::P_M);
  constexpr uint64_t c0 = av4_emu::C0<A>();
  const uint64_t m16 = (m + 15) / 16 * 16, n16 = (n + 15) / 16 * 16, kp = (k + c0 - 1) / c0 * c0;
  const uint64_t k1 = kp / c0, n1 = n16 / 16;
  av4_emu::Access(a, m16 * kp * sizeof(A), av4_emu::P_M, s, false, "Mmad (L0A)");
  av4_emu::Access(b, kp * n16 * sizeof(B), av4_emu::P_M, s, false, "Mmad (L0B)");
  if (!init) av4_emu::Access(c, m16 * n16 * 4, av4_emu::P_M, s, false, "Mmad (L0C)");
  av4_emu::Access(c, m16 * n16 * 4, av4_emu::P_M, s, true, "Mmad (L0C)");
  for (uint64_t r = 0; r < m16; ++r)
    for (uint64_t j = 0; j < n16; ++j) {
      float acc = init ? 0.0f : c[(j / 16) * m16 * 16 + r * 16 + j % 16];
      for (uint64_t q = 0; q < kp; ++q) {
        const float x = av4_emu::Load(a + ((r / 16) * k1 + q / c0) * 16 * c0 + (r % 16) * c0 + q % c0);
        const float y = av4_emu::Load(b + ((q / c0) * n1 + j / 16) * 16 * c0 + (j % 16) * c0 + q % c0);
        acc += x * y;
      }
      c[(j / 16) * m16 * 16 + r * 16 + j % 16] = acc;
    }
}

// Fixpipe L0C -> GM (pipe FIX): nSize columns x mSize rows of the float NZ matrix (srcStride: rows between fractal
// columns, in 16-element units) -> with nz2nd, ND rows dstStride elements apart (ndNum 1 of set_nd_para);
// without, NZ with dstStride 32-byte blocks between fractal columns. Conversion: none (float out), F322F16 or
// F322BF16 (round to nearest even).
inline void set_nd_para(uint64_t config) { av4_emu::Cube().ndPara = config; }
template <class D, class Sp, class Q>
inline void copy_matrix_cc_to_gm(D* dst, Sp* src, uint8_t, uint16_t nSize, uint16_t mSize, uint32_t dstStride,
                                 uint16_t srcStride, uint8_t unitFlag, Q quant, uint8_t relu, bool channelSplit,
                                 bool nz2nd) {
  static_assert(std::is_same<Sp, float>::value, "Fixpipe emulated from a float L0C");
  if (unitFlag || relu || channelSplit) av4_emu::Fail("Fixpipe: unit flag / relu / channel split not emulated");
  const bool toHalf = quant == QuantMode_t::F322F16, toBf16 = quant == QuantMode_t::F322BF16;
  if (!(quant == QuantMode_t::NoQuant || toHalf || toBf16)) av4_emu::Fail("Fixpipe: quant mode not emulated");
  if ((quant == QuantMode_t::NoQuant) != (sizeof(D) == 4)) av4_emu::Fail("Fixpipe: quant mode does not match dst");
  const uint64_t s = av4_emu::Issue(av4_emu::P_FIX);
  if (nz2nd && (av4_emu::Cube().ndPara & 0xFFFF) > 1) av4_emu::Fail("Fixpipe: ndNum > 1 not emulated");
  for (uint64_t r = 0; r < mSize; ++r)
    for (uint64_t j = 0; j < nSize; ++j) {
      const float* p = src + (j / 16) * srcStride * 16 + r * 16 + j % 16;
      av4_emu::Access(p, 4, av4_emu::P_FIX, s, false, "Fixpipe L0C->GM");
      const uint64_t o = nz2nd ? r * dstStride + j : (j / 16) * dstStride * 32 / sizeof(D) + r * 16 + j % 16;
      if (toBf16) {
        const uint16_t b = av4_emu::F32ToBf16(*p, 'r');
        std::memcpy(dst + o, &b, 2);
      } else {
        av4_emu::Store(dst + o, *p);
      }
    }
}
