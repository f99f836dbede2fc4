// AV4SparseAttnSharedKV: shared-KV MQA over (window ids ‖ compressed ids) or (window ids ‖ every visible compressed
// entry, HCA), attention sink in the denominator only, float32 online softmax. Two designs by tiling key: 0 (float32
// q/kv) the vector-core kernel below (SparseAttnKernel), 1 (bf16 / fp16) Q·Kᵀ and P·V on the Cube unit with the
// softmax on the vector cores (SparseAttnCube + SparseAttnVector, mixed AIC/AIV).
// Semantics: ops/attention/reference.py sparse_attention / hca_attention. Tiling: op_host/attention_tiling.h.
//
// Per core: the query rows rowSplit[core] .. rowSplit[core+1] (balanced by candidate count on the host). Per row and
// head group: q of the group and its accumulator stay in UB; the valid candidate ids are compacted once per row
// (-1 skipped); KV rows are gathered entryBlock at a time through a double-buffered VECIN queue (block k+1 is
// requested before block k is consumed); scores, running max/sum and P·V are float32. Output: out [B·S, H, D] in
// the input dtype, lse [B·S, H] float32 (the backward's softmax statistics).
// Key 0's dot products use Mul + ReduceSum per (head, row) on the vector unit (float32 only: the Cube's float32 P·V
// would need transposed 32-bit fractal loads).
#include "kernel_operator.h"
#include "attention_tiling_data.h"
#include "cube_tiles.h"
#include "pipe_sync.h"

using namespace AscendC;
using namespace av4_common;
using av4_tiling::SparseAttnTiling;

namespace av4 {

constexpr float kNegInf = -3.0e38f;   // finite "minus infinity": exp(x - m) stays exactly 0, never inf - inf
constexpr uint32_t kBlockBytes = 32;

__aicore__ inline uint32_t AlignBytes(uint32_t b) { return (b + kBlockBytes - 1) / kBlockBytes * kBlockBytes; }

// A row's candidate id lists in GM: the window ids [B·S, W] and, when the op has one (K > 0), the compressed list
// [B·S, K] (cmp_idx is an optional input).
struct IdListsGm {
  __aicore__ inline void Bind(GM_ADDR widx, GM_ADDR cidx, const SparseAttnTiling& t) {
    win.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t*>(widx));
    hasList = t.K > 0;
    if (hasList) cmp.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t*>(cidx));
  }
  GlobalTensor<int32_t> win, cmp;
  bool hasList = false;
};

// HCA (cmp_ratio > 0): the compressed entries query row `row` sees, all of them attended without an index list;
// 0 otherwise
__aicore__ inline uint32_t HcaRange(const SparseAttnTiling& t, uint32_t row) {
  if (t.ratio == 0) return 0;
  const uint32_t vis = (t.startPos + row % t.S + 1) / t.ratio;
  return vis < t.nCmp ? vis : t.nCmp;
}

// The row's window ids, and its compressed ids when there is a list, GM -> raw (UB): window ids from 0 on, the list
// from the returned (32-byte aligned) offset on. -1 entries are kept (the caller skips them); when this returns the
// scalar unit may read raw.
__aicore__ inline uint32_t LoadIdLists(const LocalTensor<int32_t>& raw, const IdListsGm& ids, const SparseAttnTiling& t,
                                       uint32_t row) {
  const uint32_t wA = AlignBytes(t.W * 4) / 4;
  DataCopyPad(raw, ids.win[static_cast<uint64_t>(row) * t.W], DataCopyExtParams(1, t.W * 4, 0, 0, 0),
              DataCopyPadExtParams<int32_t>(false, 0, 0, 0));
  if (ids.hasList)
    DataCopyPad(raw[wA], ids.cmp[static_cast<uint64_t>(row) * t.K], DataCopyExtParams(1, t.K * 4, 0, 0, 0),
                DataCopyPadExtParams<int32_t>(false, 0, 0, 0));
  PipeSync<HardEvent::MTE2_S>();
  return wA;
}

// The end of a row's online softmax, the attention sink in the denominator only: for each of the nh heads (acc rows
// dA apart, D used) with mf = max(m, sink) and a = e^(m-mf), acc *= a / (l·a + e^(sink-mf)) in place and l becomes
// lse = mf + ln(l·a + e^(sink-mf)). Waits for the vector unit first; afterwards l may be stored (MTE3) and acc read.
__aicore__ inline void ApplySink(const LocalTensor<float>& acc, const LocalTensor<float>& m,
                                 const LocalTensor<float>& l, const LocalTensor<float>& sink,
                                 const LocalTensor<float>& tiny, uint32_t nh, uint32_t dA, uint32_t D) {
  PipeSync<HardEvent::V_S>();
  for (uint32_t h = 0; h < nh; ++h) {
    const float mh = m.GetValue(h), s = sink.GetValue(h), mf = mh > s ? mh : s;
    tiny.SetValue(0, mh - mf);
    tiny.SetValue(1, s - mf);
    PipeSync<HardEvent::S_V>();
    Exp(tiny, tiny, 8);
    PipeSync<HardEvent::V_S>();
    const float a = tiny.GetValue(0), den = l.GetValue(h) * a + tiny.GetValue(1);
    tiny.SetValue(0, den);
    PipeSync<HardEvent::S_V>();
    Ln(tiny, tiny, 8);
    Muls(acc[h * dA], acc[h * dA], a / den, static_cast<int32_t>(D));
    PipeSync<HardEvent::V_S>();
    l.SetValue(h, mf + tiny.GetValue(0));   // l now holds lse
  }
  PipeSync<HardEvent::S_MTE3>();
}

