// AscendC declarations shared by every op family (stand-in for g++ -fsyntax-only; see README.md).
// Signatures follow hicann/asc-devkit include/basic_api: kernel_tensor.h, kernel_tpipe.h,
// kernel_struct_data_copy.h, kernel_operator_data_copy_intf.h, kernel_operator_vec_binary_intf.h,
// kernel_operator_vec_binary_scalar_intf.h, kernel_operator_vec_duplicate_intf.h, kernel_operator_vec_vconv_intf.h,
// kernel_operator_sys_var_intf.h and the sync APIs (PipeBarrier, SetFlag/WaitFlag). Declarations only: a kernel
// that passes this check still has to be built with the CANN toolchain and run on an NPU.
#pragma once
#include <cstdint>

// ---------------------------------------------------------------- compiler keywords of the AscendC dialect
#define __aicore__
#define __global__
#define __gm__
#define __ubuf__
#define GM_ADDR __gm__ uint8_t*

// Kernel-entry macros (kernel_operator.h / tiling): the real ones expand to builtins.
#define KERNEL_TYPE_AIV_ONLY 0
#define KERNEL_TASK_TYPE_DEFAULT(type) static_assert((type) >= 0, "kernel type")
#define REGISTER_TILING_DEFAULT(Struct) static_assert(sizeof(Struct) > 0, "tiling struct")
#define GET_TILING_DATA_WITH_STRUCT(Struct, var, tiling) const Struct var = *reinterpret_cast<const Struct*>(tiling)
#define TILING_KEY_IS(key) (static_cast<uint64_t>(key) == 0U)

// 16-bit float types are compiler builtins in the AscendC dialect; here just 2-byte values.
struct half {
  constexpr half(int = 0) : bits(0) {}
  uint16_t bits;
};
struct bfloat16_t {
  constexpr bfloat16_t(int = 0) : bits(0) {}
  uint16_t bits;
};

enum pipe_t { PIPE_S, PIPE_V, PIPE_M, PIPE_MTE1, PIPE_MTE2, PIPE_MTE3, PIPE_FIX, PIPE_ALL };

