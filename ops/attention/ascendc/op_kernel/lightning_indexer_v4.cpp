// AV4LightningIndexer: V4's indexer over compressed entries (cmp_ratio), streaming top-k. Mixed AIC/AIV kernel
// (KERNEL_TYPE_MIX_AIC_1_2: one Cube core and its two vector cores per group).
// Semantics: ops/attention/reference.py lightning_indexer — score[s] = Σ_h w[h]·ReLU(q[h]·k[s]) over the visible
// entries s < floor((start_pos + t + 1) / cmp_ratio), the top min(topk, N) ids in ascending id order, -1 padded.
// FP4 simulation (Hadamard + E2M1 fake-quant of q/k) is elementwise pre-processing the binding applies before the
// launch (ops/attention/ascendc.py lightning_indexer); the kernel scores the q/k it is given.
//
// Work unit: a pair of consecutive query rows of one batch (t = 2j for vector sub-block 0, 2j+1 for sub-block 1),
// so one Cube product serves both vector cores and M = 2H = 128 fills a base tile at V4's 64 indexer heads.
//  Cube (AIC): q of the pair [2H, d] stays in L1 (ND->NZ); keys stream keyBlock (=128) at a time into two L1
//    buffers (ping-pong); per key block, L1->L0A/L0B in kTile passes (two L0 buffers each), Mmad accumulates in one
//    of two L0C buffers, Fixpipe writes the [2H, keyBlock] float scores into one of two workspace slots and
//    signals the vector cores (CrossCoreSetFlag, mode 2, flags 0/1); a slot is reused only after both vector cores
//    released it (flags 2/3). Q·Kᵀ needs no transposed load: key rows in NZ are already L0B's fractal layout.
//  Vector (AIV): copies its H rows of the slot into UB, releases the slot, ReLU, Σ_h w[h]·row_h (Muls + Axpy), masks
//    invisible keys, sorts the block's (score, id) pairs once (Sort: Sort32 + MrgSort) and MERGES them with the
//    running top-k list (one MrgSort of two sorted lists; the first topk pairs of the result are the new list):
//    memory O(topk + keyBlock), never the [S, N] score matrix, never a re-sort of the kept set.
//  At the end of a row the kept ids are ordered ascending (one Sort on key -id; empty slots last) and stored.
// Ties: the reference keeps the lower id among equal scores. Sort32 keeps input order among equal scores and
// MrgSort takes the lower-numbered list first (the running list, i.e. earlier = lower ids): an assumption about the
// hardware sort to verify on a chip (docs/ascendc.md).
#include "kernel_operator.h"
#include "attention_tiling_data.h"
#include "cube_tiles.h"
#include "pipe_sync.h"

using namespace AscendC;
using namespace av4_common;
using av4_tiling::IndexerTiling;

