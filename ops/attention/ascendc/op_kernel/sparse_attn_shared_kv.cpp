// AV4SparseAttnSharedKV: shared-KV MQA over (window ids ‖ compressed ids) or (window ids ‖ every visible compressed
// entry, HCA), attention sink in the denominator only, float32 online softmax. Vector-core (AIV) kernel.
// Semantics: ops/attention/reference.py sparse_attention / hca_attention. Tiling: op_host/attention_tiling.h.
//
// Per core: the query rows rowSplit[core] .. rowSplit[core+1] (balanced by candidate count on the host). Per row and
// head group: q of the group and its accumulator stay in UB; the valid candidate ids are compacted once per row
// (-1 skipped); KV rows are gathered entryBlock at a time through a double-buffered VECIN queue (block k+1 is
// requested before block k is consumed); scores, running max/sum and P·V are float32. Output: out [B·S, H, D] in
// the input dtype, lse [B·S, H] float32 (the backward's softmax statistics).
// Dot products use Mul + ReduceSum per (head, row) on the vector unit; moving QKᵀ / PV to the cube (Matmul API,
// [heads × D] x [D × entries]) is the performance step that needs hardware to tune.
#ifndef AV4_CPU_EMULATOR   // ascendc/tests/kernel_emu.cc supplies its own AscendC emulation
#include "kernel_operator.h"
#endif
#include "attention_pipe_sync.h"
#include "attention_tiling_data.h"

using namespace AscendC;
using av4_tiling::SparseAttnTiling;

namespace av4 {

constexpr float kNegInf = -3.0e38f;   // finite "minus infinity": exp(x - m) stays exactly 0, never inf - inf
constexpr uint32_t kBlockBytes = 32;

__aicore__ inline uint32_t AlignBytes(uint32_t b) { return (b + kBlockBytes - 1) / kBlockBytes * kBlockBytes; }

template <typename T>
class SparseAttnKernel {
 public:
  __aicore__ inline void Init(GM_ADDR q, GM_ADDR kv, GM_ADDR sinks, GM_ADDR widx, GM_ADDR cidx, GM_ADDR out,
                              GM_ADDR lse, const SparseAttnTiling& t) {
    t_ = t;
    qGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(q));
    kvGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(kv));
    sinkGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(sinks));
    widxGm_.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t*>(widx));
    hasList_ = t.K > 0;
    if (hasList_) cidxGm_.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t*>(cidx));
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
      const uint32_t pos = t_.startPos + row % t_.S;
      nRange_ = 0;
      if (t_.ratio > 0) {   // HCA: every visible compressed entry, never materialised as a list
        const uint32_t vis = (pos + 1) / t_.ratio;
        nRange_ = vis < t_.nCmp ? vis : t_.nCmp;
      }
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
    const uint32_t wA = (t_.W * 4 + kBlockBytes - 1) / kBlockBytes * kBlockBytes / 4;
    DataCopyPad(raw, widxGm_[static_cast<uint64_t>(row) * t_.W], DataCopyExtParams(1, t_.W * 4, 0, 0, 0),
                DataCopyPadExtParams<int32_t>(false, 0, 0, 0));
    if (hasList_)
      DataCopyPad(raw[wA], cidxGm_[static_cast<uint64_t>(row) * t_.K], DataCopyExtParams(1, t_.K * 4, 0, 0, 0),
                  DataCopyPadExtParams<int32_t>(false, 0, 0, 0));
    PipeSync<HardEvent::MTE2_S>();
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

  // Sink in the denominator only: out = acc·e^(m-mf) / (l·e^(m-mf) + e^(sink-mf)), lse = mf + ln(den).
  __aicore__ inline void Finish(uint32_t row, uint32_t h0, uint32_t nh) {
    LocalTensor<float> acc = accBuf_.Get<float>(), tiny = tinyBuf_.Get<float>();
    LocalTensor<float> m = mBuf_.Get<float>(), l = lBuf_.Get<float>(), sk = sinkBuf_.Get<float>();
    PipeSync<HardEvent::V_S>();
    const uint32_t dA = t_.dAlign;
    for (uint32_t h = 0; h < nh; ++h) {
      const float mh = m.GetValue(h), s = sk.GetValue(h);
      const float mf = mh > s ? mh : s;
      tiny.SetValue(0, mh - mf);
      tiny.SetValue(1, s - mf);
      PipeSync<HardEvent::S_V>();
      Exp(tiny, tiny, 8);
      PipeSync<HardEvent::V_S>();
      const float a = tiny.GetValue(0), den = l.GetValue(h) * a + tiny.GetValue(1);
      tiny.SetValue(0, den);
      PipeSync<HardEvent::S_V>();
      Ln(tiny, tiny, 8);
      Muls(acc[h * dA], acc[h * dA], a / den, static_cast<int32_t>(t_.D));
      PipeSync<HardEvent::V_S>();
      l.SetValue(h, mf + tiny.GetValue(0));   // l now holds lse for the store below
    }
    PipeSync<HardEvent::S_MTE3>();
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
  bool hasList_ = false;
  uint32_t nWin_ = 0, nRange_ = 0;
  TPipe pipe_;
  TQue<TPosition::VECIN, 2> kvQue_;
  TBuf<TPosition::VECCALC> qBuf_, accBuf_, qStageBuf_, kvFBuf_, outStageBuf_, scoreBuf_, rawIdxBuf_, idsBuf_;
  TBuf<TPosition::VECCALC> mBuf_, lBuf_, sinkBuf_, prodBuf_, redBuf_, tinyBuf_, workBuf_;
  GlobalTensor<T> qGm_, kvGm_, outGm_;
  GlobalTensor<float> sinkGm_, lseGm_;
  GlobalTensor<int32_t> widxGm_, cidxGm_;
};

}  // namespace av4

#ifndef DTYPE_QUERY
#define DTYPE_QUERY float
#endif

// cmp_idx is an optional input (absent: window only, or HCA when the cmp_ratio attribute is > 0).
extern "C" __global__ __aicore__ void av4_sparse_attn_shared_kv(GM_ADDR query, GM_ADDR kv, GM_ADDR sinks,
                                                                GM_ADDR window_idx, GM_ADDR cmp_idx, GM_ADDR attn_out,
                                                                GM_ADDR softmax_lse, GM_ADDR workspace,
                                                                GM_ADDR tiling) {
  (void)workspace;
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);   // vector cores only: blockDim counts AIV cores
  REGISTER_TILING_DEFAULT(av4_tiling::SparseAttnTiling);
  GET_TILING_DATA_WITH_STRUCT(av4_tiling::SparseAttnTiling, td, tiling);
  av4::SparseAttnKernel<DTYPE_QUERY> op;
  op.Init(query, kv, sinks, window_idx, cmp_idx, attn_out, softmax_lse, td);
  op.Process();
}