namespace AscendC {

enum class TPosition { GM, A1, A2, B1, B2, C1, C2, CO1, CO2, VECIN, VECOUT, VECCALC, LCM = VECCALC, MAX };
using QuePosition = TPosition;

enum class HardEvent { MTE2_MTE1, MTE1_MTE2, MTE1_M, M_MTE1, MTE2_V, V_MTE2, MTE3_V, V_MTE3, M_V, V_M, V_V,
                       MTE3_MTE1, MTE1_MTE3, MTE1_V, MTE2_M, M_MTE2, V_MTE1, M_FIX, FIX_M, MTE3_MTE2, MTE2_MTE3,
                       S_V, V_S, S_MTE2, MTE2_S, S_MTE3, MTE3_S, MTE2_FIX, FIX_MTE2, FIX_S, M_S, FIX_MTE3, MAX };
using TEventID = int8_t;

enum class RoundMode { CAST_NONE = 0, CAST_RINT, CAST_FLOOR, CAST_CEIL, CAST_ROUND, CAST_TRUNC, CAST_ODD };

// ------------------------------------------------------------------------------------------------ tensors
template <typename T>
class LocalTensor {
 public:
  using PrimType = T;
  __aicore__ LocalTensor() {}
  __aicore__ PrimType GetValue(const uint32_t index) const;
  template <typename S>
  __aicore__ void SetValue(const uint32_t index, const S value) const;
  __aicore__ LocalTensor operator[](const uint32_t offset) const;
  template <typename U>
  __aicore__ LocalTensor<U> ReinterpretCast() const;
  __aicore__ uint32_t GetSize() const;
};

template <typename T>
class GlobalTensor {
 public:
  using PrimType = T;
  __aicore__ GlobalTensor() {}
  __aicore__ void SetGlobalBuffer(__gm__ PrimType* buffer, uint64_t bufferSize);
  __aicore__ void SetGlobalBuffer(__gm__ PrimType* buffer);
  __aicore__ PrimType GetValue(const uint64_t offset) const;
  __aicore__ void SetValue(const uint64_t offset, PrimType value);
  __aicore__ GlobalTensor operator[](const uint64_t offset) const;
};

// ------------------------------------------------------------------------------------------ queues, pipe
template <TPosition src, TPosition dst, int32_t depth, auto mask = 0>
class TQueBind {
 public:
  __aicore__ TQueBind() = default;
  template <typename T>
  __aicore__ LocalTensor<T> AllocTensor();
  template <typename T>
  __aicore__ void FreeTensor(LocalTensor<T>& tensor);
  template <typename T>
  __aicore__ bool EnQue(const LocalTensor<T>& tensor);
  template <typename T>
  __aicore__ LocalTensor<T> DeQue();
};
template <TPosition pos, int32_t depth, auto mask = 0>
class TQue : public TQueBind<pos, pos, depth, mask> {
 public:
  __aicore__ TQue() = default;
};

template <TPosition pos = TPosition::LCM>
class TBuf {
 public:
  __aicore__ TBuf() = default;
  template <typename T>
  __aicore__ LocalTensor<T> Get();
  template <typename T>
  __aicore__ LocalTensor<T> Get(uint32_t len);
};

class TPipe {
 public:
  __aicore__ TPipe() {}
  template <class T>
  __aicore__ bool InitBuffer(T& que, uint8_t num, uint32_t len);
  template <TPosition pos>
  __aicore__ bool InitBuffer(TBuf<pos>& buf, uint32_t len);
  template <HardEvent evt>
  __aicore__ TEventID AllocEventID();
  template <HardEvent evt>
  __aicore__ void ReleaseEventID(TEventID id);
  template <HardEvent evt>
  __aicore__ TEventID FetchEventID();
  __aicore__ TEventID FetchEventID(HardEvent evt);
};

// ------------------------------------------------------------------------------------------ data movement
struct DataCopyExtParams {  // blockLen and GM-side strides in bytes, UB-side strides in 32-byte blocks
  __aicore__ DataCopyExtParams() {}
  __aicore__ DataCopyExtParams(const uint16_t count, const uint32_t len, const uint32_t srcStrideIn,
                               const uint32_t dstStrideIn, const uint32_t rsvIn)
      : blockCount(count), blockLen(len), srcStride(srcStrideIn), dstStride(dstStrideIn), rsv(rsvIn) {}
  uint16_t blockCount = 1;
  uint32_t blockLen = 0;
  uint32_t srcStride = 0;
  uint32_t dstStride = 0;
  uint32_t rsv = 0;
};

template <typename T>
struct DataCopyPadExtParams {
  __aicore__ DataCopyPadExtParams() {}
  __aicore__ DataCopyPadExtParams(const bool isPadValue, const uint8_t leftPadValue, const uint8_t rightPadValue,
                                  T padValue)
      : isPad(isPadValue), leftPadding(leftPadValue), rightPadding(rightPadValue), paddingValue(padValue) {}
  bool isPad = false;
  uint8_t leftPadding = 0;
  uint8_t rightPadding = 0;
  T paddingValue = 0;
};

struct DataCopyParams {  // blockLen and strides in 32-byte blocks
  __aicore__ DataCopyParams() {}
  __aicore__ DataCopyParams(const uint16_t count, const uint16_t len, const uint16_t srcStrideIn,
                            const uint16_t dstStrideIn)
      : blockCount(count), blockLen(len), srcStride(srcStrideIn), dstStride(dstStrideIn) {}
  uint16_t blockCount = 1;
  uint16_t blockLen = 0;
  uint16_t srcStride = 0;
  uint16_t dstStride = 0;
};
template <typename T>
__aicore__ void DataCopy(const GlobalTensor<T>& dst, const LocalTensor<T>& src, const DataCopyParams& params);
template <typename T>
__aicore__ void DataCopy(const LocalTensor<T>& dst, const GlobalTensor<T>& src, const uint32_t count);
template <typename T>
__aicore__ void DataCopy(const GlobalTensor<T>& dst, const LocalTensor<T>& src, const uint32_t count);
template <typename T>
__aicore__ void DataCopyPad(const LocalTensor<T>& dst, const GlobalTensor<T>& src,
                                   const DataCopyExtParams& dataCopyParams, const DataCopyPadExtParams<T>& padParams);
template <typename T>
__aicore__ void DataCopyPad(const GlobalTensor<T>& dst, const LocalTensor<T>& src,
                                   const DataCopyExtParams& dataCopyParams);

// ----------------------------------------------------------------------------------------------- sync
template <pipe_t pipe>
__aicore__ void PipeBarrier();
template <HardEvent event>
__aicore__ void SetFlag(int32_t eventID);
template <HardEvent event>
__aicore__ void WaitFlag(int32_t eventID);

__aicore__ int64_t GetBlockNum();
__aicore__ int64_t GetBlockIdx();

// ------------------------------------------------------------------ elementwise (level-2 "count" forms)
// dst = src0 (op) src1 and dst = src (op) scalar, each op with the public headers' one signature of its kind
#define AV4_DECLARE_BINARY(Op)                                                                                \
  template <typename T>                                                                                       \
  __aicore__ void Op(const LocalTensor<T>& dst, const LocalTensor<T>& src0, const LocalTensor<T>& src1,       \
                     const int32_t& count)
#define AV4_DECLARE_SCALAR(Op)                                                                                \
  template <typename T, bool isSetMask = true>                                                                \
  __aicore__ void Op(const LocalTensor<T>& dst, const LocalTensor<T>& src, const T& scalarValue,              \
                     const int32_t& count)
AV4_DECLARE_BINARY(Add);
AV4_DECLARE_BINARY(Sub);
AV4_DECLARE_BINARY(Mul);
AV4_DECLARE_BINARY(Div);
AV4_DECLARE_BINARY(Max);
AV4_DECLARE_SCALAR(Adds);
AV4_DECLARE_SCALAR(Muls);
template <typename T>
__aicore__ void Duplicate(const LocalTensor<T>& dst, const T& scalarValue, const int32_t& count);
template <typename T, typename U>
__aicore__ void Cast(const LocalTensor<T>& dst, const LocalTensor<U>& src, const RoundMode& roundMode,
                            const uint32_t count);

// kernel_struct_gather.h / kernel_operator_vec_gather_mask_intf.h (built-in pattern form; MoE gating, indexer)
struct GatherMaskParams {
  __aicore__ GatherMaskParams() {}
  __aicore__ GatherMaskParams(const uint8_t src0BlockStrideIn, const uint16_t repeatTimesIn,
                              const uint16_t src0RepeatStrideIn, const uint8_t src1RepeatStrideIn);
  uint8_t src0BlockStride = 1;
  uint16_t repeatTimes = 0;
  uint16_t src0RepeatStride = 8;
  uint8_t src1RepeatStride = 8;
};
template <typename T>
__aicore__ void GatherMask(const LocalTensor<T>& dst, const LocalTensor<T>& src0, const uint8_t src1Pattern,
                           const bool reduceMode, const uint32_t mask, const GatherMaskParams& gatherMaskParams,
                           uint64_t& rsvdCnt);

}  // namespace AscendC

__aicore__ AscendC::TPipe* GetTPipePtr();   // kernel_common.h: global, not in AscendC