template <typename T>
class SparseAttnKernel {
 public:
  __aicore__ inline void Init(GM_ADDR q, GM_ADDR kv, GM_ADDR sinks, GM_ADDR widx, GM_ADDR cidx, GM_ADDR out,
                              GM_ADDR lse, const SparseAttnTiling& t) {
    t_ = t;
    qGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(q));
    kvGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(kv));
    sinkGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(sinks));
    ids_.Bind(widx, cidx, t);
    outGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(out));
    lseGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(lse));
    const uint32_t hg = t.headGroup, dA = t.dAlign, jb = t.entryBlock;
    // Buffer sizes mirror av4_tiling::AttnUbBytes (the host checks they fit the UB budget).
    pipe_.InitBuffer(qBuf_, hg * dA * 4);
    pipe_.InitBuffer(accBuf_, hg * dA * 4);
    if constexpr (sizeof(T) != 4) {
      pipe_.InitBuffer(qStageBuf_, AlignBytes(hg * dA * sizeof(T)));
      pipe_.InitBuffer(kvFBuf_, jb * dA * 4);
      pipe_.InitBuffer(outStageBuf_, AlignBytes(dA * sizeof(T)));
    }
    pipe_.InitBuffer(kvQue_, 2, AlignBytes(jb * dA * sizeof(T)));
    pipe_.InitBuffer(scoreBuf_, hg * t.entryAlign * 4);
    pipe_.InitBuffer(rawIdxBuf_, t.listAlign * 4);
    pipe_.InitBuffer(idsBuf_, t.listAlign * 4);
    pipe_.InitBuffer(mBuf_, AlignBytes(hg * 4));
    pipe_.InitBuffer(lBuf_, AlignBytes(hg * 4));
    pipe_.InitBuffer(sinkBuf_, AlignBytes(hg * 4));
    pipe_.InitBuffer(prodBuf_, dA * 4);
    pipe_.InitBuffer(redBuf_, kBlockBytes);
    pipe_.InitBuffer(tinyBuf_, kBlockBytes);
    pipe_.InitBuffer(workBuf_, AlignBytes(dA * 4) + kBlockBytes);
  }

  __aicore__ inline void Process() {
    const int64_t core = GetBlockIdx();
    if (core >= static_cast<int64_t>(t_.usedCores)) return;
    for (uint32_t row = t_.rowSplit[core]; row < t_.rowSplit[core + 1]; ++row) {
      nWin_ = CollectIds(row);
      nRange_ = HcaRange(t_, row);   // HCA: every visible compressed entry, never materialised as a list
      for (uint32_t g = 0; g < t_.numHeadGroups; ++g) {
        const uint32_t h0 = g * t_.headGroup;
        const uint32_t nh = h0 + t_.headGroup <= t_.H ? t_.headGroup : t_.H - h0;
        LoadGroup(row, h0, nh);
        Attend(row, nh);
        Finish(row, h0, nh);
      }
    }
  }

 private:
  // Window ids, then the explicit compressed list (if any), -1 dropped; returns the count.
  __aicore__ inline uint32_t CollectIds(uint32_t row) {
    LocalTensor<int32_t> raw = rawIdxBuf_.Get<int32_t>();
    LocalTensor<int32_t> ids = idsBuf_.Get<int32_t>();
    const uint32_t wA = LoadIdLists(raw, ids_, t_, row);
    uint32_t n = 0;
    for (uint32_t j = 0; j < t_.W; ++j) {
      const int32_t id = raw.GetValue(j);
      if (id >= 0) ids.SetValue(n++, id);
    }
    for (uint32_t j = 0; j < t_.K; ++j) {
      const int32_t id = raw.GetValue(wA + j);
      if (id >= 0) ids.SetValue(n++, id);
    }
    return n;
  }

  __aicore__ inline void LoadGroup(uint32_t row, uint32_t h0, uint32_t nh) {
    LocalTensor<float> qf = qBuf_.Get<float>();
    PipeSync<HardEvent::V_MTE2>();   // plain buffers: the previous group's vector ops must be done reading them
    const uint32_t dA = t_.dAlign;
    // nh rows of D elements, each padded to dAlign in UB (dst stride in 32-byte blocks)
    const uint32_t padBlocks = (dA - t_.D) * sizeof(T) / kBlockBytes;
    if constexpr (sizeof(T) == 4) {
      DataCopyPad(qf, qGm_[(static_cast<uint64_t>(row) * t_.H + h0) * t_.D],
                  DataCopyExtParams(nh, t_.D * 4, 0, padBlocks, 0), DataCopyPadExtParams<T>(true, 0, 0, 0.0f));
      PipeSync<HardEvent::MTE2_V>();
    } else {
      LocalTensor<T> qs = qStageBuf_.Get<T>();
      DataCopyPad(qs, qGm_[(static_cast<uint64_t>(row) * t_.H + h0) * t_.D],
                  DataCopyExtParams(nh, t_.D * sizeof(T), 0, padBlocks, 0), DataCopyPadExtParams<T>(true, 0, 0, T{}));
      PipeSync<HardEvent::MTE2_V>();
      Cast(qf, qs, RoundMode::CAST_NONE, nh * dA);
    }
    LocalTensor<float> acc = accBuf_.Get<float>();
    Duplicate(acc, 0.0f, static_cast<int32_t>(nh * dA));
    LocalTensor<float> sk = sinkBuf_.Get<float>();
    DataCopyPad(sk, sinkGm_[h0], DataCopyExtParams(1, nh * 4, 0, 0, 0), DataCopyPadExtParams<float>(false, 0, 0, 0.0f));
    LocalTensor<float> m = mBuf_.Get<float>();
    LocalTensor<float> l = lBuf_.Get<float>();
    PipeBarrier<PIPE_V>();
    PipeSync<HardEvent::V_S>();
    for (uint32_t h = 0; h < nh; ++h) m.SetValue(h, kNegInf), l.SetValue(h, 0.0f);
  }

  __aicore__ inline uint32_t IdAt(uint32_t j) {
    return j < nWin_ ? static_cast<uint32_t>(idsBuf_.Get<int32_t>().GetValue(j)) : t_.cmpOffset + (j - nWin_);
  }

  // Gather candidate rows j0 .. j0+nj-1 of the current row into one queue buffer.
  __aicore__ inline void CopyInBlock(uint32_t row, uint32_t j0, uint32_t nj) {
    LocalTensor<T> blk = kvQue_.template AllocTensor<T>();
    const uint64_t base = static_cast<uint64_t>(row / t_.S) * t_.N;
    const uint32_t padBlocks = (t_.dAlign - t_.D) * sizeof(T) / kBlockBytes;
    uint32_t jj = 0;
    while (jj < nj) {
      const uint32_t j = j0 + jj;
      if (j >= nWin_) {   // HCA range: consecutive rows, one strided copy for the rest of the block
        const uint32_t cnt = nj - jj;
        DataCopyPad(blk[jj * t_.dAlign], kvGm_[(base + IdAt(j)) * t_.D],
                    DataCopyExtParams(static_cast<uint16_t>(cnt), t_.D * sizeof(T), 0, padBlocks, 0),
                    DataCopyPadExtParams<T>(true, 0, 0, T{}));
        break;
      }
      DataCopyPad(blk[jj * t_.dAlign], kvGm_[(base + IdAt(j)) * t_.D], DataCopyExtParams(1, t_.D * sizeof(T), 0, 0, 0),
                  DataCopyPadExtParams<T>(true, 0, 0, T{}));
      ++jj;
    }
    kvQue_.EnQue(blk);
  }

  __aicore__ inline void Attend(uint32_t row, uint32_t nh) {
    const uint32_t n = nWin_ + nRange_;
    if (n == 0) return;
    const uint32_t jb = t_.entryBlock, nb = (n + jb - 1) / jb;
    CopyInBlock(row, 0, n < jb ? n : jb);
    for (uint32_t k = 0; k < nb; ++k) {
      const uint32_t j0 = k * jb, nj = (j0 + jb <= n) ? jb : n - j0;
      if (k + 1 < nb) {   // prefetch the next block while this one is consumed
        const uint32_t j1 = j0 + jb;
        CopyInBlock(row, j1, (j1 + jb <= n) ? jb : n - j1);
      }
      LocalTensor<T> blk = kvQue_.template DeQue<T>();
      LocalTensor<float> kvf;
      if constexpr (sizeof(T) == 4) {
        kvf = blk;
      } else {
        kvf = kvFBuf_.Get<float>();
        Cast(kvf, blk, RoundMode::CAST_NONE, nj * t_.dAlign);
        PipeBarrier<PIPE_V>();
      }
      Block(kvf, nh, nj);
      kvQue_.FreeTensor(blk);
    }
  }

  // One online-softmax step over nj gathered rows for the nh heads of the group.
  __aicore__ inline void Block(const LocalTensor<float>& kvf, uint32_t nh, uint32_t nj) {
    LocalTensor<float> qf = qBuf_.Get<float>(), acc = accBuf_.Get<float>(), sc = scoreBuf_.Get<float>();
    LocalTensor<float> prod = prodBuf_.Get<float>(), red = redBuf_.Get<float>(), tiny = tinyBuf_.Get<float>();
    LocalTensor<float> work = workBuf_.Get<float>(), m = mBuf_.Get<float>(), l = lBuf_.Get<float>();
    const uint32_t dA = t_.dAlign, eA = t_.entryAlign;
    for (uint32_t h = 0; h < nh; ++h) {
      for (uint32_t jj = 0; jj < nj; ++jj) {
        Mul(prod, qf[h * dA], kvf[jj * dA], static_cast<int32_t>(t_.D));
        PipeBarrier<PIPE_V>();
        ReduceSum(red, prod, work, static_cast<int32_t>(t_.D));
        PipeSync<HardEvent::V_S>();
        sc.SetValue(h * eA + jj, red.GetValue(0) * t_.scale);
      }
      for (uint32_t jj = nj; jj < eA; ++jj) sc.SetValue(h * eA + jj, kNegInf);
      PipeSync<HardEvent::S_V>();
      LocalTensor<float> s = sc[h * eA];
      ReduceMax(red, s, work, static_cast<int32_t>(nj));
      PipeSync<HardEvent::V_S>();
      const float mOld = m.GetValue(h), bm = red.GetValue(0);
      const float mNew = mOld > bm ? mOld : bm;
      Adds(s, s, -mNew, static_cast<int32_t>(nj));
      PipeBarrier<PIPE_V>();
      Exp(s, s, static_cast<int32_t>(nj));
      Duplicate(tiny, mOld - mNew, 8);
      PipeBarrier<PIPE_V>();
      Exp(tiny, tiny, 8);   // corr = exp(m_old - m_new) (0 on the first block: m_old is "minus infinity")
      ReduceSum(red, s, work, static_cast<int32_t>(nj));
      PipeSync<HardEvent::V_S>();
      const float corr = tiny.GetValue(0);
      l.SetValue(h, l.GetValue(h) * corr + red.GetValue(0));
      m.SetValue(h, mNew);
      LocalTensor<float> ah = acc[h * dA];
      Muls(ah, ah, corr, static_cast<int32_t>(t_.D));
      for (uint32_t jj = 0; jj < nj; ++jj) {
        PipeBarrier<PIPE_V>();
        Axpy(ah, kvf[jj * dA], s.GetValue(jj), static_cast<int32_t>(t_.D));
      }
      PipeBarrier<PIPE_V>();
    }
  }

  // Sink in the denominator only (ApplySink), then lse and the output rows to GM.
  __aicore__ inline void Finish(uint32_t row, uint32_t h0, uint32_t nh) {
    LocalTensor<float> acc = accBuf_.Get<float>(), l = lBuf_.Get<float>();
    const uint32_t dA = t_.dAlign;
    ApplySink(acc, mBuf_.Get<float>(), l, sinkBuf_.Get<float>(), tinyBuf_.Get<float>(), nh, dA, t_.D);
    DataCopyPad(lseGm_[static_cast<uint64_t>(row) * t_.H + h0], l, DataCopyExtParams(1, nh * 4, 0, 0, 0));
    PipeSync<HardEvent::V_MTE3>();
    const uint32_t padBlocks = (dA - t_.D) * sizeof(T) / kBlockBytes;
    const uint64_t dst = (static_cast<uint64_t>(row) * t_.H + h0) * t_.D;
    if constexpr (sizeof(T) == 4) {
      DataCopyPad(outGm_[dst], acc, DataCopyExtParams(nh, t_.D * 4, padBlocks, 0, 0));
    } else {
      LocalTensor<T> st = outStageBuf_.Get<T>();
      for (uint32_t h = 0; h < nh; ++h) {
        Cast(st, acc[h * dA], RoundMode::CAST_RINT, t_.D);
        PipeSync<HardEvent::V_MTE3>();
        DataCopyPad(outGm_[dst + static_cast<uint64_t>(h) * t_.D], st, DataCopyExtParams(1, t_.D * sizeof(T), 0, 0, 0));
        PipeSync<HardEvent::MTE3_V>();
      }
    }
    PipeSync<HardEvent::MTE3_V>();   // the next group overwrites acc / l
  }

  SparseAttnTiling t_;
  IdListsGm ids_;
  uint32_t nWin_ = 0, nRange_ = 0;
  TPipe pipe_;
  TQue<TPosition::VECIN, 2> kvQue_;
  TBuf<TPosition::VECCALC> qBuf_, accBuf_, qStageBuf_, kvFBuf_, outStageBuf_, scoreBuf_, rawIdxBuf_, idsBuf_;
  TBuf<TPosition::VECCALC> mBuf_, lBuf_, sinkBuf_, prodBuf_, redBuf_, tinyBuf_, workBuf_;
  GlobalTensor<T> qGm_, kvGm_, outGm_;
  GlobalTensor<float> sinkGm_, lseGm_;
};


