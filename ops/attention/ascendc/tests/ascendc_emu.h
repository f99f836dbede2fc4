// A small CPU emulator of the AscendC subset compress_kv uses ("CPU twin" without the CANN toolkit): the same API
// names and argument kinds as ops/ascendc_common/decls_attention.h, with working definitions, so the kernel runs on
// the host against the NumPy reference (tests/ops/test_attention_ascendc.py). Sparse attention and the indexer use
// the Cube unit and cross-core flags: they run only over the real headers + the intrinsic emulator.
//
// What it enforces, beyond computing: every TPipe::InitBuffer is carved from one UB arena of the platform's size
// (overflow aborts), UB buffers start 32-byte aligned, GM<->UB DataCopyPad destinations / sources in UB are 32-byte
// aligned, DataCopy moves whole 32-byte blocks, a TQue never hands out more buffers than its depth, and DeQue is FIFO.
// What it does not model: pipe timing / overlap, bank conflicts, real rounding of hardware Exp (libm here).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <vector>

#define __aicore__
#define __global__
#define __gm__
#define GM_ADDR uint8_t*
#define KERNEL_TASK_TYPE_DEFAULT(type) (void)(type)
#define KERNEL_TYPE_AIV_ONLY 1
#define REGISTER_TILING_DEFAULT(Struct) static_assert(sizeof(Struct) > 0, "tiling struct")
#define GET_TILING_DATA_WITH_STRUCT(Struct, var, tiling) \
  const Struct var = *reinterpret_cast<const Struct*>(tiling)

#define EMU_CHECK(cond, msg)                                                         \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "ascendc_emu: %s (%s:%d): %s\n", msg, __FILE__, __LINE__, #cond); \
      std::abort();                                                                  \
    }                                                                                \
  } while (0)

struct bfloat16_t {
  uint16_t bits;
};
struct half {
  uint16_t bits;
};

