// AV4LightningIndexer: V4's indexer over compressed entries (cmp_ratio), streaming top-k. Vector-core (AIV) kernel.
// Semantics: ops/attention/reference.py lightning_indexer — score[s] = Σ_h w[h]·ReLU(q[h]·k[s]) over the visible
// entries s < floor((start_pos + t + 1) / cmp_ratio), the top min(topk, N) ids in ascending id order, -1 padded.
//
// Per core: query rows rowSplit[core] .. rowSplit[core+1] (balanced by visible-key count on the host). Per row: q
// [H, d] and w [H] stay in UB; keys stream keyBlock rows at a time through a double-buffered VECIN queue; the
// running top-k lives in a candidate buffer [topk best | keyBlock new], re-selected after each block with a full
// Sort (descending, (score, id) pairs) + Extract: memory O(topk + keyBlock) per core, never the [S, N] matrix.
// The final set is re-sorted by id (key = -id) so the output is ascending; empty slots carry id 0xFFFFFFFF, which
// is -1 as int32.
// Ties: the reference keeps the lower id among equal scores; that Sort orders equal scores by ascending index is
// an assumption to verify on hardware (tests/ops/test_attention_ascendc.py documents it).
// FP4 simulation (Hadamard + E2M1 fake-quant of q/k) is elementwise pre-processing done by the caller here.
#ifndef AV4_CPU_EMULATOR   // ascendc/tests/kernel_emu.cc supplies its own AscendC emulation
#include "kernel_operator.h"
#endif
#include "attention_pipe_sync.h"
#include "attention_tiling_data.h"

using namespace AscendC;
using av4_tiling::IndexerTiling;

