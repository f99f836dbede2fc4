// MoeFinalizeRoutingAv4 on the AI Vector cores (aclnnMoeFinalizeRoutingV2 semantics):
//   out[t] = x1[t] + x2[t] + Σ_k scales[t, k] · (expanded_x[row(t, k)] + bias[expert_idx[t, k]])
// row(t, k) = expanded_row_idx[k*T + t] (drop_pad_mode 0/1) or [t*K + k] (2/3); rows < 0 (dropped) or past the
// expanded rows contribute nothing. Per core: a contiguous token range; per token, H in 32-byte aligned tiles:
// CopyIn the skip rows and each routed row through double-buffered TQue's (DataCopyPad), accumulate in float32
// with Axpy (bf16/fp16 inputs are cast first), cast back and CopyOut. Scales, row indices and expert ids are
// read through the scalar unit (K of each per token).
#include "kernel_operator.h"
#ifdef AV4_ASCENDC_STANDIN
#include "decls_moe.h"
#endif
#include "moe_tiling_data.h"

namespace moe_av4 {
using namespace AscendC;

__aicore__ inline void FinRowRange(const MoeRowSplit& s, int64_t core, int64_t* begin, int64_t* count) {
  *count = s.rowsSmall + (core < s.bigCores ? 1 : 0);
  *begin = core * s.rowsSmall + (core < s.bigCores ? core : s.bigCores);
}

template <typename T>
class FinalizeKernel {
 public:
  __aicore__ inline FinalizeKernel() {}

  __aicore__ inline void Init(GM_ADDR expandedX, GM_ADDR rowIdx, GM_ADDR x1, GM_ADDR x2, GM_ADDR bias, GM_ADDR scales,
                              GM_ADDR expertIdx, GM_ADDR out, const MoeFinalizeRoutingTilingData* td, TPipe* pipe) {
    td_ = td;
    FinRowRange(td->split, GetBlockIdx(), &begin_, &count_);
    const int64_t nTok = td->tokens, H = td->hidden, K = td->k;
    exGm_.SetGlobalBuffer((__gm__ T*)expandedX, static_cast<uint64_t>(td->expandedRows * H));
    rowGm_.SetGlobalBuffer((__gm__ int32_t*)rowIdx, static_cast<uint64_t>(nTok * K));
    scaleGm_.SetGlobalBuffer((__gm__ float*)scales, static_cast<uint64_t>(nTok * K));
    outGm_.SetGlobalBuffer((__gm__ T*)out, static_cast<uint64_t>(nTok * H));
    if (td->hasX1) x1Gm_.SetGlobalBuffer((__gm__ T*)x1, static_cast<uint64_t>(nTok * H));
    if (td->hasX2) x2Gm_.SetGlobalBuffer((__gm__ T*)x2, static_cast<uint64_t>(nTok * H));
    if (td->hasBias) {
      biasGm_.SetGlobalBuffer((__gm__ T*)bias);
      eidxGm_.SetGlobalBuffer((__gm__ int32_t*)expertIdx, static_cast<uint64_t>(nTok * K));
    }
    const uint32_t tileBytes = static_cast<uint32_t>(td->hTile * sizeof(T));
    pipe->InitBuffer(inQue_, 2, tileBytes);
    if (td->hasBias) pipe->InitBuffer(biasQue_, 2, tileBytes);
    if (td->hasX1 || td->hasX2) pipe->InitBuffer(skipQue_, 2, tileBytes);
    pipe->InitBuffer(outQue_, 2, tileBytes);
    pipe->InitBuffer(accBuf_, static_cast<uint32_t>(td->hTile * sizeof(float)));
    if (sizeof(T) == 2) pipe->InitBuffer(castBuf_, static_cast<uint32_t>(td->hTile * sizeof(float)));
    acc_ = accBuf_.Get<float>();
  }

  __aicore__ inline void Process() {
    for (int64_t t = begin_; t < begin_ + count_; ++t) {
      for (int64_t tile = 0; tile < td_->hTiles; ++tile) {
        const int64_t len = tile == td_->hTiles - 1 ? td_->hTail : td_->hTile;
        const int64_t h0 = tile * td_->hTile;
        InitAcc(t, h0, len);
        for (int64_t j = 0; j < td_->k; ++j) AddRouted(t, j, h0, len);
        CopyOut(t, h0, len);
      }
    }
  }

 private:
  __aicore__ inline int64_t RowOf(int64_t t, int64_t j) const {
    const bool column = td_->dropPadMode == 0 || td_->dropPadMode == 1;
    return column ? j * td_->tokens + t : t * td_->k + j;
  }

  __aicore__ inline DataCopyExtParams Row(int64_t len) const {
    return DataCopyExtParams(1, static_cast<uint32_t>(len * sizeof(T)), 0, 0, 0);
  }

