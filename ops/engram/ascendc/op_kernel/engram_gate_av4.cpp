// Kernel entry of EngramGateAv4, the gated read of an Engram layer into the mHC streams
// (ops/engram/reference.py engram_gate; docs/deepseek-v4.1.md, "Engram"):
//   h [T, hc, D], kv [T, (hc + 1) D] (DTYPE_H: float32 or bf16), weight [hc, D] = q_weight * k_weight, alive [T]
//   (float32) -> out [T, hc, D] (DTYPE_H), with per stream s
//     dot_s = sum_d h_s w_s key_s * rsqrt(mean h_s^2 + eps) * rsqrt(mean key_s^2 + eps) / sqrt(D)
//     g_s   = sigmoid(sign(dot_s) sqrt(max(|dot_s|, 1e-6))) * alive,   out_s = h_s + g_s * value.
// AIV only. Per core its token range (EngramRange), per tile of tileT tokens two passes over D chunks:
//   1. statistics: the weight chunk once per tile (plain buffer, MTE2 <-> V waits), then per token the hc h rows and
//      hc key rows of the chunk (double-buffered VECIN queues, one strided DataCopyPad each), three products per
//      stream and ReduceSum each into a 32-byte result slot, read by the scalar unit and summed in float32;
//   2. gates: square roots and exponentials on the vector unit over a 16-float buffer, the rest scalar;
//   3. output: per token the h rows and the value chunk again, out_s = g_s value + h_s, one strided copy out.
// h is read twice (statistics, output), kv once, out written once.
#include "kernel_operator.h"
#include "engram_tiling_data.h"
#include "pipe_sync.h"
#include "stream_rows.h"

namespace engram_av4 {
using namespace AscendC;
using av4_common::AccRow;
using av4_common::CopyInRows;
using av4_common::CopyOutRows;
using av4_common::FloatViews;
using av4_common::PipeSync;
using av4_common::StoreRow;

template <typename T>
class EngramGateKernel {
 public:
  __aicore__ inline EngramGateKernel() {}

  __aicore__ inline void Init(GM_ADDR h, GM_ADDR kv, GM_ADDR weight, GM_ADDR alive, GM_ADDR out,
                              const EngramGateTilingData* td, TPipe* pipe) {
    td_ = td;
    EngramRange(GetBlockIdx(), td->frontCores, td->baseTokens, &start_, &count_);
    const uint64_t hcD = static_cast<uint64_t>(td->hc) * td->D;
    hGm_.SetGlobalBuffer((__gm__ T*)h, td->T * hcD);
    kvGm_.SetGlobalBuffer((__gm__ T*)kv, td->T * (hcD + td->D));
    outGm_.SetGlobalBuffer((__gm__ T*)out, td->T * hcD);
    wGm_.SetGlobalBuffer((__gm__ float*)weight, hcD);
    aliveGm_.SetGlobalBuffer((__gm__ float*)alive, td->T);
    pipe->InitBuffer(hQue_, 2, td->hInBytes);
    pipe->InitBuffer(kQue_, 2, td->kInBytes);
    pipe->InitBuffer(vQue_, 2, td->vInBytes);
    pipe->InitBuffer(outQue_, 2, td->outBytes);
    pipe->InitBuffer(wBuf_, td->wBytes);
    if (td->castBytes > 0) pipe->InitBuffer(castBuf_, td->castBytes);
    pipe->InitBuffer(tmpBuf_, td->tmpBytes);
    pipe->InitBuffer(workBuf_, td->workBytes);
    pipe->InitBuffer(redBuf_, td->redBytes);
    pipe->InitBuffer(tinyBuf_, td->tinyBytes);
  }

  __aicore__ inline void Process() {
    if (GetBlockIdx() >= td_->usedCores) return;
    for (int64_t t0 = start_; t0 < start_ + count_; t0 += td_->tileT) {
      const int32_t n = static_cast<int32_t>(start_ + count_ - t0 < td_->tileT ? start_ + count_ - t0 : td_->tileT);
      Statistics(t0, n);
      Gates(t0, n);
      for (int32_t j = 0; j < n; ++j) {
        for (int32_t c = 0; c < td_->dChunks; ++c) {
          const int32_t dLen = c == td_->dChunks - 1 ? td_->dTail : td_->dChunk;
          const int64_t d0 = static_cast<int64_t>(c) * td_->dChunk;
          EnQueRows(hQue_, hGm_, (t0 + j) * td_->hc * td_->D + d0, dLen);
          CopyInValue(t0 + j, d0, dLen);
          Output(j, dLen);
          CopyOut(t0 + j, d0, dLen);
        }
      }
    }
  }