namespace av4 {

constexpr float kIdxNegInf = -3.0e38f;
constexpr uint32_t kIdxBlockBytes = 32;
constexpr uint32_t kEmptyId = 0xFFFFFFFFu;

__aicore__ inline uint32_t IdxAlignBytes(uint32_t b) { return (b + kIdxBlockBytes - 1) / kIdxBlockBytes * kIdxBlockBytes; }

template <typename T>
class LightningIndexerKernel {
 public:
  __aicore__ inline void Init(GM_ADDR q, GM_ADDR k, GM_ADDR w, GM_ADDR idx, const IndexerTiling& t) {
    t_ = t;
    qGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(q));
    kGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(k));
    wGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(w));
    idxGm_.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t*>(idx));
    const uint32_t dA = t.dAlign, kb = t.keyBlock, cand = t.candAlign;
    // Buffer sizes mirror av4_tiling::IndexerUbBytes.
    pipe_.InitBuffer(qBuf_, t.H * dA * 4);
    pipe_.InitBuffer(wBuf_, IdxAlignBytes(t.hAlign * 4));
    if constexpr (sizeof(T) != 4) {
      pipe_.InitBuffer(stageBuf_, IdxAlignBytes(t.H * dA * sizeof(T)));
      pipe_.InitBuffer(kFBuf_, IdxAlignBytes(kb * dA * 4));
    }
    pipe_.InitBuffer(kQue_, 2, IdxAlignBytes(kb * dA * sizeof(T)));
    pipe_.InitBuffer(prodBuf_, dA * 4);
    pipe_.InitBuffer(dotsBuf_, IdxAlignBytes(t.hAlign * 4));
    pipe_.InitBuffer(redBuf_, kIdxBlockBytes);
    pipe_.InitBuffer(tinyBuf_, kIdxBlockBytes);
    pipe_.InitBuffer(workBuf_, IdxAlignBytes(dA * 4));
    pipe_.InitBuffer(valBuf_, cand * 4);
    pipe_.InitBuffer(idBuf_, cand * 4);
    pipe_.InitBuffer(concatBuf_, cand * 8);
    pipe_.InitBuffer(sortedBuf_, cand * 8);
    pipe_.InitBuffer(tmpBuf_, cand * 8);
    pipe_.InitBuffer(outBuf_, IdxAlignBytes(t.outAlign * 4));
  }

  __aicore__ inline void Process() {
    const int64_t core = GetBlockIdx();
    if (core >= static_cast<int64_t>(t_.usedCores) || t_.topk == 0) return;
    for (uint32_t row = t_.rowSplit[core]; row < t_.rowSplit[core + 1]; ++row) {
      const uint32_t pos = t_.startPos + row % t_.S;
      const uint32_t vis0 = (pos + 1) / t_.ratio;
      const uint32_t vis = vis0 < t_.N ? vis0 : t_.N;
      LoadQuery(row);
      ResetCandidates();
      const uint32_t kb = t_.keyBlock, nb = (vis + kb - 1) / kb;
      if (nb) CopyInKeys(row, 0, vis < kb ? vis : kb);
      for (uint32_t b = 0; b < nb; ++b) {
        const uint32_t j0 = b * kb, nj = j0 + kb <= vis ? kb : vis - j0;
        if (b + 1 < nb) CopyInKeys(row, j0 + kb, j0 + 2 * kb <= vis ? kb : vis - j0 - kb);
        ScoreBlock(j0, nj);
        SelectTopK();
      }
      WriteSorted(row);
    }
  }

 private:
  __aicore__ inline void LoadQuery(uint32_t row) {
    LocalTensor<float> qf = qBuf_.Get<float>(), wf = wBuf_.Get<float>();
    PipeSync<HardEvent::V_MTE2>();   // plain buffers: the previous row's vector ops must be done reading them
    const uint32_t padBlocks = (t_.dAlign - t_.d) * sizeof(T) / kIdxBlockBytes;
    const uint64_t qoff = static_cast<uint64_t>(row) * t_.H * t_.d;
    if constexpr (sizeof(T) == 4) {
      DataCopyPad(qf, qGm_[qoff], DataCopyExtParams(t_.H, t_.d * 4, 0, padBlocks, 0),
                  DataCopyPadExtParams<T>(true, 0, 0, 0.0f));
      DataCopyPad(wf, wGm_[static_cast<uint64_t>(row) * t_.H], DataCopyExtParams(1, t_.H * 4, 0, 0, 0),
                  DataCopyPadExtParams<T>(false, 0, 0, 0.0f));
      PipeSync<HardEvent::MTE2_V>();
    } else {
      LocalTensor<T> st = stageBuf_.Get<T>();
      DataCopyPad(st, qGm_[qoff], DataCopyExtParams(t_.H, t_.d * sizeof(T), 0, padBlocks, 0),
                  DataCopyPadExtParams<T>(true, 0, 0, T{}));
      PipeSync<HardEvent::MTE2_V>();
      Cast(qf, st, RoundMode::CAST_NONE, t_.H * t_.dAlign);
      PipeBarrier<PIPE_V>();
      PipeSync<HardEvent::V_MTE2>();
      DataCopyPad(st, wGm_[static_cast<uint64_t>(row) * t_.H], DataCopyExtParams(1, t_.H * sizeof(T), 0, 0, 0),
                  DataCopyPadExtParams<T>(false, 0, 0, T{}));
      PipeSync<HardEvent::MTE2_V>();
      Cast(wf, st, RoundMode::CAST_NONE, t_.H);
    }
    PipeBarrier<PIPE_V>();
  }

  __aicore__ inline void ResetCandidates() {
    LocalTensor<float> val = valBuf_.Get<float>();
    LocalTensor<uint32_t> id = idBuf_.Get<uint32_t>();
    Duplicate(val, kIdxNegInf, static_cast<int32_t>(t_.candAlign));
    Duplicate(id, kEmptyId, static_cast<int32_t>(t_.candAlign));
    PipeBarrier<PIPE_V>();
  }

  __aicore__ inline void CopyInKeys(uint32_t row, uint32_t j0, uint32_t nj) {
    LocalTensor<T> blk = kQue_.template AllocTensor<T>();
    const uint64_t base = static_cast<uint64_t>(row / t_.S) * t_.N + j0;
    const uint32_t padBlocks = (t_.dAlign - t_.d) * sizeof(T) / kIdxBlockBytes;
    DataCopyPad(blk, kGm_[base * t_.d], DataCopyExtParams(static_cast<uint16_t>(nj), t_.d * sizeof(T), 0, padBlocks, 0),
                DataCopyPadExtParams<T>(true, 0, 0, T{}));
    kQue_.EnQue(blk);
  }

  // scores of keys j0 .. j0+nj-1 into candidate slots topk .. topk+nj-1
  __aicore__ inline void ScoreBlock(uint32_t j0, uint32_t nj) {
    LocalTensor<T> blk = kQue_.template DeQue<T>();
    LocalTensor<float> kf;
    if constexpr (sizeof(T) == 4) {
      kf = blk;
    } else {
      kf = kFBuf_.Get<float>();
      Cast(kf, blk, RoundMode::CAST_NONE, nj * t_.dAlign);
      PipeBarrier<PIPE_V>();
    }
    LocalTensor<float> qf = qBuf_.Get<float>(), wf = wBuf_.Get<float>(), prod = prodBuf_.Get<float>();
    LocalTensor<float> dots = dotsBuf_.Get<float>(), red = redBuf_.Get<float>(), work = workBuf_.Get<float>();
    LocalTensor<float> val = valBuf_.Get<float>();
    LocalTensor<uint32_t> id = idBuf_.Get<uint32_t>();
    for (uint32_t jj = 0; jj < nj; ++jj) {
      for (uint32_t h = 0; h < t_.H; ++h) {
        Mul(prod, qf[h * t_.dAlign], kf[jj * t_.dAlign], static_cast<int32_t>(t_.d));
        PipeBarrier<PIPE_V>();
        ReduceSum(red, prod, work, static_cast<int32_t>(t_.d));
        PipeSync<HardEvent::V_S>();
        dots.SetValue(h, red.GetValue(0));
      }
      PipeSync<HardEvent::S_V>();
      Relu(dots, dots, static_cast<int32_t>(t_.H));
      PipeBarrier<PIPE_V>();
      Mul(dots, dots, wf, static_cast<int32_t>(t_.H));
      PipeBarrier<PIPE_V>();
      ReduceSum(red, dots, work, static_cast<int32_t>(t_.H));
      PipeSync<HardEvent::V_S>();
      val.SetValue(t_.topk + jj, red.GetValue(0));
      id.SetValue(t_.topk + jj, j0 + jj);
    }
    for (uint32_t jj = t_.topk + nj; jj < t_.candAlign; ++jj) val.SetValue(jj, kIdxNegInf), id.SetValue(jj, kEmptyId);
    PipeSync<HardEvent::S_V>();
    kQue_.FreeTensor(blk);
  }

  // Keep the best topk of [current best | new block] in slots 0 .. topk-1 (descending by score).
  __aicore__ inline void SelectTopK() {
    LocalTensor<float> val = valBuf_.Get<float>(), concat = concatBuf_.Get<float>();
    LocalTensor<float> sorted = sortedBuf_.Get<float>(), tmp = tmpBuf_.Get<float>();
    LocalTensor<uint32_t> id = idBuf_.Get<uint32_t>();
    const int32_t rep = static_cast<int32_t>(t_.candAlign / 32);
    DataCopy(concat, val, t_.candAlign);
    PipeBarrier<PIPE_V>();
    Sort<float, true>(sorted, concat, id, tmp, rep);
    PipeBarrier<PIPE_V>();
    Extract(val, id, sorted, rep);
    PipeBarrier<PIPE_V>();
  }

  // Final set in ascending id order: sort by key = -id (empty ids sort last), store as int32 (-1 for empty).
  __aicore__ inline void WriteSorted(uint32_t row) {
    LocalTensor<float> val = valBuf_.Get<float>(), concat = concatBuf_.Get<float>();
    LocalTensor<float> sorted = sortedBuf_.Get<float>(), tmp = tmpBuf_.Get<float>();
    LocalTensor<uint32_t> id = idBuf_.Get<uint32_t>();
    PipeSync<HardEvent::V_S>();
    for (uint32_t j = 0; j < t_.candAlign; ++j) {
      const uint32_t i = j < t_.topk ? id.GetValue(j) : kEmptyId;
      if (j >= t_.topk) id.SetValue(j, kEmptyId);
      concat.SetValue(j, i == kEmptyId ? kIdxNegInf : -static_cast<float>(i));
    }
    PipeSync<HardEvent::S_V>();
    const int32_t rep = static_cast<int32_t>(t_.candAlign / 32);
    Sort<float, true>(sorted, concat, id, tmp, rep);
    PipeBarrier<PIPE_V>();
    Extract(val, id, sorted, rep);
    PipeBarrier<PIPE_V>();
    LocalTensor<int32_t> out = outBuf_.Get<int32_t>();
    DataCopy(out, id.template ReinterpretCast<int32_t>(), t_.outAlign);
    PipeSync<HardEvent::V_MTE3>();
    DataCopyPad(idxGm_[static_cast<uint64_t>(row) * t_.topk], out, DataCopyExtParams(1, t_.topk * 4, 0, 0, 0));
    PipeSync<HardEvent::MTE3_V>();
  }

  IndexerTiling t_;
  TPipe pipe_;
  TQue<TPosition::VECIN, 2> kQue_;
  TBuf<TPosition::VECCALC> qBuf_, wBuf_, stageBuf_, kFBuf_, prodBuf_, dotsBuf_, redBuf_, tinyBuf_, workBuf_;
  TBuf<TPosition::VECCALC> valBuf_, idBuf_, concatBuf_, sortedBuf_, tmpBuf_, outBuf_;
  GlobalTensor<T> qGm_, kGm_, wGm_;
  GlobalTensor<int32_t> idxGm_;
};

}  // namespace av4

#ifndef DTYPE_QUERY
#define DTYPE_QUERY float
#endif

extern "C" __global__ __aicore__ void av4_lightning_indexer(GM_ADDR query, GM_ADDR key, GM_ADDR weights,
                                                            GM_ADDR sparse_indices, GM_ADDR workspace, GM_ADDR tiling) {
  (void)workspace;
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);   // vector cores only: blockDim counts AIV cores
  REGISTER_TILING_DEFAULT(av4_tiling::IndexerTiling);
  GET_TILING_DATA_WITH_STRUCT(av4_tiling::IndexerTiling, td, tiling);
  av4::LightningIndexerKernel<DTYPE_QUERY> op;
  op.Init(query, key, weights, sparse_indices, td);
  op.Process();
}
