// MoeInitRoutingAv4 on the AI Vector cores (aclnnMoeInitRoutingV2 semantics, dropless and drop/pad):
//   x [T, H] (DTYPE_X), expert_idx [T, k] int32 -> expanded_x ([n, H] or [E, C, H]), expanded_row_idx [T*k] int32,
//   tokens_count_or_cumsum [E] int32, tokens_before_capacity [E] int32.
// The flattened rows i = t*k + j are a stable key sort by expert id, computed as a counting sort (no comparison
// sort needed: keys are small integers):
//   1. every core histograms its contiguous chunk of ids into its row of the workspace;       SyncAll
//   2. every core sums all rows (totals) and the rows of the cores before it (its prefix), so the destination of
//      each of its rows is start[e] + prefix[e] + running count (dropless) or e*C + position (drop/pad, -1 past C);
//      it writes its expanded_row_idx chunk and moves its rows GM -> UB -> GM in 32-byte aligned tiles of H
//      through a double-buffered TQueBind<VECIN, VECOUT> (its EnQue/DeQue hand the tile from MTE2 straight to
//      MTE3; a plain VECIN queue only syncs MTE2 -> V) -- DataCopyPad handles the ragged tail;
//   3. core 0 writes the per-expert counts; each core zero-fills its share of the rows nobody writes (padding
//      slots in drop/pad, the inactive tail in dropless).
// Ids outside [0, E) are inactive (key E): row idx -1, no row (expert-parallel local selection).
#include "kernel_operator.h"
#ifdef AV4_ASCENDC_STANDIN
#include "decls_moe.h"
#endif
#include "moe_tiling_data.h"
#include "pipe_sync.h"

namespace moe_av4 {
using namespace AscendC;
using av4_common::PipeSync;

__aicore__ inline void InitRowRange(const MoeRowSplit& s, int64_t core, int64_t* begin, int64_t* count) {
  *count = s.rowsSmall + (core < s.bigCores ? 1 : 0);
  *begin = core * s.rowsSmall + (core < s.bigCores ? core : s.bigCores);
}

template <typename T>
class InitRoutingKernel {
 public:
  __aicore__ inline InitRoutingKernel() {}

  __aicore__ inline void Init(GM_ADDR x, GM_ADDR expertIdx, GM_ADDR expandedX, GM_ADDR rowIdx, GM_ADDR countOut,
                              GM_ADDR beforeOut, GM_ADDR workspace, const MoeInitRoutingTilingData* td, TPipe* pipe) {
    td_ = td;
    core_ = GetBlockIdx();
    InitRowRange(td->split, core_, &begin_, &count_);
    const int64_t N = td->tokens * td->k;
    xGm_.SetGlobalBuffer((__gm__ T*)x, static_cast<uint64_t>(td->tokens * td->hidden));
    outGm_.SetGlobalBuffer((__gm__ T*)expandedX, static_cast<uint64_t>(td->outRows * td->hidden));
    idsGm_.SetGlobalBuffer((__gm__ int32_t*)expertIdx, static_cast<uint64_t>(N));
    rowGm_.SetGlobalBuffer((__gm__ int32_t*)rowIdx, static_cast<uint64_t>(N));
    countGm_.SetGlobalBuffer((__gm__ int32_t*)countOut, static_cast<uint64_t>(td->experts));
    beforeGm_.SetGlobalBuffer((__gm__ int32_t*)beforeOut, static_cast<uint64_t>(td->experts));
    histGm_.SetGlobalBuffer((__gm__ int32_t*)GetUserWorkspace(workspace),
                            static_cast<uint64_t>(td->split.usedCores * td->histStride));
    pipe->InitBuffer(idsBuf_, static_cast<uint32_t>(td->idsPerLoop * sizeof(int32_t)));
    pipe->InitBuffer(histBuf_, static_cast<uint32_t>(td->histStride * sizeof(int32_t)));
    pipe->InitBuffer(totalBuf_, static_cast<uint32_t>(td->histStride * sizeof(int32_t)));
    pipe->InitBuffer(stageBuf_, static_cast<uint32_t>(td->histStride * sizeof(int32_t)));
    pipe->InitBuffer(copyQue_, 2, static_cast<uint32_t>(td->hTile * sizeof(T)));
    pipe->InitBuffer(zeroBuf_, static_cast<uint32_t>(td->hTile * sizeof(T)));
    ids_ = idsBuf_.Get<int32_t>();
    hist_ = histBuf_.Get<int32_t>();
    total_ = totalBuf_.Get<int32_t>();
    stage_ = stageBuf_.Get<int32_t>();
  }

  __aicore__ inline void Process() {
    Histogram();
    SyncAll<true>();
    Prefix();
    RouteAndCopy();
    if (core_ == 0) WriteCounts();
    ZeroFill();
  }

 private:
  __aicore__ inline int32_t Key(int32_t e) const {
    return (e >= 0 && e < td_->experts) ? e : static_cast<int32_t>(td_->experts);
  }

