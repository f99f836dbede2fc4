// AV4CompressKV: the compressor's gated softmax pooling + RMSNorm (prefill form: every complete block), AIV kernel.
// Inputs are the two projections kvp = x·wkvᵀ and scp = x·wgateᵀ, [B, S, coff·c] (computed by MatMul on the cube);
// this kernel adds ape, pools the slots of each block per channel (overlap: block i-1's first-half channels and
// block i's second-half channels, 2·ratio slots), RMS-normalises with norm_w and writes [B, S/ratio, c].
// Semantics: ops/attention/reference.py compress_kv. Tiling: op_host/attention_tiling.h (TileCompress).
//
// Per core: items (b, block) itemSplit[core] .. itemSplit[core+1]. Per item and channel group (multiple of 16
// channels): the slot tiles of kvp and scp [slots, group] arrive through double-buffered VECIN queues with
// DataCopyPad (strided rows, ragged channel tails padded), then max / exp / sum / weighted sum run on the vector
// unit in float32; the pooled row y[c] is normalised once all groups are done.
#include "kernel_operator.h"
#include "attention_tiling_data.h"
#include "pipe_sync.h"

using namespace AscendC;
using av4_common::PipeSync;
using av4_tiling::CompressTiling;

namespace av4 {

constexpr float kCmpNegInf = -3.0e38f;
constexpr uint32_t kCmpBlockBytes = 32;

__aicore__ inline uint32_t CmpAlignBytes(uint32_t b) { return (b + kCmpBlockBytes - 1) / kCmpBlockBytes * kCmpBlockBytes; }

template <typename T>
class CompressKvKernel {
 public:
  __aicore__ inline void Init(GM_ADDR kvp, GM_ADDR scp, GM_ADDR ape, GM_ADDR normW, GM_ADDR out,
                              const CompressTiling& t) {
    t_ = t;
    kvGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(kvp));
    scGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(scp));
    apeGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(ape));
    nwGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(normW));
    outGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(out));
    const uint32_t tile = t.slots * t.chanGroup;
    // Buffer sizes mirror av4_tiling::CompressUbBytes.
    pipe_.InitBuffer(kvQue_, 2, CmpAlignBytes(tile * sizeof(T)));
    pipe_.InitBuffer(scQue_, 2, CmpAlignBytes(tile * sizeof(T)));
    if constexpr (sizeof(T) != 4) {
      pipe_.InitBuffer(kvFBuf_, tile * 4);
      pipe_.InitBuffer(scFBuf_, tile * 4);
      pipe_.InitBuffer(outStageBuf_, CmpAlignBytes(t.cAlign * sizeof(T)));
    }
    pipe_.InitBuffer(apeBuf_, tile * 4);
    pipe_.InitBuffer(mxBuf_, t.chanGroup * 4);
    pipe_.InitBuffer(denBuf_, t.chanGroup * 4);
    pipe_.InitBuffer(yBuf_, t.chanGroup * 4);
    pipe_.InitBuffer(eBuf_, t.chanGroup * 4);
    pipe_.InitBuffer(rowBuf_, t.cAlign * 4);
    pipe_.InitBuffer(nwBuf_, t.cAlign * 4);
    pipe_.InitBuffer(workBuf_, CmpAlignBytes(t.cAlign * 4));
    pipe_.InitBuffer(redBuf_, kCmpBlockBytes);
    pipe_.InitBuffer(tinyBuf_, kCmpBlockBytes);
  }

  __aicore__ inline void Process() {
    const int64_t core = GetBlockIdx();
    if (core >= static_cast<int64_t>(t_.usedCores)) return;
    LocalTensor<float> nw = nwBuf_.Get<float>();
    DataCopyPad(nw, nwGm_, DataCopyExtParams(1, t_.c * 4, 0, 0, 0), DataCopyPadExtParams<float>(true, 0, 0, 0.0f));
    PipeSync<HardEvent::MTE2_V>();
    for (uint32_t item = t_.itemSplit[core]; item < t_.itemSplit[core + 1]; ++item) {
      const uint32_t b = item / t_.nBlocks, i = item % t_.nBlocks;
      for (uint32_t g = 0; g < t_.numChanGroups; ++g) {
        const uint32_t c0 = g * t_.chanGroup, nc = c0 + t_.chanGroup <= t_.c ? t_.chanGroup : t_.c - c0;
        CopyIn(b, i, c0, nc);
        Pool(i, c0, nc);
      }
      NormStore(item);
    }
  }

 private:
  // slots [s0, s0 + m) of the tile <- token rows tok0 .. tok0+m-1, channels ch0 .. ch0+nc-1 (rows padded to group)
  __aicore__ inline void LoadSlots(const LocalTensor<T>& dst, const GlobalTensor<T>& src, uint32_t s0, uint64_t tok0,
                                   uint32_t ch0, uint32_t nc) {
    const uint32_t padBlocks = (t_.chanGroup * sizeof(T) - CmpAlignBytes(nc * sizeof(T))) / kCmpBlockBytes;
    DataCopyPad(dst[s0 * t_.chanGroup], src[tok0 * t_.width + ch0],
                DataCopyExtParams(static_cast<uint16_t>(t_.ratio), nc * sizeof(T), (t_.width - nc) * sizeof(T),
                                  padBlocks, 0),
                DataCopyPadExtParams<T>(true, 0, 0, T{}));
  }

  __aicore__ inline void LoadApe(const LocalTensor<float>& dst, uint32_t s0, uint32_t ch0, uint32_t nc) {
    const uint32_t padBlocks = (t_.chanGroup * 4 - CmpAlignBytes(nc * 4)) / kCmpBlockBytes;
    DataCopyPad(dst[s0 * t_.chanGroup], apeGm_[ch0],
                DataCopyExtParams(static_cast<uint16_t>(t_.ratio), nc * 4, (t_.width - nc) * 4, padBlocks, 0),
                DataCopyPadExtParams<float>(true, 0, 0, 0.0f));
  }

  __aicore__ inline void CopyIn(uint32_t b, uint32_t i, uint32_t c0, uint32_t nc) {
    LocalTensor<T> kv = kvQue_.template AllocTensor<T>();
    LocalTensor<T> sc = scQue_.template AllocTensor<T>();
    LocalTensor<float> ape = apeBuf_.Get<float>();
    PipeSync<HardEvent::V_MTE2>();   // apeBuf_ is a plain buffer: the previous Pool's Add must have read it
    const uint64_t tok = static_cast<uint64_t>(b) * t_.S + static_cast<uint64_t>(i) * t_.ratio;
    const uint32_t m = t_.ratio;
    if (t_.overlap) {
      if (i > 0) {   // "b" slots: previous block's tokens, first-half channels, ape[:, :c]
        LoadSlots(kv, kvGm_, 0, tok - m, c0, nc);
        LoadSlots(sc, scGm_, 0, tok - m, c0, nc);
      }
      LoadApe(ape, 0, c0, nc);
      LoadSlots(kv, kvGm_, m, tok, t_.c + c0, nc);   // "a" slots: this block, second-half channels, ape[:, c:]
      LoadSlots(sc, scGm_, m, tok, t_.c + c0, nc);
      LoadApe(ape, m, t_.c + c0, nc);
    } else {
      LoadSlots(kv, kvGm_, 0, tok, c0, nc);
      LoadSlots(sc, scGm_, 0, tok, c0, nc);
      LoadApe(ape, 0, c0, nc);
    }
    kvQue_.EnQue(kv);
    scQue_.EnQue(sc);
  }

  __aicore__ inline void Pool(uint32_t i, uint32_t c0, uint32_t nc) {
    LocalTensor<T> kvT = kvQue_.template DeQue<T>();
    LocalTensor<T> scT = scQue_.template DeQue<T>();
    PipeSync<HardEvent::MTE2_V>();   // ape arrived through a plain buffer
    const uint32_t cg = t_.chanGroup, tile = t_.slots * cg;
    LocalTensor<float> kv, sc;
    if constexpr (sizeof(T) == 4) {
      kv = kvT, sc = scT;
    } else {
      kv = kvFBuf_.Get<float>(), sc = scFBuf_.Get<float>();
      Cast(kv, kvT, RoundMode::CAST_NONE, tile);
      Cast(sc, scT, RoundMode::CAST_NONE, tile);
      PipeBarrier<PIPE_V>();
    }
    LocalTensor<float> ape = apeBuf_.Get<float>(), mx = mxBuf_.Get<float>(), den = denBuf_.Get<float>();
    LocalTensor<float> y = yBuf_.Get<float>(), e = eBuf_.Get<float>(), row = rowBuf_.Get<float>();
    const uint32_t s0 = (t_.overlap && i == 0) ? t_.ratio : 0;   // block 0 has no "b" slots
    const int32_t n = static_cast<int32_t>(cg);
    Add(sc[s0 * cg], sc[s0 * cg], ape[s0 * cg], static_cast<int32_t>(tile - s0 * cg));
    Duplicate(mx, kCmpNegInf, n);
    Duplicate(den, 0.0f, n);
    Duplicate(y, 0.0f, n);
    PipeBarrier<PIPE_V>();
    for (uint32_t s = s0; s < t_.slots; ++s) {
      Max(mx, mx, sc[s * cg], n);
      PipeBarrier<PIPE_V>();
    }
    for (uint32_t s = s0; s < t_.slots; ++s) {
      Sub(e, sc[s * cg], mx, n);
      PipeBarrier<PIPE_V>();
      Exp(e, e, n);
      PipeBarrier<PIPE_V>();
      Add(den, den, e, n);
      Mul(e, e, kv[s * cg], n);
      PipeBarrier<PIPE_V>();
      Add(y, y, e, n);
      PipeBarrier<PIPE_V>();
    }
    Div(row[c0], y, den, static_cast<int32_t>(nc));   // c0 is a multiple of 16: aligned destination
    PipeBarrier<PIPE_V>();
    kvQue_.FreeTensor(kvT);
    scQue_.FreeTensor(scT);
  }

  __aicore__ inline void NormStore(uint32_t item) {
    LocalTensor<float> row = rowBuf_.Get<float>(), nw = nwBuf_.Get<float>(), work = workBuf_.Get<float>();
    LocalTensor<float> red = redBuf_.Get<float>(), tiny = tinyBuf_.Get<float>(), e = eBuf_.Get<float>();
    const int32_t c = static_cast<int32_t>(t_.c);
    // mean of squares in chunks of the exp scratch (one channel group long)
    float ss = 0.0f;
    for (uint32_t c0 = 0; c0 < t_.c; c0 += t_.chanGroup) {
      const int32_t nc = static_cast<int32_t>(c0 + t_.chanGroup <= t_.c ? t_.chanGroup : t_.c - c0);
      Mul(e, row[c0], row[c0], nc);
      PipeBarrier<PIPE_V>();
      ReduceSum(red, e, work, nc);
      PipeSync<HardEvent::V_S>();
      ss += red.GetValue(0);
    }
    tiny.SetValue(0, ss / static_cast<float>(t_.c) + t_.eps);
    PipeSync<HardEvent::S_V>();
    Sqrt(tiny, tiny, 8);
    PipeSync<HardEvent::V_S>();
    const float rs = 1.0f / tiny.GetValue(0);
    Muls(row, row, rs, c);
    PipeBarrier<PIPE_V>();
    Mul(row, row, nw, c);
    PipeBarrier<PIPE_V>();   // the bf16 Cast below reads row: a V -> MTE3 flag does not order V after V
    PipeSync<HardEvent::V_MTE3>();
    const uint64_t dst = static_cast<uint64_t>(item) * t_.c;
    if constexpr (sizeof(T) == 4) {
      DataCopyPad(outGm_[dst], row, DataCopyExtParams(1, t_.c * 4, 0, 0, 0));
    } else {
      LocalTensor<T> st = outStageBuf_.Get<T>();
      Cast(st, row, RoundMode::CAST_RINT, t_.c);
      PipeSync<HardEvent::V_MTE3>();
      DataCopyPad(outGm_[dst], st, DataCopyExtParams(1, t_.c * sizeof(T), 0, 0, 0));
    }
    PipeSync<HardEvent::MTE3_V>();
  }

  CompressTiling t_;
  TPipe pipe_;
  TQue<TPosition::VECIN, 2> kvQue_, scQue_;
  TBuf<TPosition::VECCALC> kvFBuf_, scFBuf_, outStageBuf_, apeBuf_, mxBuf_, denBuf_, yBuf_, eBuf_, rowBuf_, nwBuf_;
  TBuf<TPosition::VECCALC> workBuf_, redBuf_, tinyBuf_;
  GlobalTensor<T> kvGm_, scGm_, outGm_;
  GlobalTensor<float> apeGm_, nwGm_;
};

}  // namespace av4

#ifndef DTYPE_KV_PROJ
#define DTYPE_KV_PROJ float
#endif

extern "C" __global__ __aicore__ void av4_compress_kv(GM_ADDR kv_proj, GM_ADDR score_proj, GM_ADDR ape, GM_ADDR norm_w,
                                                      GM_ADDR entries, GM_ADDR workspace, GM_ADDR tiling) {
  (void)workspace;
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);   // vector cores only: blockDim counts AIV cores
  REGISTER_TILING_DEFAULT(av4_tiling::CompressTiling);
  GET_TILING_DATA_WITH_STRUCT(av4_tiling::CompressTiling, td, tiling);
  av4::CompressKvKernel<DTYPE_KV_PROJ> op;
  op.Init(kv_proj, score_proj, ape, norm_w, entries, td);
  op.Process();
}
