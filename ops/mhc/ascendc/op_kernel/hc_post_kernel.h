// hc_post on the AI Vector cores: out[k] = post[k] * f + sum_j comb[j, k] * residual[j] (stream k takes column k
// of comb). Per core: its token range; per token, D chunk by D chunk: CopyIn f and the hc residual rows
// (double-buffered TQue, DataCopyPad), Muls + Axpy in float32, cast, CopyOut the hc output rows with one strided
// DataCopyPad. post and comb (hc + hc^2 floats per token) are read through the scalar unit.
#pragma once
#include "kernel_operator.h"
#include "mhc_tiling_data.h"
#include "stream_rows.h"

namespace mhc_av4 {
using namespace AscendC;
using av4_common::AccRow;
using av4_common::CopyInRows;
using av4_common::CopyOutRows;
using av4_common::FloatViews;
using av4_common::StoreRow;

template <typename T>
class HcPostKernel {
 public:
  __aicore__ inline HcPostKernel() {}

  __aicore__ inline void Init(GM_ADDR f, GM_ADDR residual, GM_ADDR post, GM_ADDR comb, GM_ADDR out,
                              const HcPostTilingData* td, TPipe* pipe) {
    td_ = td;
    HcTokenRange(GetBlockIdx(), td->frontCores, td->baseTokens, &start_, &count_);
    fGm_.SetGlobalBuffer((__gm__ T*)f, static_cast<uint64_t>(td->T * td->D));
    resGm_.SetGlobalBuffer((__gm__ T*)residual, static_cast<uint64_t>(td->T * td->hc * td->D));
    outGm_.SetGlobalBuffer((__gm__ T*)out, static_cast<uint64_t>(td->T * td->hc * td->D));
    postGm_.SetGlobalBuffer((__gm__ float*)post, static_cast<uint64_t>(td->T * td->hc));
    combGm_.SetGlobalBuffer((__gm__ float*)comb, static_cast<uint64_t>(td->T * td->hc * td->hc));
    pipe->InitBuffer(fQue_, 2, td->fInBytes);
    pipe->InitBuffer(resQue_, 2, td->resInBytes);
    pipe->InitBuffer(castBuf_, td->castBytes);
    pipe->InitBuffer(outQue_, 2, td->outBytes);
  }

  __aicore__ inline void Process() {
    const int32_t hc = td_->hc;
    for (int64_t tok = start_; tok < start_ + count_; ++tok) {
      for (int32_t k = 0; k < hc; ++k) post_[k] = postGm_.GetValue(tok * hc + k);
      for (int32_t i = 0; i < hc * hc; ++i) comb_[i] = combGm_.GetValue(tok * hc * hc + i);
      for (int32_t c = 0; c < td_->dChunks; ++c) {
        const int32_t dLen = c == td_->dChunks - 1 ? td_->dTail : td_->dChunk;
        const int64_t d0 = static_cast<int64_t>(c) * td_->dChunk;
        CopyIn(tok, d0, dLen);
        Compute(dLen);
        CopyOut(tok, d0, dLen);
      }
    }
  }

 private:
  __aicore__ inline void CopyIn(int64_t tok, int64_t d0, int32_t dLen) {
    LocalTensor<T> fIn = fQue_.AllocTensor<T>();
    DataCopyPad(fIn, fGm_[tok * td_->D + d0], DataCopyExtParams(1, static_cast<uint32_t>(dLen * sizeof(T)), 0, 0, 0),
                DataCopyPadExtParams<T>(false, 0, 0, 0));
    fQue_.EnQue(fIn);
    LocalTensor<T> rIn = resQue_.AllocTensor<T>();
    CopyInRows(rIn, resGm_, tok * td_->hc * td_->D + d0, td_->hc, td_->D, td_->dChunk, dLen);
    resQue_.EnQue(rIn);
  }

  __aicore__ inline void Compute(int32_t dLen) {
    const int32_t hc = td_->hc, dc = td_->dChunk;
    LocalTensor<T> fIn = fQue_.DeQue<T>();
    LocalTensor<T> rIn = resQue_.DeQue<T>();
    LocalTensor<T> out = outQue_.AllocTensor<T>();
    LocalTensor<float> cast = castBuf_.Get<float>();  // rows: f, residual[0..hc), one output row
    LocalTensor<float> ff, rf;
    FloatViews(fIn, static_cast<uint32_t>(dLen), rIn, static_cast<uint32_t>(hc * dc), castBuf_,
               static_cast<uint32_t>(dc), &ff, &rf);
    for (int32_t k = 0; k < hc; ++k) {
      LocalTensor<float> acc = AccRow(out, k * dc, cast[(hc + 1) * dc]);
      Muls(acc, ff, post_[k], dLen);
      PipeBarrier<PIPE_V>();
      for (int32_t j = 0; j < hc; ++j) {
        Axpy(acc, rf[j * dc], comb_[j * hc + k], dLen);
        PipeBarrier<PIPE_V>();
      }
      StoreRow(out, k * dc, acc, dLen);   // bf16: rounded into out; the next stream reuses acc
    }
    outQue_.EnQue(out);
    fQue_.FreeTensor(fIn);
    resQue_.FreeTensor(rIn);
  }

  __aicore__ inline void CopyOut(int64_t tok, int64_t d0, int32_t dLen) {
    LocalTensor<T> out = outQue_.DeQue<T>();
    CopyOutRows(outGm_, tok * td_->hc * td_->D + d0, out, td_->hc, td_->D, td_->dChunk, dLen);
    outQue_.FreeTensor(out);
  }

  const HcPostTilingData* td_ = nullptr;
  int64_t start_ = 0, count_ = 0;
  float post_[kMaxHc] = {};
  float comb_[kMaxHc * kMaxHc] = {};
  GlobalTensor<T> fGm_, resGm_, outGm_;
  GlobalTensor<float> postGm_, combGm_;
  TQue<QuePosition::VECIN, 1> fQue_, resQue_;
  TQue<QuePosition::VECOUT, 1> outQue_;
  TBuf<QuePosition::VECCALC> castBuf_;
};

}  // namespace mhc_av4