  __aicore__ inline void LoadIds(int64_t i0, int64_t n) {
    DataCopyPad(ids_, idsGm_[i0], DataCopyExtParams(1, static_cast<uint32_t>(n * sizeof(int32_t)), 0, 0, 0),
                DataCopyPadExtParams<int32_t>(false, 0, 0, 0));
    PipeSync<HardEvent::MTE2_S>();
  }

  // 1. histogram of this core's chunk -> workspace row core_
  __aicore__ inline void Histogram() {
    Duplicate(hist_, 0, static_cast<int32_t>(td_->histStride));
    PipeSync<HardEvent::V_S>();
    for (int64_t i0 = 0; i0 < count_; i0 += td_->idsPerLoop) {
      const int64_t n = count_ - i0 < td_->idsPerLoop ? count_ - i0 : td_->idsPerLoop;
      LoadIds(begin_ + i0, n);
      for (int64_t i = 0; i < n; ++i) {
        const uint32_t key = static_cast<uint32_t>(Key(ids_.GetValue(static_cast<uint32_t>(i))));
        hist_.SetValue(key, hist_.GetValue(key) + 1);
      }
      PipeSync<HardEvent::S_MTE2>();
    }
    PipeSync<HardEvent::S_MTE3>();
    DataCopyPad(histGm_[core_ * td_->histStride], hist_,
                DataCopyExtParams(1, static_cast<uint32_t>(td_->histStride * sizeof(int32_t)), 0, 0, 0));
  }

  // 2a. totals over all cores (total_) and the running fill of this core's experts (hist_ := rows of earlier cores)
  __aicore__ inline void Prefix() {
    const int32_t len = static_cast<int32_t>(td_->histStride);
    Duplicate(total_, 0, len);
    Duplicate(hist_, 0, len);
    for (int64_t c = 0; c < td_->split.usedCores; ++c) {
      PipeSync<HardEvent::V_MTE2>();
      DataCopyPad(stage_, histGm_[c * td_->histStride],
                  DataCopyExtParams(1, static_cast<uint32_t>(len * sizeof(int32_t)), 0, 0, 0),
                  DataCopyPadExtParams<int32_t>(false, 0, 0, 0));
      PipeSync<HardEvent::MTE2_V>();
      Add(total_, total_, stage_, len);
      if (c < core_) Add(hist_, hist_, stage_, len);
    }
    PipeSync<HardEvent::V_S>();
    // dropless: stage_[e] = start of expert e = active rows of experts < e (exclusive cumsum of the totals)
    int64_t run = 0;
    for (int64_t e = 0; e < td_->experts; ++e) {
      stage_.SetValue(static_cast<uint32_t>(e), static_cast<int32_t>(run));
      run += total_.GetValue(static_cast<uint32_t>(e));
    }
    active_ = run;
  }

  // 2b. destinations of this core's rows, expanded_row_idx, row copies
  __aicore__ inline void RouteAndCopy() {
    for (int64_t i0 = 0; i0 < count_; i0 += td_->idsPerLoop) {
      const int64_t n = count_ - i0 < td_->idsPerLoop ? count_ - i0 : td_->idsPerLoop;
      LoadIds(begin_ + i0, n);
      for (int64_t i = 0; i < n; ++i) {
        const uint32_t key = static_cast<uint32_t>(Key(ids_.GetValue(static_cast<uint32_t>(i))));
        const int32_t pos = hist_.GetValue(key);
        hist_.SetValue(key, pos + 1);
        int32_t dest = -1;
        if (key < static_cast<uint32_t>(td_->experts)) {
          if (td_->dropPad) {
            dest = pos < td_->capacity ? static_cast<int32_t>(key * td_->capacity + pos) : -1;
          } else {
            dest = stage_.GetValue(key) + pos;
          }
        }
        ids_.SetValue(static_cast<uint32_t>(i), dest);
      }
      PipeSync<HardEvent::S_MTE3>();
      DataCopyPad(rowGm_[begin_ + i0], ids_, DataCopyExtParams(1, static_cast<uint32_t>(n * sizeof(int32_t)), 0, 0, 0));
      for (int64_t i = 0; i < n; ++i) {
        const int64_t dest = ids_.GetValue(static_cast<uint32_t>(i));
        if (dest < 0 || dest >= td_->outRows) continue;
        CopyRow((begin_ + i0 + i) / td_->k, dest);
      }
      PipeSync<HardEvent::MTE3_MTE2>();  // ids_ is reloaded next pass: the row-index copy out must be done
    }
  }

  __aicore__ inline void CopyRow(int64_t src, int64_t dst) {
    const int64_t H = td_->hidden;
    for (int64_t t = 0; t < td_->hTiles; ++t) {
      const int64_t len = t == td_->hTiles - 1 ? td_->hTail : td_->hTile;
      const int64_t h0 = t * td_->hTile;
      LocalTensor<T> buf = copyQue_.AllocTensor<T>();
      DataCopyPad(buf, xGm_[src * H + h0], DataCopyExtParams(1, static_cast<uint32_t>(len * sizeof(T)), 0, 0, 0),
                  DataCopyPadExtParams<T>(false, 0, 0, T(0)));
      copyQue_.EnQue(buf);
      LocalTensor<T> out = copyQue_.DeQue<T>();
      DataCopyPad(outGm_[dst * H + h0], out, DataCopyExtParams(1, static_cast<uint32_t>(len * sizeof(T)), 0, 0, 0));
      copyQue_.FreeTensor(out);
    }
  }