 private:
  // hc rows of dLen elements, D apart in GM, dChunk apart in UB
  __aicore__ inline void EnQueRows(TQue<QuePosition::VECIN, 1>& que, const GlobalTensor<T>& gm, int64_t offset,
                                   int32_t dLen) {
    LocalTensor<T> x = que.template AllocTensor<T>();
    CopyInRows(x, gm, offset, td_->hc, td_->D, td_->dChunk, dLen);
    que.EnQue(x);
  }

  __aicore__ inline void CopyInValue(int64_t tok, int64_t d0, int32_t dLen) {
    LocalTensor<T> v = vQue_.template AllocTensor<T>();
    DataCopyPad(v, kvGm_[tok * (td_->hc + 1) * td_->D + td_->hc * td_->D + d0],
                DataCopyExtParams(1, static_cast<uint32_t>(dLen * sizeof(T)), 0, 0, 0),
                DataCopyPadExtParams<T>(false, 0, 0, 0));
    vQue_.EnQue(v);
  }

  __aicore__ inline void Statistics(int64_t t0, int32_t n) {
    const int32_t hc = td_->hc, dc = td_->dChunk;
    for (int32_t i = 0; i < n * 3 * hc; ++i) acc_[i] = 0.0f;
    LocalTensor<float> w = wBuf_.Get<float>();
    LocalTensor<float> tmp = tmpBuf_.Get<float>(), work = workBuf_.Get<float>(), red = redBuf_.Get<float>();
    for (int32_t c = 0; c < td_->dChunks; ++c) {
      const int32_t dLen = c == td_->dChunks - 1 ? td_->dTail : td_->dChunk;
      const int64_t d0 = static_cast<int64_t>(c) * dc;
      PipeSync<HardEvent::V_MTE2>();   // w is a plain buffer: the previous chunk's products must have read it
      DataCopyPad(w, wGm_[d0],
                  DataCopyExtParams(static_cast<uint16_t>(hc), static_cast<uint32_t>(dLen * 4),
                                    static_cast<uint32_t>((td_->D - dLen) * 4),
                                    static_cast<uint32_t>((dc - dLen) * 4 / kUbAlign), 0),
                  DataCopyPadExtParams<float>(false, 0, 0, 0.0f));
      PipeSync<HardEvent::MTE2_V>();
      for (int32_t j = 0; j < n; ++j) {
        const int64_t tok = t0 + j;
        EnQueRows(hQue_, hGm_, tok * hc * td_->D + d0, dLen);
        EnQueRows(kQue_, kvGm_, tok * (hc + 1) * td_->D + d0, dLen);
        LocalTensor<T> hIn = hQue_.template DeQue<T>();
        LocalTensor<T> kIn = kQue_.template DeQue<T>();
        LocalTensor<float> hf, kf;
        const uint32_t hcElems = static_cast<uint32_t>(hc * dc);
        FloatViews(hIn, hcElems, kIn, hcElems, castBuf_, hcElems, &hf, &kf);
        for (int32_t s = 0; s < hc; ++s) {
          Mul(tmp, hf[s * dc], hf[s * dc], dLen);
          Mul(tmp[dc], kf[s * dc], kf[s * dc], dLen);
          Mul(tmp[2 * dc], hf[s * dc], w[s * dc], dLen);
          PipeBarrier<PIPE_V>();
          Mul(tmp[2 * dc], tmp[2 * dc], kf[s * dc], dLen);
          PipeBarrier<PIPE_V>();
          for (int32_t q = 0; q < 3; ++q) {
            ReduceSum(red[(3 * s + q) * kRedSlot], tmp[q * dc], work, dLen);
            PipeBarrier<PIPE_V>();   // the next ReduceSum reuses work; the next stream's Mul overwrites tmp
          }
        }
        PipeSync<HardEvent::V_S>();
        for (int32_t i = 0; i < 3 * hc; ++i) acc_[j * 3 * hc + i] += red.GetValue(i * kRedSlot);
        hQue_.FreeTensor(hIn);
        kQue_.FreeTensor(kIn);
      }
    }
  }

