// Kernel entry of EngramDequantAv4: the device-side decode of Engram rows the host ships in their stored INT8 form
// (ops/engram/reference.py engram_dequant; what `convert` writes: INT8 rows with one float32 scale per g values):
//   rows int8 [N, L], scales float32 [N, L / g] -> y [N, L] in DTYPE_Y (attribute dst_type: 0 float32, 1 bf16).
// AIV only. The rows are one flat run of groups; each core takes a range of 8-group blocks (EngramRange), chunk by
// chunk: int8 -> half -> float32 (two Casts, exact), the chunk's scales each broadcast to a 32-byte block (Brcb),
// then one level-0 Mul per <= kMulRepeats groups with a mask of g lanes, one repeat per group, the scale operand's
// block stride 0 (every block of a repeat reads the group's broadcast block), and a bf16 Cast (nearest even) when
// asked. Double-buffered in and out queues; one contiguous DataCopyPad per operand and chunk.
#include "kernel_operator.h"
#include "engram_tiling_data.h"

namespace engram_av4 {
using namespace AscendC;

template <typename Y>
class EngramDequantKernel {
 public:
  __aicore__ inline EngramDequantKernel() {}

  __aicore__ inline void Init(GM_ADDR rows, GM_ADDR scales, GM_ADDR y, const EngramDequantTilingData* td,
                              TPipe* pipe) {
    td_ = td;
    int64_t b0 = 0, nb = 0;
    EngramRange(GetBlockIdx(), td->frontCores, td->baseBlocks, &b0, &nb);
    g0_ = b0 * kBrcbGroups;
    gEnd_ = (b0 + nb) * kBrcbGroups < td->groups ? (b0 + nb) * kBrcbGroups : td->groups;
    rowsGm_.SetGlobalBuffer((__gm__ int8_t*)rows, td->N * td->L);
    scGm_.SetGlobalBuffer((__gm__ float*)scales, td->groups);
    yGm_.SetGlobalBuffer((__gm__ Y*)y, td->N * td->L);
    pipe->InitBuffer(rowQue_, 2, td->rowInBytes);
    pipe->InitBuffer(scQue_, 2, td->scaleInBytes);
    pipe->InitBuffer(halfBuf_, td->halfBytes);
    pipe->InitBuffer(floatBuf_, td->floatBytes);
    pipe->InitBuffer(brcbBuf_, td->brcbBytes);
    pipe->InitBuffer(outQue_, 2, td->outBytes);
  }

  __aicore__ inline void Process() {
    if (GetBlockIdx() >= td_->usedCores) return;
    for (int64_t c0 = g0_; c0 < gEnd_; c0 += td_->chunkGroups) {
      const int32_t n = static_cast<int32_t>(gEnd_ - c0 < td_->chunkGroups ? gEnd_ - c0 : td_->chunkGroups);
      CopyIn(c0, n);
      Compute(n);
      CopyOut(c0, n);
    }
  }

 private:
  __aicore__ inline void CopyIn(int64_t c0, int32_t n) {
    const int32_t g = td_->g;
    LocalTensor<int8_t> r = rowQue_.template AllocTensor<int8_t>();
    DataCopyPad(r, rowsGm_[c0 * g], DataCopyExtParams(1, static_cast<uint32_t>(n * g), 0, 0, 0),
                DataCopyPadExtParams<int8_t>(false, 0, 0, 0));
    rowQue_.EnQue(r);
    LocalTensor<float> s = scQue_.template AllocTensor<float>();
    DataCopyPad(s, scGm_[c0], DataCopyExtParams(1, static_cast<uint32_t>(n * 4), 0, 0, 0),
                DataCopyPadExtParams<float>(false, 0, 0, 0.0f));
    scQue_.EnQue(s);
  }

  __aicore__ inline void Compute(int32_t n) {
    const int32_t g = td_->g;
    const uint32_t count = static_cast<uint32_t>(n * g);
    LocalTensor<int8_t> r = rowQue_.template DeQue<int8_t>();
    LocalTensor<float> s = scQue_.template DeQue<float>();
    LocalTensor<half> hv = halfBuf_.Get<half>();
    LocalTensor<float> f = floatBuf_.Get<float>(), b = brcbBuf_.Get<float>();
    Cast(hv, r, RoundMode::CAST_NONE, count);               // int8 -> half: exact
    Brcb(b, s, static_cast<uint8_t>((n + kBrcbGroups - 1) / kBrcbGroups), BrcbRepeatParams(1, 8));
    PipeBarrier<PIPE_V>();
    Cast(f, hv, RoundMode::CAST_NONE, count);               // half -> float32: exact
    PipeBarrier<PIPE_V>();
    LocalTensor<Y> o = outQue_.template AllocTensor<Y>();
    LocalTensor<float> prod;
    if constexpr (sizeof(Y) == sizeof(float)) {
      prod = o.template ReinterpretCast<float>();
    } else {
      prod = f;
    }
    const uint8_t stride = static_cast<uint8_t>(g / 8);   // blocks per group
    for (int32_t j0 = 0; j0 < n; j0 += kMulRepeats) {
      const int32_t rep = n - j0 < kMulRepeats ? n - j0 : kMulRepeats;
      // repeat j: g lanes of group j times its broadcast block (src1 block stride 0, one block per repeat)
      Mul(prod[j0 * g], f[j0 * g], b[j0 * 8], static_cast<uint64_t>(g), static_cast<uint8_t>(rep),
          BinaryRepeatParams(1, 1, 0, stride, stride, 1));
    }
    if constexpr (sizeof(Y) != sizeof(float)) {
      PipeBarrier<PIPE_V>();
      Cast(o, f, RoundMode::CAST_RINT, count);
    }
    outQue_.EnQue(o);
    rowQue_.FreeTensor(r);
    scQue_.FreeTensor(s);
  }

  __aicore__ inline void CopyOut(int64_t c0, int32_t n) {
    LocalTensor<Y> o = outQue_.template DeQue<Y>();
    DataCopyPad(yGm_[c0 * td_->g], o, DataCopyExtParams(1, static_cast<uint32_t>(n * td_->g * sizeof(Y)), 0, 0, 0));
    outQue_.FreeTensor(o);
  }

  const EngramDequantTilingData* td_ = nullptr;
  int64_t g0_ = 0, gEnd_ = 0;
  GlobalTensor<int8_t> rowsGm_;
  GlobalTensor<float> scGm_;
  GlobalTensor<Y> yGm_;
  TQue<QuePosition::VECIN, 1> rowQue_, scQue_;
  TQue<QuePosition::VECOUT, 1> outQue_;
  TBuf<QuePosition::VECCALC> halfBuf_, floatBuf_, brcbBuf_;
};

}  // namespace engram_av4

#ifndef DTYPE_Y
#define DTYPE_Y float
#endif

extern "C" __global__ __aicore__ void engram_dequant_av4(GM_ADDR rows, GM_ADDR scales, GM_ADDR y, GM_ADDR workspace,
                                                         GM_ADDR tiling) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  (void)workspace;  // no workspace: everything lives in UB
  REGISTER_TILING_DEFAULT(engram_av4::EngramDequantTilingData);
  GET_TILING_DATA_WITH_STRUCT(engram_av4::EngramDequantTilingData, td, tiling);
  AscendC::TPipe pipe;
  engram_av4::EngramDequantKernel<DTYPE_Y> op;
  op.Init(rows, scales, y, &td, &pipe);
  op.Process();
}