namespace av4 {

constexpr float kIdxNegInf = -3.0e38f;   // invisible / padding keys: below every real score
constexpr uint32_t kEmptyId = 0xFFFFFFFFu;   // -1 as int32
constexpr uint16_t kFlagReady = 0;       // + slot: Cube -> vector, scores of the slot written
constexpr uint16_t kFlagFree = 2;        // + slot: vector -> Cube, slot read (both sub-blocks)
constexpr uint8_t kSyncMode = 2;         // CrossCore mode 2: within one AIC + 2 AIV group

// The pair p's rows (flattened b*S + t) and the number of key blocks its later row needs.
struct IndexerPair {
  uint32_t row0, rows;      // first row, 1 or 2 rows
  uint32_t vis[2];          // visible keys of each row
  uint32_t blocks;          // key blocks streamed for the pair (the later row sees the most keys)
};

__aicore__ inline IndexerPair PairAt(const IndexerTiling& t, uint32_t p) {
  const uint32_t half = (t.S + 1) / 2, b = p / half, t0 = 2 * (p % half);
  IndexerPair r{};
  r.row0 = b * t.S + t0;
  r.rows = t0 + 1 < t.S ? 2 : 1;
  for (uint32_t i = 0; i < 2; ++i) {
    const uint32_t v = (t.startPos + t0 + i + 1) / t.ratio;
    r.vis[i] = i < r.rows ? (v < t.N ? v : t.N) : 0;
  }
  const uint32_t most = r.vis[r.rows - 1];
  r.blocks = (most + t.keyBlock - 1) / t.keyBlock;
  return r;
}

// ------------------------------------------------------------------------------------------------ Cube side
template <typename T>
class IndexerCube {
 public:
  __aicore__ inline void Init(GM_ADDR q, GM_ADDR k, GM_ADDR ws, const IndexerTiling& t) {
    t_ = t;
    qGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(q));
    kGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(k));
    wsGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(ws));
    kBlockElems_ = t.keyBlock * t.dAlign;
    aTileElems_ = t.mAlign * t.kTile;
    bTileElems_ = t.keyBlock * t.kTile;
    cTileElems_ = t.mAlign * t.keyBlock;
    // Sizes mirror av4_tiling::IndexerL1Bytes (L1) and the L0 budgets the host checks.
    pipe_.InitBuffer(qL1_, t.mAlign * t.dAlign * sizeof(T));
    pipe_.InitBuffer(kL1_, 2 * kBlockElems_ * sizeof(T));
    pipe_.InitBuffer(aL0_, 2 * aTileElems_ * sizeof(T));
    pipe_.InitBuffer(bL0_, 2 * bTileElems_ * sizeof(T));
    pipe_.InitBuffer(cL0_, 2 * cTileElems_ * sizeof(float));
    for (uint32_t i = 0; i < 2; ++i) {
      kFree_[i] = GetTPipePtr()->AllocEventID<HardEvent::MTE1_MTE2>();
      l0Free_[i] = GetTPipePtr()->AllocEventID<HardEvent::M_MTE1>();
      cFree_[i] = GetTPipePtr()->AllocEventID<HardEvent::FIX_M>();
    }
    qFree_ = GetTPipePtr()->AllocEventID<HardEvent::MTE1_MTE2>();
  }

  __aicore__ inline void Process() {
    const uint32_t g = GetBlockIdx();
    for (uint32_t i = 0; i < 2; ++i) {   // every buffer starts free
      SetFlag<HardEvent::MTE1_MTE2>(kFree_[i]);
      SetFlag<HardEvent::M_MTE1>(l0Free_[i]);
      SetFlag<HardEvent::FIX_M>(cFree_[i]);
    }
    SetFlag<HardEvent::MTE1_MTE2>(qFree_);
    uint32_t step = 0;
    if (g < t_.usedGroups && t_.topk > 0) {
      for (uint32_t p = t_.pairSplit[g]; p < t_.pairSplit[g + 1]; ++p) {
        const IndexerPair pr = PairAt(t_, p);
        if (pr.blocks == 0) continue;
        LoadQuery(pr);
        for (uint32_t blk = 0; blk < pr.blocks; ++blk, ++step) ScoreBlock(pr, blk, step);
        SetFlag<HardEvent::MTE1_MTE2>(qFree_);
      }
    }
    // the last (up to two) slots must be released before the kernel ends: flag counts balance
    for (uint32_t s = step >= 2 ? step - 2 : 0; s < step; ++s) CrossCoreWaitFlag<kSyncMode, PIPE_FIX>(kFlagFree + s % 2);
    for (uint32_t i = 0; i < 2; ++i) {
      WaitFlag<HardEvent::MTE1_MTE2>(kFree_[i]);
      WaitFlag<HardEvent::M_MTE1>(l0Free_[i]);
      WaitFlag<HardEvent::FIX_M>(cFree_[i]);
      GetTPipePtr()->ReleaseEventID<HardEvent::MTE1_MTE2>(kFree_[i]);
      GetTPipePtr()->ReleaseEventID<HardEvent::M_MTE1>(l0Free_[i]);
      GetTPipePtr()->ReleaseEventID<HardEvent::FIX_M>(cFree_[i]);
    }
    WaitFlag<HardEvent::MTE1_MTE2>(qFree_);
    GetTPipePtr()->ReleaseEventID<HardEvent::MTE1_MTE2>(qFree_);
  }

 private:
  // q of the pair's rows [rows*H, d] (contiguous in GM) -> L1 in NZ (fractal (m, k) at (k*mAlign + m*16) * C0)
  __aicore__ inline void LoadQuery(const IndexerPair& pr) {
    LocalTensor<T> q = qL1_.Get<T>();
    WaitFlag<HardEvent::MTE1_MTE2>(qFree_);   // the previous pair's L0A loads are done with it
    DataCopy(q, qGm_[static_cast<uint64_t>(pr.row0) * t_.H * t_.d], NdToNz(pr.rows * t_.H, t_.d, t_.d, t_.mAlign));
  }

  __aicore__ inline void ScoreBlock(const IndexerPair& pr, uint32_t blk, uint32_t step) {
    const uint32_t kb = t_.keyBlock, j0 = blk * kb, most = pr.vis[pr.rows - 1];
    const uint32_t nj = j0 + kb <= most ? kb : most - j0;
    const uint32_t kbuf = step % 2, slot = step % 2;
    LocalTensor<T> kL1 = kL1_.Get<T>()[kbuf * kBlockElems_];
    // keys j0 .. j0+nj-1 of the pair's batch -> L1 NZ (fractal (n, k) at (k*keyBlock + n*16) * C0)
    WaitFlag<HardEvent::MTE1_MTE2>(kFree_[kbuf]);
    const uint64_t batch = pr.row0 / t_.S;
    DataCopy(kL1, kGm_[(batch * t_.N + j0) * t_.d], NdToNz(nj, t_.d, t_.d, kb));
    PipeSync<HardEvent::MTE2_MTE1>();

    const uint32_t c0 = kC0<T>, mBlocks = t_.mAlign / 16, nBlocks = kb / 16;
    const uint32_t passes = (t_.dAlign + t_.kTile - 1) / t_.kTile;
    LocalTensor<float> c = cL0_.Get<float>()[slot * cTileElems_];
    WaitFlag<HardEvent::FIX_M>(cFree_[slot]);   // the Fixpipe of two steps ago has drained this L0C buffer
    LocalTensor<T> qL1 = qL1_.Get<T>();
    for (uint32_t ps = 0; ps < passes; ++ps) {
      const uint32_t k0 = ps * t_.kTile, kLen = k0 + t_.kTile <= t_.dAlign ? t_.kTile : t_.dAlign - k0;
      const uint32_t kBlocks = kLen / c0, kStart = k0 / c0, l0 = (step * passes + ps) % 2;
      LocalTensor<T> a = aL0_.Get<T>()[l0 * aTileElems_], b = bL0_.Get<T>()[l0 * bTileElems_];
      WaitFlag<HardEvent::M_MTE1>(l0Free_[l0]);
      LoadL0A(a, qL1, mBlocks, kStart, kBlocks);
      LoadL0BFromRows(b, kL1, nBlocks, kStart, kBlocks);   // key rows: already L0B's fractals
      if (ps + 1 == passes) SetFlag<HardEvent::MTE1_MTE2>(kFree_[kbuf]);   // key block fully in L0B
      PipeSync<HardEvent::MTE1_M>();
      Mmad(c, a, b, MmadShape(pr.rows * t_.H, kb, kLen, ps == 0));
      SetFlag<HardEvent::M_MTE1>(l0Free_[l0]);
    }
    PipeSync<HardEvent::M_FIX>();
    if (step >= 2) CrossCoreWaitFlag<kSyncMode, PIPE_FIX>(kFlagFree + slot);   // both vector cores read the slot
    Fixpipe(wsGm_[(static_cast<uint64_t>(GetBlockIdx()) * 2 + slot) * cTileElems_], c,
            FixpipeToNd<float>(kb, pr.rows * t_.H, t_.mAlign, kb));
    SetFlag<HardEvent::FIX_M>(cFree_[slot]);
    CrossCoreSetFlag<kSyncMode, PIPE_FIX>(kFlagReady + slot);
  }

  IndexerTiling t_;
  uint32_t kBlockElems_ = 0, aTileElems_ = 0, bTileElems_ = 0, cTileElems_ = 0;
  TPipe pipe_;
  TBuf<TPosition::A1> qL1_;
  TBuf<TPosition::B1> kL1_;
  TBuf<TPosition::A2> aL0_;
  TBuf<TPosition::B2> bL0_;
  TBuf<TPosition::CO1> cL0_;
  TEventID kFree_[2], l0Free_[2], cFree_[2], qFree_;
  GlobalTensor<T> qGm_, kGm_;
  GlobalTensor<float> wsGm_;
};