namespace emu {
inline float to_f(float x) { return x; }
inline float to_f(bfloat16_t h) {
  uint32_t u = static_cast<uint32_t>(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
template <typename T>
inline T from_f(float f);
template <>
inline float from_f<float>(float f) { return f; }
template <>
inline bfloat16_t from_f<bfloat16_t>(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return bfloat16_t{static_cast<uint16_t>(u >> 16)};
}
struct Arena {
  std::vector<uint8_t> ub;
  size_t used = 0;
};
inline Arena& arena() {
  static Arena a;
  return a;
}
inline int64_t& block_idx() {
  static int64_t b = 0;
  return b;
}
inline int64_t& block_num() {
  static int64_t n = 1;
  return n;
}
inline bool in_ub(const void* p) {
  const uint8_t* b = arena().ub.data();
  return p >= b && p < b + arena().ub.size();
}
inline void reset_ub(size_t bytes) {
  arena().ub.assign(bytes, 0xA5);   // garbage: kernels must not rely on zeroed UB
  arena().used = 0;
}
}  // namespace emu

namespace AscendC {

enum class TPosition { GM, VECIN, VECOUT, VECCALC, A1, A2, B1, B2, CO1, CO2 };
using QuePosition = TPosition;
enum class HardEvent { MTE2_V, V_MTE2, V_MTE3, MTE3_V, V_S, S_V, MTE2_S, S_MTE2, MTE3_S, S_MTE3, MTE3_MTE2 };
enum pipe_t { PIPE_S, PIPE_V, PIPE_MTE2, PIPE_MTE3, PIPE_ALL };
enum class RoundMode { CAST_NONE, CAST_RINT, CAST_ROUND, CAST_FLOOR, CAST_CEIL, CAST_TRUNC };
using TEventID = int8_t;

inline int64_t GetBlockIdx() { return emu::block_idx(); }
inline int64_t GetBlockNum() { return emu::block_num(); }
template <pipe_t pipe>
inline void PipeBarrier() {}
template <HardEvent e>
inline void SetFlag(TEventID) {}
template <HardEvent e>
inline void WaitFlag(TEventID) {}

template <typename T>
class GlobalTensor {
 public:
  void SetGlobalBuffer(__gm__ T* buffer, uint64_t = 0) { p_ = buffer; }
  GlobalTensor operator[](uint64_t off) const { GlobalTensor g; g.p_ = p_ + off; return g; }
  T GetValue(uint64_t i) const { return p_[i]; }
  void SetValue(uint64_t i, T v) { p_[i] = v; }
  T* ptr() const { return p_; }
 private:
  T* p_ = nullptr;
};

template <typename T>
class LocalTensor {
 public:
  LocalTensor() = default;
  explicit LocalTensor(T* p, uint32_t n) : p_(p), n_(n) {}
  LocalTensor operator[](uint32_t off) const {
    EMU_CHECK(off <= n_, "LocalTensor offset out of range");
    return LocalTensor(p_ + off, n_ - off);
  }
  T GetValue(uint32_t i) const { EMU_CHECK(i < n_, "GetValue out of range"); return p_[i]; }
  void SetValue(uint32_t i, T v) const { EMU_CHECK(i < n_, "SetValue out of range"); p_[i] = v; }
  template <typename U>
  LocalTensor<U> ReinterpretCast() const {
    return LocalTensor<U>(reinterpret_cast<U*>(p_), static_cast<uint32_t>(n_ * sizeof(T) / sizeof(U)));
  }
  uint32_t GetSize() const { return n_; }
  T* ptr() const { return p_; }
  T& at(uint32_t i) const { EMU_CHECK(i < n_, "vector op out of range"); return p_[i]; }
 private:
  T* p_ = nullptr;
  uint32_t n_ = 0;
};

struct RawBuf {
  uint8_t* p = nullptr;
  uint32_t len = 0;
};

inline RawBuf ub_alloc(uint32_t len) {
  auto& a = emu::arena();
  const size_t aligned = (a.used + 31) / 32 * 32;
  EMU_CHECK(aligned + len <= a.ub.size(), "UB overflow: InitBuffer exceeds the unified buffer");
  RawBuf b{a.ub.data() + aligned, len};
  a.used = aligned + len;
  return b;
}

template <TPosition pos, int32_t depth>
class TQue {
 public:
  void init(uint8_t num, uint32_t len) {
    for (uint8_t i = 0; i < num; ++i) bufs_.push_back(ub_alloc(len)), free_.push_back(i);
  }
  template <typename T>
  LocalTensor<T> AllocTensor() {
    EMU_CHECK(!free_.empty(), "TQue: AllocTensor with every buffer in use");
    const int i = free_.front();
    free_.erase(free_.begin());
    return LocalTensor<T>(reinterpret_cast<T*>(bufs_[i].p), bufs_[i].len / sizeof(T));
  }
  template <typename T>
  void EnQue(const LocalTensor<T>& t) { fifo_.push_back(reinterpret_cast<uint8_t*>(t.ptr())); }
  template <typename T>
  LocalTensor<T> DeQue() {
    EMU_CHECK(!fifo_.empty(), "TQue: DeQue on an empty queue");
    uint8_t* p = fifo_.front();
    fifo_.erase(fifo_.begin());
    return LocalTensor<T>(reinterpret_cast<T*>(p), find(p).len / sizeof(T));
  }
  template <typename T>
  void FreeTensor(LocalTensor<T>& t) {
    uint8_t* p = reinterpret_cast<uint8_t*>(t.ptr());
    for (size_t i = 0; i < bufs_.size(); ++i)
      if (bufs_[i].p == p) { free_.push_back(static_cast<int>(i)); return; }
    EMU_CHECK(false, "TQue: FreeTensor of a foreign tensor");
  }
 private:
  RawBuf find(uint8_t* p) {
    for (auto& b : bufs_)
      if (b.p == p) return b;
    EMU_CHECK(false, "TQue: unknown buffer");
    return {};
  }
  std::vector<RawBuf> bufs_;
  std::vector<int> free_;
  std::vector<uint8_t*> fifo_;
};

template <TPosition pos>
class TBuf {
 public:
  void init(uint32_t len) { b_ = ub_alloc(len); }
  template <typename T>
  LocalTensor<T> Get() { return LocalTensor<T>(reinterpret_cast<T*>(b_.p), b_.len / sizeof(T)); }
  template <typename T>
  LocalTensor<T> Get(uint32_t len) { EMU_CHECK(len * sizeof(T) <= b_.len, "TBuf::Get too long"); return Get<T>(); }
 private:
  RawBuf b_;
};

class TPipe;
inline TPipe*& CurrentPipe() {
  static TPipe* p = nullptr;
  return p;
}
class TPipe {
 public:
  TPipe() { CurrentPipe() = this; }
  ~TPipe() {
    if (CurrentPipe() == this) CurrentPipe() = nullptr;
  }
  TEventID FetchEventID(HardEvent) { return 0; }   // pipes are not modelled here: any ID will do
  template <TPosition pos, int32_t depth>
  void InitBuffer(TQue<pos, depth>& que, uint8_t num, uint32_t len) {
    que.init(num, len);
  }
  template <TPosition pos>
  void InitBuffer(TBuf<pos>& buf, uint32_t len) { buf.init(len); }
  void Destroy() {}
};

struct DataCopyExtParams {
  DataCopyExtParams(uint16_t count, uint32_t len, uint32_t src, uint32_t dst, uint32_t r)
      : blockCount(count), blockLen(len), srcStride(src), dstStride(dst), rsv(r) {}
  uint16_t blockCount;
  uint32_t blockLen;
  uint32_t srcStride;
  uint32_t dstStride;
  uint32_t rsv;
};
template <typename T>
struct DataCopyPadExtParams {
  DataCopyPadExtParams(bool pad, uint8_t l, uint8_t r, T v) : isPad(pad), leftPadding(l), rightPadding(r), paddingValue(v) {}
  bool isPad;
  uint8_t leftPadding, rightPadding;
  T paddingValue;
};

inline void check_ub_aligned(const void* p) {
  EMU_CHECK(emu::in_ub(p), "expected a UB address");
  EMU_CHECK((static_cast<const uint8_t*>(p) - emu::arena().ub.data()) % 32 == 0, "UB address not 32-byte aligned");
}

template <typename T>
void DataCopy(const LocalTensor<T>& dst, const GlobalTensor<T>& src, uint32_t n) {
  check_ub_aligned(dst.ptr());
  EMU_CHECK(n * sizeof(T) % 32 == 0, "DataCopy GM->UB must move whole 32-byte blocks (use DataCopyPad)");
  std::memcpy(dst.ptr(), src.ptr(), n * sizeof(T));
}
template <typename T>
void DataCopy(const GlobalTensor<T>& dst, const LocalTensor<T>& src, uint32_t n) {
  check_ub_aligned(src.ptr());
  EMU_CHECK(n * sizeof(T) % 32 == 0, "DataCopy UB->GM must move whole 32-byte blocks (use DataCopyPad)");
  std::memcpy(dst.ptr(), src.ptr(), n * sizeof(T));
}
template <typename T>
void DataCopy(const LocalTensor<T>& dst, const LocalTensor<T>& src, uint32_t n) {
  check_ub_aligned(dst.ptr());
  check_ub_aligned(src.ptr());
  EMU_CHECK(n * sizeof(T) % 32 == 0, "DataCopy UB->UB must move whole 32-byte blocks");
  EMU_CHECK(n <= dst.GetSize() && n <= src.GetSize(), "DataCopy UB->UB out of range");
  std::memmove(dst.ptr(), src.ptr(), n * sizeof(T));
}
template <typename T>
void DataCopyPad(const LocalTensor<T>& dst, const GlobalTensor<T>& src, const DataCopyExtParams& p,
                 const DataCopyPadExtParams<T>& pad) {
  check_ub_aligned(dst.ptr());
  const uint32_t rowUb = (p.blockLen + 31) / 32 * 32 + p.dstStride * 32;
  uint8_t* d = reinterpret_cast<uint8_t*>(dst.ptr());
  const uint8_t* s = reinterpret_cast<const uint8_t*>(src.ptr());
  EMU_CHECK(p.blockCount == 0 || static_cast<size_t>(p.blockCount - 1) * rowUb + (p.blockLen + 31) / 32 * 32 <=
                                      dst.GetSize() * sizeof(T),
            "DataCopyPad GM->UB overruns the destination tensor");
  for (uint32_t i = 0; i < p.blockCount; ++i) {
    std::memcpy(d + static_cast<size_t>(i) * rowUb, s + static_cast<size_t>(i) * (p.blockLen + p.srcStride), p.blockLen);
    if (pad.isPad)
      for (uint32_t b = p.blockLen; b < (p.blockLen + 31) / 32 * 32; b += sizeof(T))
        std::memcpy(d + static_cast<size_t>(i) * rowUb + b, &pad.paddingValue, sizeof(T));
  }
}
template <typename T>
void DataCopyPad(const GlobalTensor<T>& dst, const LocalTensor<T>& src, const DataCopyExtParams& p) {
  check_ub_aligned(src.ptr());
  const uint32_t rowUb = (p.blockLen + 31) / 32 * 32 + p.srcStride * 32;
  const uint8_t* s = reinterpret_cast<const uint8_t*>(src.ptr());
  uint8_t* d = reinterpret_cast<uint8_t*>(dst.ptr());
  for (uint32_t i = 0; i < p.blockCount; ++i)
    std::memcpy(d + static_cast<size_t>(i) * (p.blockLen + p.dstStride), s + static_cast<size_t>(i) * rowUb, p.blockLen);
}

#define EMU_BIN(Name, expr)                                                                        \
  template <typename T>                                                                            \
  void Name(const LocalTensor<T>& d, const LocalTensor<T>& a, const LocalTensor<T>& b, int32_t n) { \
    for (int32_t i = 0; i < n; ++i) {                                                              \
      const T x = a.at(i), y = b.at(i);                                                            \
      d.at(i) = (expr);                                                                            \
    }                                                                                              \
  }
EMU_BIN(Add, x + y)
EMU_BIN(Sub, x - y)
EMU_BIN(Mul, x * y)
EMU_BIN(Div, x / y)
EMU_BIN(Max, x > y ? x : y)
#undef EMU_BIN
template <typename T> void Muls(const LocalTensor<T>& d, const LocalTensor<T>& a, const T& s, int32_t n) { for (int32_t i = 0; i < n; ++i) d.at(i) = a.at(i) * s; }
template <typename T> void Exp(const LocalTensor<T>& d, const LocalTensor<T>& a, int32_t n) { for (int32_t i = 0; i < n; ++i) d.at(i) = std::exp(a.at(i)); }
template <typename T> void Sqrt(const LocalTensor<T>& d, const LocalTensor<T>& a, int32_t n) { for (int32_t i = 0; i < n; ++i) d.at(i) = std::sqrt(a.at(i)); }
template <typename T> void Duplicate(const LocalTensor<T>& d, const T& s, int32_t n) { for (int32_t i = 0; i < n; ++i) d.at(i) = s; }
template <typename T, typename U>
void Cast(const LocalTensor<T>& d, const LocalTensor<U>& a, RoundMode, uint32_t n) {
  for (uint32_t i = 0; i < n; ++i) d.at(i) = emu::from_f<T>(emu::to_f(a.at(i)));
}
template <typename T>
void ReduceSum(const LocalTensor<T>& d, const LocalTensor<T>& a, const LocalTensor<T>& work, int32_t n) {
  check_ub_aligned(d.ptr());
  (void)work;
  double s = 0;
  for (int32_t i = 0; i < n; ++i) s += a.at(i);
  d.at(0) = static_cast<T>(s);
}
template <typename T>
void ArithProgression(const LocalTensor<T>& d, T first, T diff, int32_t n) { for (int32_t i = 0; i < n; ++i) d.at(i) = first + diff * i; }

}  // namespace AscendC

inline AscendC::TPipe* GetTPipePtr() {   // global in kernel_common.h
  EMU_CHECK(AscendC::CurrentPipe() != nullptr, "GetTPipePtr without a live TPipe");
  return AscendC::CurrentPipe();
}
