// Parameters and tile moves of the basic Cube data path every Cube kernel of the project runs (docs/ascendc.md,
// "Cube unit"):
//   GM -ND2NZ-> L1 (MTE2) -LoadData-> L0A / L0B (MTE1) -Mmad-> L0C (M, float32) -Fixpipe NZ2ND-> GM (FIX)
// Parameter fills, the loops over fractals and the event IDs of the usual ping-pong pipeline live here; every hand-over
// between two steps (SetFlag / WaitFlag) stays in the kernels, next to the moves it orders. Formats: a fractal is 16
// rows x C0 elements (C0 = 32 bytes / element, 512 bytes). L1 holds NZ: C0-wide columns of rowsPad rows, so fractal
// (r1, c1) of a matrix is number c1 * rowsPad / 16 + r1. L0A wants "Zz" (fractals row-major over (m1, k1)), L0B "Zn"
// (row-major over (k1, n1), each the 16 x C0 block of B transposed).
// Shared by the kernels of every family: av4_opp_kernels (ops/ascendc_common/cmake/av4_opp.cmake) stages this directory
// next to each family's op_kernel/.
#pragma once
#include "kernel_operator.h"

namespace av4_common {

template <typename T>
constexpr uint32_t kC0 = 32 / sizeof(T);          // elements of a fractal row
template <typename T>
constexpr uint32_t kFractal = 16 * kC0<T>;        // elements of a fractal

// one ND matrix of rows x cols (row stride srcCols elements) -> L1 NZ with rowsPad rows per C0 column
__aicore__ inline AscendC::Nd2NzParams NdToNz(uint32_t rows, uint32_t cols, uint32_t srcCols, uint32_t rowsPad) {
  AscendC::Nd2NzParams p;
  p.ndNum = 1;
  p.nValue = static_cast<uint16_t>(rows);
  p.dValue = static_cast<uint16_t>(cols);
  p.srcNdMatrixStride = 0;
  p.srcDValue = static_cast<uint16_t>(srcCols);
  p.dstNzC0Stride = static_cast<uint16_t>(rowsPad);
  p.dstNzNStride = 1;
  p.dstNzMatrixStride = 0;
  return p;
}

// a 2D load of `repeat` fractals: source fractal start + r * srcStride -> destination fractal r
__aicore__ inline AscendC::LoadData2DParams Load2D(uint32_t start, uint32_t repeat, uint32_t srcStride,
                                                   bool transpose = false) {
  return AscendC::LoadData2DParams(static_cast<uint16_t>(start), static_cast<uint8_t>(repeat),
                                   static_cast<uint16_t>(srcStride), 0, 0, transpose, 0);
}

// A (m rows x k) in L1 NZ with mBlocks row blocks -> L0A Zz: per row block its k fractals kStart .. kStart+kBlocks-1
// (mBlocks apart in L1)
template <typename T>
__aicore__ inline void LoadL0A(const AscendC::LocalTensor<T>& l0a, const AscendC::LocalTensor<T>& l1, uint32_t mBlocks,
                               uint32_t kStart, uint32_t kBlocks) {
  for (uint32_t m = 0; m < mBlocks; ++m)
    AscendC::LoadData(l0a[m * kBlocks * kFractal<T>], l1, Load2D(kStart * mBlocks + m, kBlocks, mBlocks));
}

// B given as n rows of k (B^T, e.g. key rows) in L1 NZ with nBlocks row blocks: its fractals already are L0B's Zn
// blocks, consecutive in (k1, n1) order; k fractals kStart .. kStart+kBlocks-1, one load per k fractal
template <typename T>
__aicore__ inline void LoadL0BFromRows(const AscendC::LocalTensor<T>& l0b, const AscendC::LocalTensor<T>& l1,
                                       uint32_t nBlocks, uint32_t kStart, uint32_t kBlocks) {
  for (uint32_t k = 0; k < kBlocks; ++k)
    AscendC::LoadData(l0b[k * nBlocks * kFractal<T>], l1, Load2D((kStart + k) * nBlocks, nBlocks, 1));
}

// B given as k rows of n (e.g. V, a [K, N] weight) in L1 NZ with kBlocks row blocks (16-bit types: 16 x 16
// fractals): each fractal transposed into Zn; n fractals nStart .. nStart+nBlocks-1
template <typename T>
__aicore__ inline void LoadL0BTransposed(const AscendC::LocalTensor<T>& l0b, const AscendC::LocalTensor<T>& l1,
                                         uint32_t kBlocks, uint32_t nStart, uint32_t nBlocks) {
  for (uint32_t k = 0; k < kBlocks; ++k)
    AscendC::LoadData(l0b[k * nBlocks * kFractal<T>], l1, Load2D(nStart * kBlocks + k, nBlocks, kBlocks, true));
}

// Mmad of an m x k A by a k x n B into L0C (float32): overwrite = C = A·B (the first K step), else C += A·B
__aicore__ inline AscendC::MmadParams MmadShape(uint32_t m, uint32_t n, uint32_t k, bool overwrite) {
  return AscendC::MmadParams(static_cast<uint16_t>(m), static_cast<uint16_t>(n), static_cast<uint16_t>(k), 0, false,
                             overwrite);
}

// L0C (float32 NZ, srcStride rows per column of fractals) -> ND rows dstStride elements apart of T: no conversion
// for float, round to nearest even for bfloat16_t / half
template <typename T>
__aicore__ inline AscendC::FixpipeParamsV220 FixpipeToNd(uint32_t nSize, uint32_t mSize, uint32_t srcStride,
                                                         uint32_t dstStride) {
  AscendC::FixpipeParamsV220 p(static_cast<uint16_t>(nSize), static_cast<uint16_t>(mSize),
                               static_cast<uint16_t>(srcStride), dstStride, false);
  if constexpr (sizeof(T) == 4) p.quantPre = QuantMode_t::NoQuant;
  else if constexpr (AscendC::IsSameType<T, bfloat16_t>::value) p.quantPre = QuantMode_t::F322BF16;
  else p.quantPre = QuantMode_t::F322F16;
  return p;
}

// The event IDs of a Cube pipeline with ping-pong L1 and L0A / L0B buffers and one L0C tile: per buffer b
// l1Free (MTE1 -> MTE2: its L0 loads have read L1 buffer b), l1Ready (MTE2 -> MTE1), l0Free (M -> MTE1: the Mmad
// has read L0 buffer b), l0Ready (MTE1 -> M); cReady (M -> FIX), cFree (FIX -> M). Start() marks every buffer free
// before the first step, Drain() takes those flags back after the last, so the flag counts balance.
struct CubeEvents {
  __aicore__ inline void Alloc(AscendC::TPipe* pipe) {
    for (int i = 0; i < 2; ++i) {
      l1Free[i] = pipe->AllocEventID<AscendC::HardEvent::MTE1_MTE2>();
      l1Ready[i] = pipe->AllocEventID<AscendC::HardEvent::MTE2_MTE1>();
      l0Free[i] = pipe->AllocEventID<AscendC::HardEvent::M_MTE1>();
      l0Ready[i] = pipe->AllocEventID<AscendC::HardEvent::MTE1_M>();
    }
    cReady = pipe->AllocEventID<AscendC::HardEvent::M_FIX>();
    cFree = pipe->AllocEventID<AscendC::HardEvent::FIX_M>();
  }
  __aicore__ inline void Start() const {
    for (int i = 0; i < 2; ++i) {
      AscendC::SetFlag<AscendC::HardEvent::MTE1_MTE2>(l1Free[i]);
      AscendC::SetFlag<AscendC::HardEvent::M_MTE1>(l0Free[i]);
    }
    AscendC::SetFlag<AscendC::HardEvent::FIX_M>(cFree);
  }
  __aicore__ inline void Drain() const {
    for (int i = 0; i < 2; ++i) {
      AscendC::WaitFlag<AscendC::HardEvent::MTE1_MTE2>(l1Free[i]);
      AscendC::WaitFlag<AscendC::HardEvent::M_MTE1>(l0Free[i]);
    }
    AscendC::WaitFlag<AscendC::HardEvent::FIX_M>(cFree);
  }
  AscendC::TEventID l1Free[2], l1Ready[2], l0Free[2], l0Ready[2], cReady, cFree;
};

}  // namespace av4_common