  // 3a. counts (core 0)
  __aicore__ inline void WriteCounts() {
    int64_t run = 0;
    for (int64_t e = 0; e < td_->experts; ++e) {
      const int32_t before = total_.GetValue(static_cast<uint32_t>(e));
      const int32_t kept = td_->dropPad && before > td_->capacity ? static_cast<int32_t>(td_->capacity) : before;
      run += kept;
      stage_.SetValue(static_cast<uint32_t>(e), td_->countFlag == 1 ? static_cast<int32_t>(run) : kept);
    }
    PipeSync<HardEvent::S_MTE3>();
    const DataCopyExtParams p(1, static_cast<uint32_t>(td_->experts * sizeof(int32_t)), 0, 0, 0);
    DataCopyPad(countGm_, stage_, p);
    DataCopyPad(beforeGm_, total_, p);
  }

  // 3b. rows nobody writes are zero
  __aicore__ inline void ZeroFill() {
    LocalTensor<T> zero = zeroBuf_.Get<T>();
    Duplicate(zero, T(0), static_cast<int32_t>(td_->hTile));
    PipeSync<HardEvent::V_MTE3>();
    const int64_t cores = td_->split.usedCores;
    if (td_->dropPad) {  // experts split over cores: rows e*C + kept_e .. (e+1)*C
      const int64_t per = td_->experts / cores, big = td_->experts % cores;
      const int64_t e0 = core_ * per + (core_ < big ? core_ : big);
      const int64_t ne = per + (core_ < big ? 1 : 0);
      for (int64_t e = e0; e < e0 + ne; ++e) {
        const int64_t kept = total_.GetValue(static_cast<uint32_t>(e));
        for (int64_t r = (kept < td_->capacity ? kept : td_->capacity); r < td_->capacity; ++r)
          ZeroRow(e * td_->capacity + r, zero);
      }
    } else {  // inactive tail [active, outRows) split over cores
      const int64_t first = active_ < td_->outRows ? active_ : td_->outRows;
      const int64_t rows = td_->outRows - first;
      const int64_t per = rows / cores, big = rows % cores;
      const int64_t r0 = first + core_ * per + (core_ < big ? core_ : big);
      const int64_t nr = per + (core_ < big ? 1 : 0);
      for (int64_t r = r0; r < r0 + nr; ++r) ZeroRow(r, zero);
    }
  }

  __aicore__ inline void ZeroRow(int64_t row, const LocalTensor<T>& zero) {
    for (int64_t t = 0; t < td_->hTiles; ++t) {
      const int64_t len = t == td_->hTiles - 1 ? td_->hTail : td_->hTile;
      DataCopyPad(outGm_[row * td_->hidden + t * td_->hTile], zero,
                  DataCopyExtParams(1, static_cast<uint32_t>(len * sizeof(T)), 0, 0, 0));
    }
  }

  const MoeInitRoutingTilingData* td_ = nullptr;
  int64_t core_ = 0, begin_ = 0, count_ = 0, active_ = 0;
  GlobalTensor<T> xGm_, outGm_;
  GlobalTensor<int32_t> idsGm_, rowGm_, countGm_, beforeGm_, histGm_;
  TBuf<TPosition::VECCALC> idsBuf_, histBuf_, totalBuf_, stageBuf_, zeroBuf_;
  TQueBind<TPosition::VECIN, TPosition::VECOUT, 2> copyQue_;   // GM -> UB -> GM, no vector stage
  LocalTensor<int32_t> ids_, hist_, total_, stage_;
};

}  // namespace moe_av4

#ifndef AV4_KERNEL_CLASSES_ONLY  // host-side probes (tiling/ub_probe.cc) compile the classes only
#include "moe_kernel_run.h"
extern "C" __global__ __aicore__ void moe_init_routing_av4(GM_ADDR x, GM_ADDR expertIdx, GM_ADDR expandedX,
                                                           GM_ADDR expandedRowIdx, GM_ADDR tokensCountOrCumsum,
                                                           GM_ADDR tokensBeforeCapacity, GM_ADDR workspace,
                                                           GM_ADDR tiling) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  REGISTER_TILING_DEFAULT(moe_av4::MoeInitRoutingTilingData);
  GET_TILING_DATA_WITH_STRUCT(moe_av4::MoeInitRoutingTilingData, td, tiling);
  moe_av4::RunKernel<moe_av4::InitRoutingKernel<DTYPE_X>>(td, x, expertIdx, expandedX, expandedRowIdx,
                                                          tokensCountOrCumsum, tokensBeforeCapacity, workspace);
}
#endif