// ====================================================================================== tiling key 1: the Cube
// 16-bit q / kv: per (query row, head group) the Cube computes S = Q·Kᵀ ([hg, D] x [D, 128 gathered entries]) and
// O = P·V ([hg, 128] x [128, D], V = the same gathered rows), the two vector cores of the group run the online
// softmax on their halves of the heads. Hand-over through the GM workspace, two slots per kind (S, P, O) with
// CrossCore flags (mode 2) counting blocks: the Cube computes QK(i+1) while the vector cores turn S(i) into P(i), and
// P·V(i) while they fold O(i-1) into their float accumulators. The Cube gathers the candidate rows itself (ids read
// from GM by its scalar unit, -1 skipped, consecutive ids in one ND->NZ copy) into two L1 buffers (ping-pong); K and
// V are the same L1 rows. Q·Kᵀ needs no transposed load (key rows in NZ are L0B's fractal layout); P·V loads V's
// fractals transposed (16 x 16, 16-bit). P is rounded to the input dtype for the Cube (as flash attention kernels
// do); the softmax statistics stay float32.
constexpr uint16_t kSReady = 0, kSFree = 1, kPReady = 2, kPFree = 3, kOReady = 4, kOFree = 5;
constexpr uint8_t kAttnSyncMode = 2;
constexpr uint32_t kEntryTile = 128;

