// MoeGatingTopKAv4 on the AI Vector cores (aclnnMoeGatingTopK semantics + sqrt-softplus + hash routing):
//   logits [T, E] f32 -> y [T, k] f32, expert_idx [T, k] int32, score [T, E] f32.
// Per core: a contiguous token range; rowsPerLoop rows per pass through double-buffered TQue's (DataCopyPad in/out).
// Per row: score = norm(logits) with vector ops (softmax / sigmoid / sqrt(softplus) in float32), selection key
// score + bias, optional group restriction (group max or top-2 sum, k_group best groups), then ONE full sort of the
// (key, expert id) pairs (Sort: Sort32 per 32 experts + MrgSort merges, descending) and ONE GatherMask (pattern 2:
// the odd 32-bit lanes = the ids) of the first k pairs -- not k rounds of ReduceMax. Equal keys keep ascending id
// order (Sort32 keeps input order among equal scores, MrgSort takes the lower-numbered list first: the LOWEST expert
// id wins a tie, as the reference; an assumption about the hardware sort, see docs/ascendc.md). Padding lanes
// (E .. E32) carry -FLT_MAX, below the -3e38 of masked-out groups, so they sort last. Hash layers read expert ids
// from tid2eid[input_ids[t]].
// y = score[id] / (Σ score[id] + eps) · routed_scaling_factor (softmax: no renormalisation).
#include "kernel_operator.h"
#ifdef AV4_ASCENDC_STANDIN
#include "decls_moe.h"
#endif
#include "moe_tiling_data.h"
#include "pipe_sync.h"

namespace moe_av4 {
using namespace AscendC;
using av4_common::PipeSync;

constexpr float kNegInf = -3.0e38f;
constexpr float kPadKey = -3.4028235e38f;   // -FLT_MAX: sorts after every real (or group-masked) key
constexpr int32_t kMaxGroups = 64;   // group_count limit (tiling checks)
constexpr int32_t kMaxK = 64;        // top-k limit (tiling checks)

__aicore__ inline void RowRange(const MoeRowSplit& s, int64_t core, int64_t* begin, int64_t* count) {
  *count = s.rowsSmall + (core < s.bigCores ? 1 : 0);
  *begin = core * s.rowsSmall + (core < s.bigCores ? core : s.bigCores);
}

__aicore__ inline int64_t Align8(int64_t n) { return (n + 7) / 8 * 8; }
__aicore__ inline int64_t Align32(int64_t n) { return (n + 31) / 32 * 32; }

class GatingTopKKernel {
 public:
  __aicore__ inline GatingTopKKernel() {}