// ---------------------------------------------------------------------------------------------- vector side
template <typename T>
class IndexerVector {
 public:
  __aicore__ inline void Init(GM_ADDR w, GM_ADDR idx, GM_ADDR ws, const IndexerTiling& t) {
    t_ = t;
    wGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(w));
    idxGm_.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t*>(idx));
    wsGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(ws));
    const uint32_t kb = t.keyBlock, tA = t.topkAlign, listPairs = tA + kb;
    // Buffer sizes mirror av4_tiling::IndexerUbBytes.
    pipe_.InitBuffer(tileQue_, 2, t.H * kb * 4);
    pipe_.InitBuffer(wBuf_, t.hAlign * 4);
    if constexpr (sizeof(T) != 4) pipe_.InitBuffer(wStageBuf_, (t.hAlign * sizeof(T) + 31) / 32 * 32);
    pipe_.InitBuffer(scoreBuf_, kb * 4);
    pipe_.InitBuffer(iotaBuf_, kb * 4);
    pipe_.InitBuffer(blkIdBuf_, kb * 4);
    pipe_.InitBuffer(blkSortedBuf_, kb * 8);
    pipe_.InitBuffer(blkTmpBuf_, kb * 8);
    pipe_.InitBuffer(listBuf_, 2 * listPairs * 8);   // running list ping-pong: merge output alternates
    pipe_.InitBuffer(emptyBuf_, tA * 8);             // (kIdxNegInf, kEmptyId) x topkAlign
    pipe_.InitBuffer(idsBuf_, tA * 4);
    pipe_.InitBuffer(keyBuf_, tA * 4);
    pipe_.InitBuffer(finSortedBuf_, tA * 8);
    pipe_.InitBuffer(finTmpBuf_, tA * 8);
    LocalTensor<int32_t> iota = iotaBuf_.Get<int32_t>();
    for (uint32_t j = 0; j < kb; ++j) iota.SetValue(j, static_cast<int32_t>(j));
    LocalTensor<float> emptyScore = emptyBuf_.Get<float>();
    LocalTensor<uint32_t> emptyId = emptyBuf_.Get<uint32_t>();
    for (uint32_t j = 0; j < tA; ++j) emptyScore.SetValue(2 * j, kIdxNegInf), emptyId.SetValue(2 * j + 1, kEmptyId);
    PipeSync<HardEvent::S_V>();
  }

  __aicore__ inline void Process() {
    const uint32_t g = GetBlockIdx() / 2, v = GetSubBlockIdx();
    uint32_t step = 0;
    if (g >= t_.usedGroups || t_.topk == 0) return;
    for (uint32_t p = t_.pairSplit[g]; p < t_.pairSplit[g + 1]; ++p) {
      const IndexerPair pr = PairAt(t_, p);
      const bool mine = v < pr.rows;
      const uint32_t row = pr.row0 + v, vis = mine ? pr.vis[v] : 0;
      if (mine) StartRow(row);
      for (uint32_t blk = 0; blk < pr.blocks; ++blk, ++step) {
        const uint32_t slot = step % 2, j0 = blk * t_.keyBlock;
        CrossCoreWaitFlag<kSyncMode, PIPE_MTE2>(kFlagReady + slot);
        const bool use = mine && j0 < vis;
        if (use) {
          LocalTensor<float> tile = tileQue_.AllocTensor<float>();
          DataCopy(tile, wsGm_[((static_cast<uint64_t>(g) * 2 + slot) * t_.mAlign + v * t_.H) * t_.keyBlock],
                   t_.H * t_.keyBlock);
          tileQue_.EnQue(tile);
        }
        CrossCoreSetFlag<kSyncMode, PIPE_MTE2>(kFlagFree + slot);   // issued after the copy on MTE2: slot read
        if (use) MergeBlock(j0, vis - j0 < t_.keyBlock ? vis - j0 : t_.keyBlock);
      }
      if (mine) WriteRow(row, vis);
    }
  }

 private:
  __aicore__ inline void StartRow(uint32_t row) {
    LocalTensor<float> wf = wBuf_.Get<float>();
    PipeSync<HardEvent::V_MTE2>();   // the previous row's vector ops are done with the weights
    if constexpr (sizeof(T) == 4) {
      DataCopyPad(wf, wGm_[static_cast<uint64_t>(row) * t_.H], DataCopyExtParams(1, t_.H * 4, 0, 0, 0),
                  DataCopyPadExtParams<T>(false, 0, 0, 0.0f));
      PipeSync<HardEvent::MTE2_V>();
    } else {
      LocalTensor<T> st = wStageBuf_.Get<T>();
      DataCopyPad(st, wGm_[static_cast<uint64_t>(row) * t_.H], DataCopyExtParams(1, t_.H * sizeof(T), 0, 0, 0),
                  DataCopyPadExtParams<T>(false, 0, 0, T{}));
      PipeSync<HardEvent::MTE2_V>();
      Cast(wf, st, RoundMode::CAST_NONE, t_.H);
    }
    cur_ = 0;
    DataCopy(listBuf_.Get<float>(), emptyBuf_.Get<float>(), t_.topkAlign * 2);   // running list: all empty
    PipeBarrier<PIPE_V>();
    PipeSync<HardEvent::V_S>();
  }

  // keys j0 .. j0+nj-1 (nj visible of this row): score, sort, merge into the running list
  __aicore__ inline void MergeBlock(uint32_t j0, uint32_t nj) {
    const uint32_t kb = t_.keyBlock, listPairs = t_.topkAlign + kb;
    LocalTensor<float> tile = tileQue_.DeQue<float>();
    LocalTensor<float> sc = scoreBuf_.Get<float>(), wf = wBuf_.Get<float>();
    Relu(tile, tile, static_cast<int32_t>(t_.H * kb));
    PipeBarrier<PIPE_V>();
    Muls(sc, tile, wf.GetValue(0), static_cast<int32_t>(kb));
    for (uint32_t h = 1; h < t_.H; ++h) {
      PipeBarrier<PIPE_V>();
      Axpy(sc, tile[h * kb], wf.GetValue(h), static_cast<int32_t>(kb));
    }
    LocalTensor<int32_t> ids = blkIdBuf_.Get<int32_t>();
    Adds(ids, iotaBuf_.Get<int32_t>(), static_cast<int32_t>(j0), static_cast<int32_t>(kb));
    PipeBarrier<PIPE_V>();
    tileQue_.FreeTensor(tile);
    if (nj < kb) {   // keys past the row's visible range (or past N): never selected
      PipeSync<HardEvent::V_S>();
      for (uint32_t j = nj; j < kb; ++j) sc.SetValue(j, kIdxNegInf), ids.SetValue(j, -1);
      PipeSync<HardEvent::S_V>();
    }
    LocalTensor<float> sorted = blkSortedBuf_.Get<float>(), tmp = blkTmpBuf_.Get<float>();
    Sort<float, true>(sorted, sc, ids.ReinterpretCast<uint32_t>(), tmp, static_cast<int32_t>(kb / 32));
    PipeBarrier<PIPE_V>();
    LocalTensor<float> lists = listBuf_.Get<float>();
    LocalTensor<float> run = lists[cur_ * listPairs * 2], out = lists[(1 - cur_) * listPairs * 2];
    const uint16_t counts[4] = {static_cast<uint16_t>(t_.topk), static_cast<uint16_t>(kb), 0, 0};
    uint32_t taken[4] = {0, 0, 0, 0};
    MrgSort<float, false>(out, MrgSortSrcList<float>(run, sorted, sorted, sorted), counts, taken, 0b0011, 1);
    PipeBarrier<PIPE_V>();
    cur_ = 1 - cur_;
  }

  // the kept ids ascending (-1 last) -> sparse_indices[row]
  __aicore__ inline void WriteRow(uint32_t row, uint32_t vis) {
    const uint32_t tA = t_.topkAlign, listPairs = tA + t_.keyBlock;
    const uint32_t valid = vis < t_.topk ? vis : t_.topk;
    LocalTensor<uint32_t> ids = idsBuf_.Get<uint32_t>();
    LocalTensor<float> key = keyBuf_.Get<float>();
    LocalTensor<float> run = listBuf_.Get<float>()[cur_ * listPairs * 2];
    uint64_t n = 0;
    GatherMask(ids, run.ReinterpretCast<uint32_t>(), 2, false, 0,
               GatherMaskParams(1, static_cast<uint16_t>(tA / 32), 8, 0), n);
    PipeBarrier<PIPE_V>();
    Cast(key, ids.ReinterpretCast<int32_t>(), RoundMode::CAST_NONE, tA);
    PipeBarrier<PIPE_V>();
    Muls(key, key, -1.0f, static_cast<int32_t>(tA));   // descending by -id = ascending id
    PipeSync<HardEvent::V_S>();
    for (uint32_t j = valid; j < tA; ++j) key.SetValue(j, kIdxNegInf), ids.SetValue(j, kEmptyId);
    PipeSync<HardEvent::S_V>();
    LocalTensor<float> sorted = finSortedBuf_.Get<float>(), tmp = finTmpBuf_.Get<float>();
    Sort<float, true>(sorted, key, ids, tmp, static_cast<int32_t>(tA / 32));
    PipeBarrier<PIPE_V>();
    GatherMask(ids, sorted.ReinterpretCast<uint32_t>(), 2, false, 0,
               GatherMaskParams(1, static_cast<uint16_t>(tA / 32), 8, 0), n);
    PipeSync<HardEvent::V_MTE3>();
    DataCopyPad(idxGm_[static_cast<uint64_t>(row) * t_.topk], ids.ReinterpretCast<int32_t>(),
                DataCopyExtParams(1, t_.topk * 4, 0, 0, 0));
    PipeSync<HardEvent::MTE3_V>();
  }

  IndexerTiling t_;
  uint32_t cur_ = 0;
  TPipe pipe_;
  TQue<TPosition::VECIN, 2> tileQue_;
  TBuf<TPosition::VECCALC> wBuf_, wStageBuf_, scoreBuf_, iotaBuf_, blkIdBuf_, blkSortedBuf_, blkTmpBuf_;
  TBuf<TPosition::VECCALC> listBuf_, emptyBuf_, idsBuf_, keyBuf_, finSortedBuf_, finTmpBuf_;
  GlobalTensor<T> wGm_;
  GlobalTensor<int32_t> idxGm_;
  GlobalTensor<float> wsGm_;
};

}  // namespace av4

#ifndef DTYPE_QUERY
#define DTYPE_QUERY float
#endif

extern "C" __global__ __aicore__ void av4_lightning_indexer(GM_ADDR query, GM_ADDR key, GM_ADDR weights,
                                                            GM_ADDR sparse_indices, GM_ADDR workspace, GM_ADDR tiling) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_MIX_AIC_1_2);   // blockDim counts groups (1 AIC + 2 AIV)
  REGISTER_TILING_DEFAULT(av4_tiling::IndexerTiling);
  GET_TILING_DATA_WITH_STRUCT(av4_tiling::IndexerTiling, td, tiling);
  GM_ADDR ws = GetUserWorkspace(workspace);
  if ASCEND_IS_AIC {
    av4::IndexerCube<DTYPE_QUERY> op;
    op.Init(query, key, ws, td);
    op.Process();
  }
  if ASCEND_IS_AIV {
    av4::IndexerVector<DTYPE_QUERY> op;
    op.Init(weights, sparse_indices, ws, td);
    op.Process();
  }
}