// Valid candidate ids of a row in order: window ids, then the compressed list or the HCA range (-1 skipped).
struct CandidateCursor {
  __aicore__ inline void Reset(const SparseAttnTiling& t, const IdListsGm& ids, uint32_t row) {
    t_ = &t, ids_ = &ids, row_ = row, raw_ = 0, range_ = 0;
    nRange_ = HcaRange(t, row);
  }
  // count of valid candidates (scans the lists once)
  __aicore__ inline uint32_t Count() {
    uint32_t n = nRange_;
    for (uint32_t j = 0; j < t_->W; ++j) n += ids_->win.GetValue(static_cast<uint64_t>(row_) * t_->W + j) >= 0;
    if (ids_->hasList)
      for (uint32_t j = 0; j < t_->K; ++j) n += ids_->cmp.GetValue(static_cast<uint64_t>(row_) * t_->K + j) >= 0;
    return n;
  }
  // next valid id, in candidate order
  __aicore__ inline int32_t Next() {
    while (raw_ < t_->W) {
      const int32_t id = ids_->win.GetValue(static_cast<uint64_t>(row_) * t_->W + raw_++);
      if (id >= 0) return id;
    }
    if (ids_->hasList) {
      while (raw_ < t_->W + t_->K) {
        const int32_t id = ids_->cmp.GetValue(static_cast<uint64_t>(row_) * t_->K + (raw_++ - t_->W));
        if (id >= 0) return id;
      }
      return -1;
    }
    return range_ < nRange_ ? static_cast<int32_t>(t_->cmpOffset + range_++) : -1;
  }
  const SparseAttnTiling* t_ = nullptr;
  const IdListsGm* ids_ = nullptr;
  uint32_t row_ = 0, raw_ = 0, range_ = 0, nRange_ = 0;
};

__aicore__ inline uint32_t BlocksOf(uint32_t n) { return (n + kEntryTile - 1) / kEntryTile; }