  __aicore__ inline void Init(GM_ADDR x, GM_ADDR bias, GM_ADDR inputIds, GM_ADDR tid2eid, GM_ADDR y, GM_ADDR expertIdx,
                              GM_ADDR score, const MoeGatingTopKTilingData* td, TPipe* pipe) {
    td_ = td;
    RowRange(td->split, GetBlockIdx(), &start_, &count_);
    const int64_t T = td->split.total, E = td->experts, k = td->k;
    ea_ = td->expertsAlign;
    ka_ = Align8(k);
    e32_ = Align32(E);
    xGm_.SetGlobalBuffer((__gm__ float*)x, static_cast<uint64_t>(T * E));
    scoreGm_.SetGlobalBuffer((__gm__ float*)score, static_cast<uint64_t>(T * E));
    yGm_.SetGlobalBuffer((__gm__ float*)y, static_cast<uint64_t>(T * k));
    idxGm_.SetGlobalBuffer((__gm__ int32_t*)expertIdx, static_cast<uint64_t>(T * k));
    if (td->hashed) {
      idsGm_.SetGlobalBuffer((__gm__ int32_t*)inputIds, static_cast<uint64_t>(T));
      tableGm_.SetGlobalBuffer((__gm__ int32_t*)tid2eid);
    }
    const uint32_t rowBytes = static_cast<uint32_t>(td->rowsPerLoop * ea_ * sizeof(float));
    const uint32_t outBytes = static_cast<uint32_t>(td->rowsPerLoop * ka_ * sizeof(float));
    pipe->InitBuffer(inQue_, 2, rowBytes);
    pipe->InitBuffer(scoreQue_, 2, rowBytes);
    pipe->InitBuffer(yQue_, 2, outBytes);
    pipe->InitBuffer(idxQue_, 2, outBytes);
    pipe->InitBuffer(selBuf_, static_cast<uint32_t>(e32_ * sizeof(float)));   // sort keys, 32-element groups
    pipe->InitBuffer(tmpBuf_, static_cast<uint32_t>(ea_ * sizeof(float)));
    pipe->InitBuffer(workBuf_, static_cast<uint32_t>(ea_ * sizeof(float)));
    pipe->InitBuffer(biasBuf_, static_cast<uint32_t>(ea_ * sizeof(float)));
    pipe->InitBuffer(idBuf_, static_cast<uint32_t>(e32_ * sizeof(uint32_t)));        // 0 .. E32-1
    pipe->InitBuffer(sortedBuf_, static_cast<uint32_t>(e32_ * 2 * sizeof(float)));   // (key, id) pairs
    pipe->InitBuffer(sortTmpBuf_, static_cast<uint32_t>(e32_ * 2 * sizeof(float)));
    pipe->InitBuffer(topBuf_, static_cast<uint32_t>(Align32(k) * sizeof(uint32_t)));  // gathered ids
    sel_ = selBuf_.Get<float>();
    tmp_ = tmpBuf_.Get<float>();
    work_ = workBuf_.Get<float>();
    bias_ = biasBuf_.Get<float>();
    LocalTensor<uint32_t> ids = idBuf_.Get<uint32_t>();
    for (int64_t e = 0; e < e32_; ++e) ids.SetValue(static_cast<uint32_t>(e), static_cast<uint32_t>(e));
    for (int64_t e = E; e < e32_; ++e) sel_.SetValue(static_cast<uint32_t>(e), kPadKey);   // never overwritten
    SToV();
    if (td->hasBias) {
      GlobalTensor<float> biasGm;
      biasGm.SetGlobalBuffer((__gm__ float*)bias, static_cast<uint64_t>(E));
      DataCopyPad(bias_, biasGm, DataCopyExtParams(1, static_cast<uint32_t>(E * sizeof(float)), 0, 0, 0),
                  DataCopyPadExtParams<float>(false, 0, 0, 0.0f));
      PipeSync<HardEvent::MTE2_V>();
    }
  }

  __aicore__ inline void Process() {
    for (int64_t r0 = 0; r0 < count_; r0 += td_->rowsPerLoop) {
      const int64_t n = count_ - r0 < td_->rowsPerLoop ? count_ - r0 : td_->rowsPerLoop;
      CopyIn(start_ + r0, n);
      Compute(start_ + r0, n);
      CopyOut(start_ + r0, n);
    }
  }

 private:
  __aicore__ inline void CopyIn(int64_t row, int64_t n) {
    LocalTensor<float> in = inQue_.AllocTensor<float>();
    DataCopyPad(in, xGm_[row * td_->experts],
                DataCopyExtParams(static_cast<uint16_t>(n), static_cast<uint32_t>(td_->experts * sizeof(float)), 0, 0,
                                  0),
                DataCopyPadExtParams<float>(false, 0, 0, 0.0f));
    inQue_.EnQue(in);
  }

  __aicore__ inline void VToS() {
    PipeSync<HardEvent::V_S>();
  }
  __aicore__ inline void SToV() {
    PipeSync<HardEvent::S_V>();
  }

  // dst = 1 + exp(-src), ready for the next vector instruction (the softplus and sigmoid scores)
  __aicore__ inline void OnePlusExpNeg(const LocalTensor<float>& dst, const LocalTensor<float>& src, int32_t n) {
    Muls(dst, src, -1.0f, n);
    PipeBarrier<PIPE_V>();
    Exp(dst, dst, n);
    PipeBarrier<PIPE_V>();
    Adds(dst, dst, 1.0f, n);
    PipeBarrier<PIPE_V>();
  }

  // Vector ops on the member scratch tensors are not synchronised by any queue: each one that reads the previous
  // one's result waits for it with PipeBarrier<PIPE_V>.
  __aicore__ inline void Score(const LocalTensor<float>& s, const LocalTensor<float>& l) {
    const int32_t E = static_cast<int32_t>(td_->experts);
    if (td_->normType == 2) {  // sqrt(max(l, 0) + ln(1 + exp(-|l|))): softplus without overflow
      Abs(tmp_, l, E);
      Maxs(s, l, 0.0f, E);
      PipeBarrier<PIPE_V>();
      OnePlusExpNeg(tmp_, tmp_, E);
      Ln(tmp_, tmp_, E);
      PipeBarrier<PIPE_V>();
      Add(s, s, tmp_, E);
      PipeBarrier<PIPE_V>();
      Sqrt(s, s, E);
    } else if (td_->normType == 1) {
      OnePlusExpNeg(tmp_, l, E);
      Reciprocal(s, tmp_, E);
    } else {
      ReduceMax(work_, l, tmp_, E, false);
      VToS();
      const float m = work_.GetValue(0);
      Adds(tmp_, l, -m, E);
      PipeBarrier<PIPE_V>();
      Exp(s, tmp_, E);
      PipeBarrier<PIPE_V>();
      ReduceSum(work_, s, tmp_, E);
      VToS();
      const float z = work_.GetValue(0);
      Muls(s, s, 1.0f / z, E);
    }
    PipeBarrier<PIPE_V>();   // callers read s with the next vector op
  }