  // acc += src (src of type T: cast through castBuf_ for 2-byte types). acc_ and castBuf_ are member buffers, not
  // queue tensors: nothing orders one vector op on them after the previous one but PipeBarrier<PIPE_V>.
  __aicore__ inline void Accumulate(const LocalTensor<T>& src, float scale, int64_t len, bool first) {
    const int32_t n = static_cast<int32_t>(len);
    PipeBarrier<PIPE_V>();   // the previous Accumulate / Duplicate on acc_ (and its read of castBuf_) is done
    if constexpr (sizeof(T) == 2) {
      LocalTensor<float> c = castBuf_.Get<float>();
      Cast(c, src, RoundMode::CAST_NONE, static_cast<uint32_t>(n));
      PipeBarrier<PIPE_V>();
      if (first) {
        Muls(acc_, c, scale, n);
      } else {
        Axpy(acc_, c, scale, n);
      }
    } else {
      if (first) {
        Muls(acc_, src, scale, n);
      } else {
        Axpy(acc_, src, scale, n);
      }
    }
  }

  __aicore__ inline void LoadInto(TQue<TPosition::VECIN, 2>& que, const GlobalTensor<T>& gm, int64_t len) {
    LocalTensor<T> buf = que.AllocTensor<T>();
    DataCopyPad(buf, gm, Row(len), DataCopyPadExtParams<T>(false, 0, 0, T(0)));
    que.EnQue(buf);
  }

  __aicore__ inline void InitAcc(int64_t t, int64_t h0, int64_t len) {
    const int64_t off = t * td_->hidden + h0;
    if (!td_->hasX1) {
      Duplicate(acc_, 0.0f, static_cast<int32_t>(len));
      return;
    }
    LoadInto(skipQue_, x1Gm_[off], len);
    LocalTensor<T> a = skipQue_.DeQue<T>();
    Accumulate(a, 1.0f, len, true);
    skipQue_.FreeTensor(a);
    if (td_->hasX2) {
      LoadInto(skipQue_, x2Gm_[off], len);
      LocalTensor<T> b = skipQue_.DeQue<T>();
      Accumulate(b, 1.0f, len, false);
      skipQue_.FreeTensor(b);
    }
  }

  __aicore__ inline void AddRouted(int64_t t, int64_t j, int64_t h0, int64_t len) {
    const int64_t r = rowGm_.GetValue(static_cast<uint64_t>(RowOf(t, j)));
    if (r < 0 || r >= td_->expandedRows) return;
    const float s = scaleGm_.GetValue(static_cast<uint64_t>(t * td_->k + j));
    LoadInto(inQue_, exGm_[r * td_->hidden + h0], len);
    LocalTensor<T> row = inQue_.DeQue<T>();
    Accumulate(row, s, len, false);
    inQue_.FreeTensor(row);
    if (td_->hasBias) {
      const int64_t e = eidxGm_.GetValue(static_cast<uint64_t>(t * td_->k + j));
      LoadInto(biasQue_, biasGm_[e * td_->hidden + h0], len);
      LocalTensor<T> b = biasQue_.DeQue<T>();
      Accumulate(b, s, len, false);
      biasQue_.FreeTensor(b);
    }
  }

  __aicore__ inline void CopyOut(int64_t t, int64_t h0, int64_t len) {
    LocalTensor<T> o = outQue_.AllocTensor<T>();
    PipeBarrier<PIPE_V>();   // the last Accumulate into acc_ is done
    if constexpr (sizeof(T) == 2) {
      Cast(o, acc_, RoundMode::CAST_RINT, static_cast<uint32_t>(len));
    } else {
      Adds(o, acc_, 0.0f, static_cast<int32_t>(len));
    }
    outQue_.EnQue(o);
    LocalTensor<T> d = outQue_.DeQue<T>();
    DataCopyPad(outGm_[t * td_->hidden + h0], d, Row(len));
    outQue_.FreeTensor(d);
  }

  const MoeFinalizeRoutingTilingData* td_ = nullptr;
  int64_t begin_ = 0, count_ = 0;
  GlobalTensor<T> exGm_, x1Gm_, x2Gm_, biasGm_, outGm_;
  GlobalTensor<int32_t> rowGm_, eidxGm_;
  GlobalTensor<float> scaleGm_;
  TQue<TPosition::VECIN, 2> inQue_, biasQue_, skipQue_;
  TQue<TPosition::VECOUT, 2> outQue_;
  TBuf<TPosition::VECCALC> accBuf_, castBuf_;
  LocalTensor<float> acc_;
};

}  // namespace moe_av4

#ifndef AV4_KERNEL_CLASSES_ONLY  // host-side probes (tiling/ub_probe.cc) compile the classes only
#include "moe_kernel_run.h"
extern "C" __global__ __aicore__ void moe_finalize_routing_av4(GM_ADDR expandedX, GM_ADDR expandedRowIdx, GM_ADDR x1,
                                                               GM_ADDR x2, GM_ADDR bias, GM_ADDR scales,
                                                               GM_ADDR expertIdx, GM_ADDR out, GM_ADDR /*workspace*/,
                                                               GM_ADDR tiling) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  REGISTER_TILING_DEFAULT(moe_av4::MoeFinalizeRoutingTilingData);
  GET_TILING_DATA_WITH_STRUCT(moe_av4::MoeFinalizeRoutingTilingData, td, tiling);
  moe_av4::RunKernel<moe_av4::FinalizeKernel<DTYPE_X>>(td, expandedX, expandedRowIdx, x1, x2, bias, scales,
                                                        expertIdx, out);
}
#endif
