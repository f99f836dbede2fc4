// AscendC APIs used only by the Engram kernels (ops/engram/ascendc/op_kernel). Signatures as declared in
// hicann/asc-devkit include/basic_api/kernel_operator_vec_binary_intf.h (Mul, level-0 form with a continuous mask),
// kernel_struct_binary.h (BinaryRepeatParams), kernel_operator_vec_brcb_intf.h (Brcb) and kernel_struct_brcb.h
// (BrcbRepeatParams).
#pragma once
#include "decls_core.h"

namespace AscendC {

struct BinaryRepeatParams {
  __aicore__ BinaryRepeatParams() {}
  __aicore__ BinaryRepeatParams(const uint8_t dstBlkStrideIn, const uint8_t src0BlkStrideIn,
                                const uint8_t src1BlkStrideIn, const uint8_t dstRepStrideIn,
                                const uint8_t src0RepStrideIn, const uint8_t src1RepStrideIn);
  uint32_t blockNumber = 8;
  uint8_t dstBlkStride = 1;
  uint8_t src0BlkStride = 1;
  uint8_t src1BlkStride = 1;
  uint8_t dstRepStride = 8;
  uint8_t src0RepStride = 8;
  uint8_t src1RepStride = 8;
};

struct BrcbRepeatParams {
  __aicore__ BrcbRepeatParams() {}
  __aicore__ BrcbRepeatParams(const uint16_t dstBlkStrideIn, const uint16_t dstRepStrideIn);
  uint16_t dstRepStride = 8;
  uint16_t dstBlkStride = 1;
};

// level-0 form: the first `mask` elements of each of repeatTime repeats, strides in 32-byte blocks
template <typename T, bool isSetMask = true>
__aicore__ void Mul(const LocalTensor<T>& dst, const LocalTensor<T>& src0, const LocalTensor<T>& src1, uint64_t mask,
                    const uint8_t repeatTime, const BinaryRepeatParams& repeatParams);

// per repeat: 8 elements of src, each filling one 32-byte block of dst
template <typename T>
__aicore__ void Brcb(const LocalTensor<T>& dst, const LocalTensor<T>& src, const uint8_t repeatTime,
                     const BrcbRepeatParams& repeatParams);

}  // namespace AscendC