  // Largest entry of src[0, n): value and the lowest index holding it.
  __aicore__ inline int64_t ArgMax(const LocalTensor<float>& src, int32_t n, float* value) {
    ReduceMax(work_, src, tmp_, n, true);
    VToS();
    const float v = work_.GetValue(0);
    const int64_t cand = static_cast<int64_t>(work_.ReinterpretCast<uint32_t>().GetValue(1));
    int64_t best = cand;
    for (int64_t e = 0; e < cand; ++e) {
      if (src.GetValue(static_cast<uint32_t>(e)) == v) {
        best = e;
        break;
      }
    }
    *value = v;
    return best;
  }

  __aicore__ inline void RestrictGroups() {
    const int32_t G = td_->groupCount;
    const int32_t per = static_cast<int32_t>(td_->experts / G);
    float gs[kMaxGroups];
    for (int32_t g = 0; g < G; ++g) {
      LocalTensor<float> part = sel_[static_cast<uint32_t>(g * per)];
      float v1 = 0.0f;
      const int64_t i1 = ArgMax(part, per, &v1);
      gs[g] = v1;
      if (td_->groupSelectMode == 1 && per > 1) {  // sum of the group's top-2
        part.SetValue(static_cast<uint32_t>(i1), kNegInf);
        SToV();
        float v2 = 0.0f;
        ArgMax(part, per, &v2);
        part.SetValue(static_cast<uint32_t>(i1), v1);
        SToV();
        gs[g] = v1 + v2;
      }
    }
    bool keep[kMaxGroups];
    for (int32_t g = 0; g < G; ++g) keep[g] = false;
    for (int32_t j = 0; j < td_->kGroup; ++j) {  // best groups, ties -> lowest group id
      int32_t best = -1;
      for (int32_t g = 0; g < G; ++g)
        if (!keep[g] && (best < 0 || gs[g] > gs[best])) best = g;
      keep[best] = true;
    }
    for (int32_t g = 0; g < G; ++g)
      if (!keep[g]) Duplicate(sel_[static_cast<uint32_t>(g * per)], kNegInf, per);
    PipeBarrier<PIPE_V>();
  }

  // The k best keys of sel_ (ties -> lowest id): one full descending sort of the (key, id) pairs, then one
  // GatherMask of the id lanes (odd 32-bit words) of the first ceil(k/32) repeats of 32 pairs.
  __aicore__ inline void TopK(int64_t k, int32_t* ids) {
    LocalTensor<float> sorted = sortedBuf_.Get<float>(), tmp = sortTmpBuf_.Get<float>();
    LocalTensor<uint32_t> id = idBuf_.Get<uint32_t>(), top = topBuf_.Get<uint32_t>();
    Sort<float, true>(sorted, sel_, id, tmp, static_cast<int32_t>(e32_ / 32));
    PipeBarrier<PIPE_V>();
    uint64_t gathered = 0;
    GatherMask(top, sorted.ReinterpretCast<uint32_t>(), 2, false, 0,
               GatherMaskParams(1, static_cast<uint16_t>(Align32(k) / 32), 8, 0), gathered);
    VToS();
    for (int64_t j = 0; j < k; ++j) ids[j] = static_cast<int32_t>(top.GetValue(static_cast<uint32_t>(j)));
  }