template <typename T>
class SparseAttnCube {
 public:
  __aicore__ inline void Init(GM_ADDR q, GM_ADDR kv, GM_ADDR widx, GM_ADDR cidx, GM_ADDR ws, const SparseAttnTiling& t) {
    t_ = t;
    qGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(q));
    kvGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(kv));
    ids_.Bind(widx, cidx, t);
    const uint64_t base = static_cast<uint64_t>(GetBlockIdx()) * t.wsPerGroup;
    sGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(ws + base));
    pGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(ws + base + 2ull * t.mAlign * kEntryTile * 4));
    oGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(ws + base + 2ull * t.mAlign * kEntryTile * (4 + sizeof(T))));
    kvElems_ = kEntryTile * t.dAlign;
    tileElems_ = 32 * 1024 / sizeof(T);   // one 32 KiB L0A / L0B buffer
    cElems_ = t.mAlign * kEntryTile;
    // Sizes mirror av4_tiling::AttnCubeL1Bytes and the L0 budgets the host checks.
    pipe_.InitBuffer(qL1_, t.mAlign * t.dAlign * sizeof(T));
    pipe_.InitBuffer(kvL1_, 2 * kvElems_ * sizeof(T));
    pipe_.InitBuffer(pL1_, t.mAlign * kEntryTile * sizeof(T));
    pipe_.InitBuffer(aL0_, 2 * tileElems_ * sizeof(T));
    pipe_.InitBuffer(bL0_, 2 * tileElems_ * sizeof(T));
    pipe_.InitBuffer(cL0_, 2 * cElems_ * sizeof(float));
    // D's padding columns (the K of Q·Kᵀ) must be zero; copies never write them, so one fill at start suffices
    Fill(qL1_.Get<T>(), InitConstValueParams<T>(1, static_cast<uint16_t>(t.mAlign * t.dAlign * sizeof(T) / 32), 0,
                                                static_cast<T>(0.0f)));
    Fill(kvL1_.Get<T>(), InitConstValueParams<T>(1, static_cast<uint16_t>(2 * kvElems_ * sizeof(T) / 32), 0,
                                                 static_cast<T>(0.0f)));
    PipeSync<HardEvent::MTE2_MTE1>();
  }

  __aicore__ inline void Process() {
    TPipe* pp = GetTPipePtr();
    for (uint32_t i = 0; i < 2; ++i) {
      kvFree_[i] = pp->AllocEventID<HardEvent::MTE1_MTE2>();
      l0Free_[i] = pp->AllocEventID<HardEvent::M_MTE1>();
      cFree_[i] = pp->AllocEventID<HardEvent::FIX_M>();
      SetFlag<HardEvent::MTE1_MTE2>(kvFree_[i]);
      SetFlag<HardEvent::M_MTE1>(l0Free_[i]);
      SetFlag<HardEvent::FIX_M>(cFree_[i]);
    }
    qFree_ = pp->AllocEventID<HardEvent::MTE1_MTE2>();
    pFree_ = pp->AllocEventID<HardEvent::MTE1_MTE2>();
    SetFlag<HardEvent::MTE1_MTE2>(qFree_);
    SetFlag<HardEvent::MTE1_MTE2>(pFree_);
    const uint32_t g = GetBlockIdx();
    if (g < t_.usedCores) {
      for (uint32_t row = t_.rowSplit[g]; row < t_.rowSplit[g + 1]; ++row)
        for (uint32_t hg = 0; hg < t_.numHeadGroups; ++hg) Unit(row, hg * t_.headGroup);
    }
    // release what the vector cores still owe (flag counts balance at the end)
    for (uint64_t s = sSeq_ >= 2 ? sSeq_ - 2 : 0; s < sSeq_; ++s) CrossCoreWaitFlag<kAttnSyncMode, PIPE_FIX>(kSFree);
    for (uint64_t s = oSeq_ >= 2 ? oSeq_ - 2 : 0; s < oSeq_; ++s) CrossCoreWaitFlag<kAttnSyncMode, PIPE_FIX>(kOFree);
    for (uint32_t i = 0; i < 2; ++i) {
      WaitFlag<HardEvent::MTE1_MTE2>(kvFree_[i]);
      WaitFlag<HardEvent::M_MTE1>(l0Free_[i]);
      WaitFlag<HardEvent::FIX_M>(cFree_[i]);
      pp->ReleaseEventID<HardEvent::MTE1_MTE2>(kvFree_[i]);
      pp->ReleaseEventID<HardEvent::M_MTE1>(l0Free_[i]);
      pp->ReleaseEventID<HardEvent::FIX_M>(cFree_[i]);
    }
    WaitFlag<HardEvent::MTE1_MTE2>(qFree_);
    WaitFlag<HardEvent::MTE1_MTE2>(pFree_);
    pp->ReleaseEventID<HardEvent::MTE1_MTE2>(qFree_);
    pp->ReleaseEventID<HardEvent::MTE1_MTE2>(pFree_);
  }

 private:
  __aicore__ inline uint32_t Heads(uint32_t h0) const { return h0 + t_.headGroup <= t_.H ? t_.headGroup : t_.H - h0; }

  __aicore__ inline void Unit(uint32_t row, uint32_t h0) {
    cur_.Reset(t_, ids_, row);
    const uint32_t n = cur_.Count(), nBlk = BlocksOf(n), hg = Heads(h0);
    if (nBlk == 0) return;
    LocalTensor<T> q = qL1_.Get<T>();
    WaitFlag<HardEvent::MTE1_MTE2>(qFree_);   // the previous unit's L0A loads are done with it
    DataCopy(q, qGm_[(static_cast<uint64_t>(row) * t_.H + h0) * t_.D], NdToNz(hg, t_.D, t_.D, t_.mAlign));
    for (uint32_t i = 0; i <= nBlk; ++i) {
      if (i < nBlk) {
        const uint32_t nj = i + 1 < nBlk ? kEntryTile : n - i * kEntryTile;
        Gather(row, nj);
        QK(hg);
      }
      if (i >= 1) PV(hg);
    }
    SetFlag<HardEvent::MTE1_MTE2>(qFree_);
  }

  // the next nj valid candidates' kv rows -> kv L1 buffer (sSeq_ % 2) as NZ rows 0 .. nj-1; runs of consecutive ids
  // move in one copy
  __aicore__ inline void Gather(uint32_t row, uint32_t nj) {
    const uint32_t buf = sSeq_ % 2, c0 = kC0<T>;
    LocalTensor<T> kv = kvL1_.Get<T>()[buf * kvElems_];
    const uint64_t base = static_cast<uint64_t>(row / t_.S) * t_.N;
    WaitFlag<HardEvent::MTE1_MTE2>(kvFree_[buf]);   // P·V of two blocks ago has loaded this buffer into L0B
    uint32_t jj = 0;
    int32_t id = cur_.Next();
    while (jj < nj) {
      uint32_t run = 1;
      int32_t nxt = jj + 1 < nj ? cur_.Next() : -1;
      while (jj + run < nj && nxt == id + static_cast<int32_t>(run)) {
        ++run;
        nxt = jj + run < nj ? cur_.Next() : -1;
      }
      DataCopy(kv[jj * c0], kvGm_[(base + static_cast<uint32_t>(id)) * t_.D], NdToNz(run, t_.D, t_.D, kEntryTile));
      jj += run;
      id = nxt;
    }
    PipeSync<HardEvent::MTE2_MTE1>();
  }

  // S = Q·Kᵀ over the block: [hg, dAlign] x [dAlign, 128] in kTile passes, -> S slot
  __aicore__ inline void QK(uint32_t hg) {
    const uint32_t buf = sSeq_ % 2, c0 = kC0<T>, mBlocks = t_.mAlign / 16, nBlocks = kEntryTile / 16;
    const uint32_t kTile = tileElems_ / (t_.mAlign > kEntryTile ? t_.mAlign : kEntryTile) / c0 * c0;
    const uint32_t passes = (t_.dAlign + kTile - 1) / kTile;
    LocalTensor<T> q = qL1_.Get<T>(), kv = kvL1_.Get<T>()[buf * kvElems_];
    const uint32_t cb = cSeq_++ % 2;
    LocalTensor<float> c = cL0_.Get<float>()[cb * cElems_];
    WaitFlag<HardEvent::FIX_M>(cFree_[cb]);
    for (uint32_t ps = 0; ps < passes; ++ps) {
      const uint32_t k0 = ps * kTile, kLen = k0 + kTile <= t_.dAlign ? kTile : t_.dAlign - k0;
      const uint32_t kBlocks = kLen / c0, kStart = k0 / c0, l0 = l0Seq_++ % 2;
      LocalTensor<T> a = aL0_.Get<T>()[l0 * tileElems_], b = bL0_.Get<T>()[l0 * tileElems_];
      WaitFlag<HardEvent::M_MTE1>(l0Free_[l0]);
      LoadL0A(a, q, mBlocks, kStart, kBlocks);
      LoadL0BFromRows(b, kv, nBlocks, kStart, kBlocks);   // kv rows: already L0B's fractals
      PipeSync<HardEvent::MTE1_M>();
      Mmad(c, a, b, MmadShape(hg, kEntryTile, kLen, ps == 0));
      SetFlag<HardEvent::M_MTE1>(l0Free_[l0]);
    }
    PipeSync<HardEvent::M_FIX>();
    if (sSeq_ >= 2) CrossCoreWaitFlag<kAttnSyncMode, PIPE_FIX>(kSFree);   // both vector cores read S(i-2)
    Fixpipe(sGm_[static_cast<uint64_t>(buf) * cElems_], c, FixpipeToNd<float>(kEntryTile, hg, t_.mAlign, kEntryTile));
    SetFlag<HardEvent::FIX_M>(cFree_[cb]);
    CrossCoreSetFlag<kAttnSyncMode, PIPE_FIX>(kSReady);
    ++sSeq_;
  }

  // O = P·V of the oldest block not yet multiplied: [hg, 128] x [128, dAlign] in 128-column tiles, -> O slot
  __aicore__ inline void PV(uint32_t hg) {
    const uint32_t slot = oSeq_ % 2, mBlocks = t_.mAlign / 16, eBlocks = kEntryTile / 16;
    LocalTensor<T> p = pL1_.Get<T>(), kv = kvL1_.Get<T>()[slot * kvElems_];
    CrossCoreWaitFlag<kAttnSyncMode, PIPE_MTE2>(kPReady);
    WaitFlag<HardEvent::MTE1_MTE2>(pFree_);
    DataCopy(p, pGm_[static_cast<uint64_t>(slot) * cElems_], NdToNz(hg, kEntryTile, kEntryTile, t_.mAlign));
    CrossCoreSetFlag<kAttnSyncMode, PIPE_MTE2>(kPFree);   // issued after the copy on MTE2: the P slot is read
    PipeSync<HardEvent::MTE2_MTE1>();
    for (uint32_t dt = 0; dt < t_.dTiles; ++dt) {
      const uint32_t col0 = dt * 128, cols = col0 + 128 <= t_.dAlign ? 128 : t_.dAlign - col0, tb = cols / 16;
      const uint32_t l0 = l0Seq_++ % 2;
      LocalTensor<T> a = aL0_.Get<T>()[l0 * tileElems_], b = bL0_.Get<T>()[l0 * tileElems_];
      WaitFlag<HardEvent::M_MTE1>(l0Free_[l0]);
      LoadL0A(a, p, mBlocks, 0, eBlocks);                 // P: its row blocks' 8 entry fractals
      LoadL0BTransposed(b, kv, eBlocks, col0 / 16, tb);   // V = the kv rows: each fractal transposed
      if (dt + 1 == t_.dTiles) {
        SetFlag<HardEvent::MTE1_MTE2>(kvFree_[slot]);
        SetFlag<HardEvent::MTE1_MTE2>(pFree_);
      }
      PipeSync<HardEvent::MTE1_M>();
      const uint32_t cb = cSeq_++ % 2;
      LocalTensor<float> c = cL0_.Get<float>()[cb * cElems_];
      WaitFlag<HardEvent::FIX_M>(cFree_[cb]);
      Mmad(c, a, b, MmadShape(hg, cols, kEntryTile, true));
      SetFlag<HardEvent::M_MTE1>(l0Free_[l0]);
      PipeSync<HardEvent::M_FIX>();
      if (dt == 0 && oSeq_ >= 2) CrossCoreWaitFlag<kAttnSyncMode, PIPE_FIX>(kOFree);   // O(j-2) folded in
      Fixpipe(oGm_[static_cast<uint64_t>(slot) * t_.mAlign * t_.dAlign + col0], c,
              FixpipeToNd<float>(cols, hg, t_.mAlign, t_.dAlign));
      SetFlag<HardEvent::FIX_M>(cFree_[cb]);
    }
    CrossCoreSetFlag<kAttnSyncMode, PIPE_FIX>(kOReady);
    ++oSeq_;
  }

  SparseAttnTiling t_;
  IdListsGm ids_;
  CandidateCursor cur_;
  uint32_t kvElems_ = 0, tileElems_ = 0, cElems_ = 0;
  uint64_t sSeq_ = 0, oSeq_ = 0, l0Seq_ = 0, cSeq_ = 0;
  TPipe pipe_;
  TBuf<TPosition::A1> qL1_, pL1_;
  TBuf<TPosition::B1> kvL1_;
  TBuf<TPosition::A2> aL0_;
  TBuf<TPosition::B2> bL0_;
  TBuf<TPosition::CO1> cL0_;
  TEventID kvFree_[2], l0Free_[2], cFree_[2], qFree_, pFree_;
  GlobalTensor<T> qGm_, kvGm_, pGm_;
  GlobalTensor<float> sGm_, oGm_;
};

