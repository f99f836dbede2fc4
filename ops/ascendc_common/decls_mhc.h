// AscendC APIs used only by the mHC kernels (ops/mhc/ascendc/op_kernel). Signatures as declared in
// hicann/asc-devkit include/basic_api/kernel_operator_vec_reduce_intf.h (WholeReduceSum, mask-count form),
// kernel_operator_vec_ternary_scalar_intf.h (Axpy) and kernel_operator_vec_unary_intf.h (Exp, Reciprocal, Sqrt).
#pragma once
#include "decls_core.h"

namespace AscendC {

// dst[r * dstRepStride] = sum of the first `mask` elements of repeat r (repeat r starts at src + r * srcRepStride
// 32-byte blocks); repeatTime <= 255.
template <typename T, bool isSetMask = true>
__aicore__ void WholeReduceSum(const LocalTensor<T>& dst, const LocalTensor<T>& src, const int32_t mask,
                                      const int32_t repeatTime, const int32_t dstRepStride,
                                      const int32_t srcBlkStride, const int32_t srcRepStride);

// dst += src * scalarValue
template <typename T, typename U>
__aicore__ void Axpy(const LocalTensor<T>& dst, const LocalTensor<U>& src, const U& scalarValue,
                            const int32_t& count);

template <typename T>
__aicore__ void Exp(const LocalTensor<T>& dst, const LocalTensor<T>& src, const int32_t& count);
template <typename T>
__aicore__ void Reciprocal(const LocalTensor<T>& dst, const LocalTensor<T>& src, const int32_t& count);
template <typename T>
__aicore__ void Sqrt(const LocalTensor<T>& dst, const LocalTensor<T>& src, const int32_t& count);

}  // namespace AscendC
