// The hc-stream layout the AIV kernels of the mHC and Engram families move and compute on: a token's hc rows of D
// elements, D apart in GM ([T, hc, D]), taken dChunk elements of D at a time (dLen <= dChunk: the last chunk may be
// shorter), the rows dChunk apart in UB (dChunk * sizeof(T) a multiple of 32 bytes). Kernels compute in float32, so
// bfloat16 rows are cast on the way in and rounded (nearest even) on the way out; float32 rows are used in place.
// Queue hand-overs (AllocTensor / EnQue / DeQue / FreeTensor) stay in the kernels. Shared by the kernels of every
// family: av4_opp_kernels (ops/ascendc_common/cmake/av4_opp.cmake) stages this directory next to each op_kernel/.
#pragma once
#include "kernel_operator.h"

namespace av4_common {

constexpr int64_t kUbBlockBytes = 32;   // UB addresses and DataCopy blocks

// GM -> UB: `rows` rows of dLen elements from gm[offset], D apart in GM, land dChunk apart in UB.
template <typename T>
__aicore__ inline void CopyInRows(const AscendC::LocalTensor<T>& dst, const AscendC::GlobalTensor<T>& gm,
                                  int64_t offset, int32_t rows, int64_t D, int32_t dChunk, int32_t dLen) {
  const AscendC::DataCopyExtParams p(static_cast<uint16_t>(rows), static_cast<uint32_t>(dLen * sizeof(T)),
                                     static_cast<uint32_t>((D - dLen) * sizeof(T)),
                                     static_cast<uint32_t>((dChunk - dLen) * sizeof(T) / kUbBlockBytes), 0);
  AscendC::DataCopyPad(dst, gm[offset], p, AscendC::DataCopyPadExtParams<T>(false, 0, 0, 0));
}

// UB -> GM, the reverse: `rows` rows of dLen elements, dChunk apart in UB, to gm[offset] D apart.
template <typename T>
__aicore__ inline void CopyOutRows(const AscendC::GlobalTensor<T>& gm, int64_t offset,
                                   const AscendC::LocalTensor<T>& src, int32_t rows, int64_t D, int32_t dChunk,
                                   int32_t dLen) {
  const AscendC::DataCopyExtParams p(static_cast<uint16_t>(rows), static_cast<uint32_t>(dLen * sizeof(T)),
                                     static_cast<uint32_t>((dChunk - dLen) * sizeof(T) / kUbBlockBytes),
                                     static_cast<uint32_t>((D - dLen) * sizeof(T)), 0);
  AscendC::DataCopyPad(gm[offset], src, p);
}

// float32 views of two dequeued operands a (aCount elements) and b (bCount): the operands themselves when T is
// float32; otherwise both cast (exactly) into the scratch buffer, a at 0 and b at bAt, then one vector barrier.
// The scratch buffer is only touched when a cast is needed (a float32 kernel may leave it unallocated).
template <typename T, typename ScratchBuf>
__aicore__ inline void FloatViews(const AscendC::LocalTensor<T>& a, uint32_t aCount, const AscendC::LocalTensor<T>& b,
                                  uint32_t bCount, ScratchBuf& scratch, uint32_t bAt, AscendC::LocalTensor<float>* af,
                                  AscendC::LocalTensor<float>* bf) {
  if constexpr (sizeof(T) == sizeof(float)) {
    *af = a.template ReinterpretCast<float>();
    *bf = b.template ReinterpretCast<float>();
  } else {
    AscendC::LocalTensor<float> cast = scratch.template Get<float>();
    *af = cast;
    *bf = cast[bAt];
    AscendC::Cast(*af, a, AscendC::RoundMode::CAST_NONE, aCount);
    AscendC::Cast(*bf, b, AscendC::RoundMode::CAST_NONE, bCount);
    AscendC::PipeBarrier<PIPE_V>();
  }
}

// Where output row `at` (an element offset into out) is computed in float32: the row itself when T is float32,
// else the float32 row `spare` (StoreRow then rounds it into the row).
template <typename T>
__aicore__ inline AscendC::LocalTensor<float> AccRow(const AscendC::LocalTensor<T>& out, uint32_t at,
                                                     const AscendC::LocalTensor<float>& spare) {
  if constexpr (sizeof(T) == sizeof(float)) {
    return out.template ReinterpretCast<float>()[at];
  } else {
    return spare;
  }
}

// Completes output row `at` computed in acc = AccRow(out, at, spare): nothing for float32; otherwise rounds the dLen
// values into the row (nearest even) and waits for the vector unit, since the next row reuses spare.
template <typename T>
__aicore__ inline void StoreRow(const AscendC::LocalTensor<T>& out, uint32_t at, const AscendC::LocalTensor<float>& acc,
                                int32_t dLen) {
  if constexpr (sizeof(T) != sizeof(float)) {
    AscendC::Cast(out[at], acc, AscendC::RoundMode::CAST_RINT, static_cast<uint32_t>(dLen));
    AscendC::PipeBarrier<PIPE_V>();
  }
}

}  // namespace av4_common