// The vector side of key 1: online softmax of this sub-block's heads, P to the Cube, O folded into the accumulator.
template <typename T>
class SparseAttnVector {
 public:
  __aicore__ inline void Init(GM_ADDR sinks, GM_ADDR widx, GM_ADDR cidx, GM_ADDR out, GM_ADDR lse, GM_ADDR ws,
                              const SparseAttnTiling& t) {
    t_ = t;
    sinkGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(sinks));
    ids_.Bind(widx, cidx, t);
    outGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(out));
    lseGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(lse));
    const uint64_t base = static_cast<uint64_t>(GetBlockIdx() / 2) * t.wsPerGroup;
    sGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(ws + base));
    pGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(ws + base + 2ull * t.mAlign * kEntryTile * 4));
    oGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(ws + base + 2ull * t.mAlign * kEntryTile * (4 + sizeof(T))));
    const uint32_t nh = t.headHalf, dA = t.dAlign;
    // Sizes mirror av4_tiling::AttnCubeUbBytes.
    pipe_.InitBuffer(sQue_, 2, nh * kEntryTile * 4);
    pipe_.InitBuffer(oQue_, 2, nh * 128 * 4);
    pipe_.InitBuffer(pStage_, AlignBytes(nh * kEntryTile * sizeof(T)));
    pipe_.InitBuffer(accBuf_, nh * dA * 4);
    pipe_.InitBuffer(mBuf_, AlignBytes(nh * 4));
    pipe_.InitBuffer(lBuf_, AlignBytes(nh * 4));
    pipe_.InitBuffer(sinkBuf_, AlignBytes(nh * 4));
    pipe_.InitBuffer(corrBuf_, 2 * AlignBytes(nh * 4));
    pipe_.InitBuffer(biasBuf_, kEntryTile * 4);
    pipe_.InitBuffer(redBuf_, kBlockBytes);
    pipe_.InitBuffer(workBuf_, kEntryTile * 4);
    pipe_.InitBuffer(tinyBuf_, kBlockBytes);
    pipe_.InitBuffer(rawIdxBuf_, t.listAlign * 4);
    pipe_.InitBuffer(outStage_, AlignBytes(dA * sizeof(T)));
  }

  __aicore__ inline void Process() {
    const uint32_t g = GetBlockIdx() / 2, v = GetSubBlockIdx();
    if (g < t_.usedCores) {
      for (uint32_t row = t_.rowSplit[g]; row < t_.rowSplit[g + 1]; ++row)
        for (uint32_t hgi = 0; hgi < t_.numHeadGroups; ++hgi) {
          const uint32_t h0 = hgi * t_.headGroup;
          const uint32_t hg = h0 + t_.headGroup <= t_.H ? t_.headGroup : t_.H - h0;
          const uint32_t first = hg < t_.headHalf ? hg : t_.headHalf;
          Unit(row, h0 + (v ? first : 0), v ? hg - first : first, v ? first : 0);
        }
    }
    for (uint64_t s = pSeq_ >= 2 ? pSeq_ - 2 : 0; s < pSeq_; ++s) CrossCoreWaitFlag<kAttnSyncMode, PIPE_MTE3>(kPFree);
  }

 private:
  // valid candidates of the row (the Cube's CandidateCursor counts the same lists)
  __aicore__ inline uint32_t CountValid(uint32_t row) {
    LocalTensor<int32_t> raw = rawIdxBuf_.Get<int32_t>();
    PipeSync<HardEvent::S_MTE2>();   // the previous row's scalar reads of raw are done
    const uint32_t wA = LoadIdLists(raw, ids_, t_, row);
    uint32_t n = HcaRange(t_, row);
    for (uint32_t j = 0; j < t_.W; ++j) n += raw.GetValue(j) >= 0;
    for (uint32_t j = 0; j < t_.K; ++j) n += raw.GetValue(wA + j) >= 0;
    return n;
  }

  // heads hs .. hs+nh-1 (rows r0 .. r0+nh-1 of the group's slots); nh may be 0 (the flags still count)
  __aicore__ inline void Unit(uint32_t row, uint32_t hs, uint32_t nh, uint32_t r0) {
    const uint32_t n = CountValid(row), nBlk = BlocksOf(n);
    if (nh) Start(hs, nh);
    for (uint32_t i = 0; i < nBlk; ++i) {
      const uint32_t nj = i + 1 < nBlk ? kEntryTile : n - i * kEntryTile;
      Softmax(nh, r0, nj, i % 2);
      if (i >= 1) Fold(nh, r0, (i - 1) % 2);
    }
    if (nBlk) Fold(nh, r0, (nBlk - 1) % 2);
    if (nh) Finish(row, hs, nh);
  }

  __aicore__ inline void Start(uint32_t hs, uint32_t nh) {
    LocalTensor<float> acc = accBuf_.Get<float>(), m = mBuf_.Get<float>(), l = lBuf_.Get<float>();
    LocalTensor<float> sk = sinkBuf_.Get<float>();
    PipeSync<HardEvent::MTE3_V>();   // the previous unit's output stores are done with acc
    Duplicate(acc, 0.0f, static_cast<int32_t>(nh * t_.dAlign));
    PipeSync<HardEvent::V_MTE2>();
    DataCopyPad(sk, sinkGm_[hs], DataCopyExtParams(1, nh * 4, 0, 0, 0), DataCopyPadExtParams<float>(false, 0, 0, 0.0f));
    PipeSync<HardEvent::MTE2_S>();
    PipeSync<HardEvent::V_S>();
    for (uint32_t h = 0; h < nh; ++h) m.SetValue(h, kNegInf), l.SetValue(h, 0.0f);
    PipeBarrier<PIPE_V>();
  }

  // S(i) -> P(i) (to the Cube) with the running max / sum; corr slot cs keeps exp(m_old - m_new) for Fold
  __aicore__ inline void Softmax(uint32_t nh, uint32_t r0, uint32_t nj, uint32_t cs) {
    const uint32_t slot = pSeq_ % 2;
    CrossCoreWaitFlag<kAttnSyncMode, PIPE_MTE2>(kSReady);
    LocalTensor<float> s;
    if (nh) {
      s = sQue_.AllocTensor<float>();
      DataCopy(s, sGm_[(static_cast<uint64_t>(slot) * t_.mAlign + r0) * kEntryTile], nh * kEntryTile);
      sQue_.EnQue(s);
    }
    CrossCoreSetFlag<kAttnSyncMode, PIPE_MTE2>(kSFree);   // after the copy on MTE2: the S slot is read
    LocalTensor<T> pst = pStage_.Get<T>();
    if (nh) {
      s = sQue_.DeQue<float>();
      LocalTensor<float> m = mBuf_.Get<float>(), l = lBuf_.Get<float>(), red = redBuf_.Get<float>();
      LocalTensor<float> work = workBuf_.Get<float>(), corr = corrBuf_.Get<float>()[cs * AlignBytes(nh * 4) / 4];
      LocalTensor<float> bias = biasBuf_.Get<float>();
      Muls(s, s, t_.scale, static_cast<int32_t>(nh * kEntryTile));
      PipeBarrier<PIPE_V>();
      if (nj < kEntryTile) {   // entries past the row's candidates: -inf before the max
        PipeSync<HardEvent::V_S>();
        for (uint32_t j = 0; j < kEntryTile; ++j) bias.SetValue(j, j < nj ? 0.0f : kNegInf);
        PipeSync<HardEvent::S_V>();
        for (uint32_t h = 0; h < nh; ++h) Add(s[h * kEntryTile], s[h * kEntryTile], bias, kEntryTile);
        PipeBarrier<PIPE_V>();
      }
      for (uint32_t h = 0; h < nh; ++h) {
        ReduceMax(red, s[h * kEntryTile], work, static_cast<int32_t>(kEntryTile));
        PipeSync<HardEvent::V_S>();
        const float mOld = m.GetValue(h), bm = red.GetValue(0), mNew = mOld > bm ? mOld : bm;
        m.SetValue(h, mNew);
        corr.SetValue(h, mOld - mNew);
        PipeSync<HardEvent::S_V>();
        Adds(s[h * kEntryTile], s[h * kEntryTile], -mNew, static_cast<int32_t>(kEntryTile));
      }
      PipeBarrier<PIPE_V>();
      Exp(s, s, static_cast<int32_t>(nh * kEntryTile));
      Exp(corr, corr, static_cast<int32_t>(nh));   // exp(m_old - m_new): 0 on the first block
      PipeBarrier<PIPE_V>();
      for (uint32_t h = 0; h < nh; ++h) {
        ReduceSum(red, s[h * kEntryTile], work, static_cast<int32_t>(kEntryTile));
        PipeSync<HardEvent::V_S>();
        l.SetValue(h, l.GetValue(h) * corr.GetValue(h) + red.GetValue(0));
      }
      PipeSync<HardEvent::S_V>();
      Cast(pst, s, RoundMode::CAST_RINT, nh * kEntryTile);
      sQue_.FreeTensor(s);
    }
    if (pSeq_ >= 2) CrossCoreWaitFlag<kAttnSyncMode, PIPE_MTE3>(kPFree);   // the Cube has loaded P(i-2)
    if (nh) {
      PipeSync<HardEvent::V_MTE3>();
      DataCopy(pGm_[(static_cast<uint64_t>(slot) * t_.mAlign + r0) * kEntryTile], pst, nh * kEntryTile);
    }
    CrossCoreSetFlag<kAttnSyncMode, PIPE_MTE3>(kPReady);
    if (nh) PipeSync<HardEvent::MTE3_V>();   // the next Cast overwrites the staging buffer
    ++pSeq_;
  }

  // acc = acc·corr + O(j), O from the Cube in 128-column chunks
  __aicore__ inline void Fold(uint32_t nh, uint32_t r0, uint32_t cs) {
    const uint32_t slot = oSeq_ % 2, dA = t_.dAlign;
    CrossCoreWaitFlag<kAttnSyncMode, PIPE_MTE2>(kOReady);
    if (nh) {
      LocalTensor<float> acc = accBuf_.Get<float>(), corr = corrBuf_.Get<float>()[cs * AlignBytes(nh * 4) / 4];
      PipeSync<HardEvent::V_S>();
      for (uint32_t h = 0; h < nh; ++h) Muls(acc[h * dA], acc[h * dA], corr.GetValue(h), static_cast<int32_t>(dA));
      for (uint32_t dt = 0; dt < t_.dTiles; ++dt) {
        const uint32_t col0 = dt * 128, cols = col0 + 128 <= dA ? 128 : dA - col0;
        LocalTensor<float> o = oQue_.AllocTensor<float>();
        DataCopy(o, oGm_[(static_cast<uint64_t>(slot) * t_.mAlign + r0) * dA + col0],
                 DataCopyParams(static_cast<uint16_t>(nh), static_cast<uint16_t>(cols * 4 / kBlockBytes),
                                static_cast<uint16_t>((dA - cols) * 4 / kBlockBytes), 0));
        oQue_.EnQue(o);
        o = oQue_.DeQue<float>();
        PipeBarrier<PIPE_V>();
        for (uint32_t h = 0; h < nh; ++h) Add(acc[h * dA + col0], acc[h * dA + col0], o[h * cols], cols);
        oQue_.FreeTensor(o);
      }
      PipeBarrier<PIPE_V>();
    }
    CrossCoreSetFlag<kAttnSyncMode, PIPE_MTE2>(kOFree);   // after the last copy on MTE2: the O slot is read
    ++oSeq_;
  }

  // Sink in the denominator only (ApplySink, as the vector kernel's Finish), then lse and the output rows to GM.
  __aicore__ inline void Finish(uint32_t row, uint32_t hs, uint32_t nh) {
    LocalTensor<float> acc = accBuf_.Get<float>(), l = lBuf_.Get<float>();
    const uint32_t dA = t_.dAlign;
    ApplySink(acc, mBuf_.Get<float>(), l, sinkBuf_.Get<float>(), tinyBuf_.Get<float>(), nh, dA, t_.D);
    DataCopyPad(lseGm_[static_cast<uint64_t>(row) * t_.H + hs], l, DataCopyExtParams(1, nh * 4, 0, 0, 0));
    LocalTensor<T> st = outStage_.Get<T>();
    const uint64_t dst = (static_cast<uint64_t>(row) * t_.H + hs) * t_.D;
    for (uint32_t h = 0; h < nh; ++h) {
      PipeBarrier<PIPE_V>();
      Cast(st, acc[h * dA], RoundMode::CAST_RINT, t_.D);
      PipeSync<HardEvent::V_MTE3>();
      DataCopyPad(outGm_[dst + static_cast<uint64_t>(h) * t_.D], st, DataCopyExtParams(1, t_.D * sizeof(T), 0, 0, 0));
      PipeSync<HardEvent::MTE3_V>();
    }
  }

  SparseAttnTiling t_;
  IdListsGm ids_;
  uint64_t pSeq_ = 0, oSeq_ = 0;
  TPipe pipe_;
  TQue<TPosition::VECIN, 2> sQue_, oQue_;
  TBuf<TPosition::VECCALC> pStage_, accBuf_, mBuf_, lBuf_, sinkBuf_, corrBuf_, biasBuf_, redBuf_, workBuf_, tinyBuf_;
  TBuf<TPosition::VECCALC> rawIdxBuf_, outStage_;
  GlobalTensor<T> outGm_, pGm_;
  GlobalTensor<float> sinkGm_, lseGm_, sGm_, oGm_;
};

}  // namespace av4