  __aicore__ inline void Compute(int64_t row0, int64_t n) {
    const int32_t E = static_cast<int32_t>(td_->experts);
    const int64_t k = td_->k;
    LocalTensor<float> in = inQue_.DeQue<float>();
    LocalTensor<float> sc = scoreQue_.AllocTensor<float>();
    LocalTensor<float> y = yQue_.AllocTensor<float>();
    LocalTensor<int32_t> idx = idxQue_.AllocTensor<int32_t>();
    for (int64_t i = 0; i < n; ++i) {
      LocalTensor<float> s = sc[static_cast<uint32_t>(i * ea_)];
      Score(s, in[static_cast<uint32_t>(i * ea_)]);
      int32_t ids[kMaxK];
      if (td_->hashed) {
        const int64_t tok = idsGm_.GetValue(static_cast<uint64_t>(row0 + i));
        for (int64_t j = 0; j < k; ++j) ids[j] = tableGm_.GetValue(static_cast<uint64_t>(tok * td_->tableCols + j));
      } else {
        if (td_->hasBias) {
          Add(sel_, s, bias_, E);
        } else {
          Adds(sel_, s, 0.0f, E);
        }
        PipeBarrier<PIPE_V>();
        if (td_->groupCount > 1) RestrictGroups();
        TopK(k, ids);
      }
      VToS();
      float sum = 0.0f;
      for (int64_t j = 0; j < k; ++j) sum += s.GetValue(static_cast<uint32_t>(ids[j]));
      const float norm = td_->normType == 0 ? 1.0f : 1.0f / (sum + td_->eps);
      for (int64_t j = 0; j < k; ++j) {
        const uint32_t o = static_cast<uint32_t>(i * ka_ + j);
        y.SetValue(o, s.GetValue(static_cast<uint32_t>(ids[j])) * norm * td_->routedScalingFactor);
        idx.SetValue(o, ids[j]);
      }
    }
    inQue_.FreeTensor(in);
    PipeSync<HardEvent::S_MTE3>();
    scoreQue_.EnQue(sc);
    yQue_.EnQue(y);
    idxQue_.EnQue(idx);
  }

  __aicore__ inline void CopyOut(int64_t row, int64_t n) {
    const uint16_t rows = static_cast<uint16_t>(n);
    LocalTensor<float> sc = scoreQue_.DeQue<float>();
    DataCopyPad(scoreGm_[row * td_->experts], sc,
                DataCopyExtParams(rows, static_cast<uint32_t>(td_->experts * sizeof(float)), 0, 0, 0));
    scoreQue_.FreeTensor(sc);
    LocalTensor<float> y = yQue_.DeQue<float>();
    DataCopyPad(yGm_[row * td_->k], y, DataCopyExtParams(rows, static_cast<uint32_t>(td_->k * sizeof(float)), 0, 0, 0));
    yQue_.FreeTensor(y);
    LocalTensor<int32_t> idx = idxQue_.DeQue<int32_t>();
    DataCopyPad(idxGm_[row * td_->k], idx,
                DataCopyExtParams(rows, static_cast<uint32_t>(td_->k * sizeof(int32_t)), 0, 0, 0));
    idxQue_.FreeTensor(idx);
  }

  const MoeGatingTopKTilingData* td_ = nullptr;
  int64_t start_ = 0, count_ = 0, ea_ = 0, ka_ = 0, e32_ = 0;
  GlobalTensor<float> xGm_, scoreGm_, yGm_;
  GlobalTensor<int32_t> idxGm_, idsGm_, tableGm_;
  TQue<TPosition::VECIN, 2> inQue_;
  TQue<TPosition::VECOUT, 2> scoreQue_, yQue_, idxQue_;
  TBuf<TPosition::VECCALC> selBuf_, tmpBuf_, workBuf_, biasBuf_, idBuf_, sortedBuf_, sortTmpBuf_, topBuf_;
  LocalTensor<float> sel_, tmp_, work_, bias_;
};

}  // namespace moe_av4

#ifndef AV4_KERNEL_CLASSES_ONLY  // host-side probes (tiling/ub_probe.cc) compile the classes only
#include "moe_kernel_run.h"
// The entry name is the op type in CANN's snake case (MoeGatingTopKAv4 -> moe_gating_top_k_av4, as the vendor's
// MoeGatingTopK -> moe_gating_top_k); the file name is free because op_kernel/CMakeLists.txt names it (KERNEL_FILE).
extern "C" __global__ __aicore__ void moe_gating_top_k_av4(GM_ADDR x, GM_ADDR bias, GM_ADDR inputIds, GM_ADDR tid2eid,
                                                           GM_ADDR y, GM_ADDR expertIdx, GM_ADDR score,
                                                           GM_ADDR /*workspace*/, GM_ADDR tiling) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  REGISTER_TILING_DEFAULT(moe_av4::MoeGatingTopKTilingData);
  GET_TILING_DATA_WITH_STRUCT(moe_av4::MoeGatingTopKTilingData, td, tiling);
  moe_av4::RunKernel<moe_av4::GatingTopKKernel>(td, x, bias, inputIds, tid2eid, y, expertIdx, score);
}
#endif