  __aicore__ inline void Gates(int64_t t0, int32_t n) {
    const int32_t hc = td_->hc;
    LocalTensor<float> tiny = tinyBuf_.Get<float>();
    for (int32_t j = 0; j < n; ++j) {
      const float* a = acc_ + j * 3 * hc;
      for (int32_t s = 0; s < hc; ++s) {
        tiny.SetValue(s, a[3 * s] * td_->invD + td_->eps);
        tiny.SetValue(kMaxHc + s, a[3 * s + 1] * td_->invD + td_->eps);
      }
      PipeSync<HardEvent::S_V>();
      Sqrt(tiny, tiny, 2 * kMaxHc);
      PipeSync<HardEvent::V_S>();
      bool neg[kMaxHc];
      for (int32_t s = 0; s < hc; ++s) {
        const float dot = a[3 * s + 2] * (1.0f / tiny.GetValue(s)) * (1.0f / tiny.GetValue(kMaxHc + s)) * td_->invSqrtD;
        union {
          float f;
          uint32_t u;
        } bits;
        bits.f = dot;
        neg[s] = (bits.u >> 31) != 0;   // the sign bit: copysign(., -0.0) is negative too
        const float mag = dot < 0.0f ? -dot : dot;
        tiny.SetValue(s, mag > td_->clamp ? mag : td_->clamp);
      }
      PipeSync<HardEvent::S_V>();
      Sqrt(tiny, tiny, kMaxHc);
      PipeBarrier<PIPE_V>();
      Muls(tiny, tiny, -1.0f, kMaxHc);
      PipeBarrier<PIPE_V>();
      Exp(tiny, tiny, kMaxHc);          // e = exp(-sqrt(max(|dot|, clamp)))
      PipeSync<HardEvent::V_S>();
      const float alive = aliveGm_.GetValue(t0 + j);
      for (int32_t s = 0; s < hc; ++s) {
        const float e = tiny.GetValue(s);
        gate_[j * hc + s] = (neg[s] ? e / (1.0f + e) : 1.0f / (1.0f + e)) * alive;   // sigmoid(-+sqrt)
      }
    }
  }

  __aicore__ inline void Output(int32_t j, int32_t dLen) {
    const int32_t hc = td_->hc, dc = td_->dChunk;
    LocalTensor<T> hIn = hQue_.template DeQue<T>();
    LocalTensor<T> vIn = vQue_.template DeQue<T>();
    LocalTensor<T> out = outQue_.template AllocTensor<T>();
    LocalTensor<float> hf, vf;
    FloatViews(hIn, static_cast<uint32_t>(hc * dc), vIn, static_cast<uint32_t>(dLen), castBuf_,
               static_cast<uint32_t>(hc * dc), &hf, &vf);
    for (int32_t s = 0; s < hc; ++s) {
      LocalTensor<float> acc = AccRow(out, s * dc, tmpBuf_.Get<float>());
      Muls(acc, vf, gate_[j * hc + s], dLen);
      PipeBarrier<PIPE_V>();
      Add(acc, acc, hf[s * dc], dLen);
      PipeBarrier<PIPE_V>();
      StoreRow(out, s * dc, acc, dLen);   // bf16: rounded into out; the next stream reuses acc
    }
    outQue_.EnQue(out);
    hQue_.FreeTensor(hIn);
    vQue_.FreeTensor(vIn);
  }

  __aicore__ inline void CopyOut(int64_t tok, int64_t d0, int32_t dLen) {
    LocalTensor<T> out = outQue_.template DeQue<T>();
    CopyOutRows(outGm_, tok * td_->hc * td_->D + d0, out, td_->hc, td_->D, td_->dChunk, dLen);
    outQue_.FreeTensor(out);
  }

  const EngramGateTilingData* td_ = nullptr;
  int64_t start_ = 0, count_ = 0;
  float acc_[kMaxTileT * 3 * kMaxHc] = {};   // per tile token and stream: sum h^2, sum key^2, sum h w key
  float gate_[kMaxTileT * kMaxHc] = {};
  GlobalTensor<T> hGm_, kvGm_, outGm_;
  GlobalTensor<float> wGm_, aliveGm_;
  TQue<QuePosition::VECIN, 1> hQue_, kQue_, vQue_;
  TQue<QuePosition::VECOUT, 1> outQue_;
  TBuf<QuePosition::VECCALC> wBuf_, castBuf_, tmpBuf_, workBuf_, redBuf_, tinyBuf_;
};

}  // namespace engram_av4

#ifndef DTYPE_H
#define DTYPE_H float
#endif

extern "C" __global__ __aicore__ void engram_gate_av4(GM_ADDR h, GM_ADDR kv, GM_ADDR weight, GM_ADDR alive,
                                                      GM_ADDR out, GM_ADDR workspace, GM_ADDR tiling) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  (void)workspace;  // no workspace: everything lives in UB
  REGISTER_TILING_DEFAULT(engram_av4::EngramGateTilingData);
  GET_TILING_DATA_WITH_STRUCT(engram_av4::EngramGateTilingData, td, tiling);
  AscendC::TPipe pipe;
  engram_av4::EngramGateKernel<DTYPE_H> op;
  op.Init(h, kv, weight, alive, out, &td, &pipe);
  op.Process();
}