#ifndef DTYPE_QUERY
#define DTYPE_QUERY float
#endif

// cmp_idx is an optional input (absent: window only, or HCA when the cmp_ratio attribute is > 0).
// Tiling key 0 (float32): the vector-only kernel; key 1 (bf16 / fp16): Q·Kᵀ and P·V on the Cube (mixed AIC/AIV).
extern "C" __global__ __aicore__ void av4_sparse_attn_shared_kv(GM_ADDR query, GM_ADDR kv, GM_ADDR sinks,
                                                                GM_ADDR window_idx, GM_ADDR cmp_idx, GM_ADDR attn_out,
                                                                GM_ADDR softmax_lse, GM_ADDR workspace,
                                                                GM_ADDR tiling) {
  KERNEL_TASK_TYPE(0, KERNEL_TYPE_AIV_ONLY);        // blockDim counts AIV cores
  KERNEL_TASK_TYPE(1, KERNEL_TYPE_MIX_AIC_1_2);     // blockDim counts groups (1 AIC + 2 AIV)
  REGISTER_TILING_DEFAULT(av4_tiling::SparseAttnTiling);
  GET_TILING_DATA_WITH_STRUCT(av4_tiling::SparseAttnTiling, td, tiling);
  if (TILING_KEY_IS(0)) {
    if ASCEND_IS_AIV {
      av4::SparseAttnKernel<DTYPE_QUERY> op;
      op.Init(query, kv, sinks, window_idx, cmp_idx, attn_out, softmax_lse, td);
      op.Process();
    }
  } else if (TILING_KEY_IS(1)) {
    if constexpr (sizeof(DTYPE_QUERY) == 2) {
      GM_ADDR ws = GetUserWorkspace(workspace);
      if ASCEND_IS_AIC {
        av4::SparseAttnCube<DTYPE_QUERY> op;
        op.Init(query, kv, window_idx, cmp_idx, ws, td);
        op.Process();
      }
      if ASCEND_IS_AIV {
        av4::SparseAttnVector<DTYPE_QUERY> op;
        op.Init(sinks, window_idx, cmp_idx, attn_out, softmax_lse, ws, td);
        op.Process();
      }
    }
  }
}
