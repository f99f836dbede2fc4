// The AI Cube half of the mixed hc_pre / hc_head kernel: raw[t, n] = sum_k x[t, k] B[n, k] on the Cube unit, with
// B = fn [M, K] (float32 x) or the workspace's [fn_hi; fn_lo] [2M, K] bf16 split (bf16 x; made by the AIV cores,
// waited for through a cross-core flag; with xCast, x is the AIV cores' float32 copy of bf16 x and B = fn), and
// the tile's x x^T, whose diagonal holds the tokens' sums of squares
// (the RMS), from the same L1 copy of x: the vector cores then read x only once, for the collapse. Items (token
// tile of baseM, K part) are dealt round-robin to the AIC cores; each runs over its K part in baseK steps
// (docs/ascendc.md, "Cube unit"):
//   GM -ND2NZ-> L1 (MTE2) -LoadData-> L0A / L0B (MTE1) -Mmad-> L0C (M, float32) -Fixpipe NZ2ND-> workspace (FIX)
// with ping-pong L1 and L0A/L0B buffers and one L0C tile of each product. B and x^T are given as [n][k] rows, so
// their NZ fractals already are the "Zn" blocks L0B wants (a plain 2D load; for x^T straight from x's L1 copy).
// Every AIC then meets the others at a cross-core barrier and releases its two AIV cores, which add the K parts.
#pragma once
#include "kernel_operator.h"
#include "mhc_tiling_data.h"

namespace mhc_av4 {
using namespace AscendC;

// FFTS cross-core flag IDs of the mixed kernel (11-14 are taken by SyncAll and the super-kernel syncs)
constexpr uint16_t kFlagFnSplit = 6;    // mode 0: every AIV has written its share of the fn split
constexpr uint16_t kFlagFnReady = 7;    // mode 2: AIV -> its AIC, the whole split is in the workspace
constexpr uint16_t kFlagAicDone = 8;    // mode 0: every AIC has written its partial projections
constexpr uint16_t kFlagRawReady = 9;   // mode 2: AIC -> its two AIV, every partial projection is in the workspace

template <typename T>
class HcProjCube {
 public:
  static constexpr int64_t kC0 = 32 / sizeof(T);   // fractal: 16 rows x C0 elements (512 bytes)

  __aicore__ inline HcProjCube() {}

  __aicore__ inline void Init(GM_ADDR x, GM_ADDR fn, GM_ADDR ws, const HcPreTilingData* td, TPipe* pipe) {
    td_ = td;
    xGm_.SetGlobalBuffer((__gm__ T*)x, static_cast<uint64_t>(td->T * td->K));
    if constexpr (sizeof(T) == 4) {
      bGm_.SetGlobalBuffer((__gm__ T*)fn, static_cast<uint64_t>(td->M * td->K));
    } else {
      bGm_.SetGlobalBuffer((__gm__ T*)(ws + td->wsFnOffset), static_cast<uint64_t>(2 * td->M * td->K));
    }
    rawGm_.SetGlobalBuffer((__gm__ float*)(ws + td->wsRawOffset),
                           static_cast<uint64_t>(td->kSplit * td->T * td->n16));
    sqGm_.SetGlobalBuffer((__gm__ float*)(ws + td->wsSqOffset),
                          static_cast<uint64_t>(td->kSplit * td->tiles * td->baseM * td->baseM));
    aHalf_ = td->baseM * td->baseK;
    bHalf_ = td->baseK * td->n16;
    pipe->InitBuffer(a1_, static_cast<uint32_t>(2 * aHalf_ * sizeof(T)));
    pipe->InitBuffer(b1_, static_cast<uint32_t>(2 * bHalf_ * sizeof(T)));
    pipe->InitBuffer(a2_, static_cast<uint32_t>(2 * aHalf_ * sizeof(T)));
    pipe->InitBuffer(b2_, static_cast<uint32_t>(2 * (bHalf_ + aHalf_) * sizeof(T)));   // B, then x^T
    pipe->InitBuffer(c_, static_cast<uint32_t>(td->baseM * (td->n16 + td->baseM) * sizeof(float)));   // raw, x x^T
    for (int i = 0; i < 2; ++i) {
      l1Free_[i] = pipe->AllocEventID<HardEvent::MTE1_MTE2>();
      l1Ready_[i] = pipe->AllocEventID<HardEvent::MTE2_MTE1>();
      l0Free_[i] = pipe->AllocEventID<HardEvent::M_MTE1>();
      l0Ready_[i] = pipe->AllocEventID<HardEvent::MTE1_M>();
    }
    cReady_ = pipe->AllocEventID<HardEvent::M_FIX>();
    cFree_ = pipe->AllocEventID<HardEvent::FIX_M>();
  }

  __aicore__ inline void Process() {
    const HcPreTilingData& g = *td_;
    if (g.xBytes == 2) CrossCoreWaitFlag(kFlagFnReady);   // both AIV of the group saw the split (or x cast) done
    for (int i = 0; i < 2; ++i) {
      SetFlag<HardEvent::MTE1_MTE2>(l1Free_[i]);
      SetFlag<HardEvent::M_MTE1>(l0Free_[i]);
    }
    SetFlag<HardEvent::FIX_M>(cFree_);
    const int64_t tiles = (g.T + g.baseM - 1) / g.baseM, items = tiles * g.kSplit;
    for (int64_t it = GetBlockIdx(); it < items; it += g.groups) {
      const int64_t tile = it / g.kSplit, part = it % g.kSplit;
      const int64_t tok0 = tile * g.baseM, k0 = part * g.kPart;
      const int64_t mr = g.T - tok0 < g.baseM ? g.T - tok0 : g.baseM;
      const int64_t kEnd = g.K - k0 < g.kPart ? g.K : k0 + g.kPart;
      Item(tile, tok0, mr, k0, kEnd, part);
    }
    for (int i = 0; i < 2; ++i) {
      WaitFlag<HardEvent::MTE1_MTE2>(l1Free_[i]);
      WaitFlag<HardEvent::M_MTE1>(l0Free_[i]);
    }
    WaitFlag<HardEvent::FIX_M>(cFree_);
    CrossCoreSetFlag<0x0, PIPE_FIX>(kFlagAicDone);   // every cube core's Fixpipe writes are out ...
    CrossCoreWaitFlag(kFlagAicDone);
    CrossCoreSetFlag<0x2, PIPE_FIX>(kFlagRawReady);  // ... then this group's vector cores may read them
  }

 private:
  __aicore__ inline void Item(int64_t tile, int64_t tok0, int64_t mr, int64_t k0, int64_t kEnd, int64_t part) {
    const HcPreTilingData& g = *td_;
    const int64_t m16 = (mr + 15) / 16 * 16;
    LocalTensor<float> c = c_.Get<float>(), cx = c[g.baseM * g.n16];
    WaitFlag<HardEvent::FIX_M>(cFree_);
    for (int64_t k = k0; k < kEnd; k += g.baseK) {
      const int64_t kc = kEnd - k < g.baseK ? kEnd - k : g.baseK;   // a multiple of 64 (tiling: K % 64 == 0)
      const int b = static_cast<int>(step_ & 1);
      LocalTensor<T> a1 = a1_.Get<T>()[b * aHalf_], b1 = b1_.Get<T>()[b * bHalf_];
      LocalTensor<T> a2 = a2_.Get<T>()[b * aHalf_], b2 = b2_.Get<T>()[b * (bHalf_ + aHalf_)];
      LocalTensor<T> b2x = b2[bHalf_];
      WaitFlag<HardEvent::MTE1_MTE2>(l1Free_[b]);
      DataCopy(a1, xGm_[tok0 * g.K + k], Nd2Nz(mr, kc, g.K, m16));        // x rows: NZ [k1][m16][C0]
      DataCopy(b1, bGm_[k], Nd2Nz(g.nCols, kc, g.K, g.n16));             // B rows: NZ [k1][n16][C0]
      SetFlag<HardEvent::MTE2_MTE1>(l1Ready_[b]);
      WaitFlag<HardEvent::MTE2_MTE1>(l1Ready_[b]);
      WaitFlag<HardEvent::M_MTE1>(l0Free_[b]);
      for (int64_t i = 0; i < m16 / 16; ++i)   // fractal (m1, k1) at k1 * m16/16 + m1 in L1 -> Zz in L0A
        LoadData(a2[i * 16 * kc], a1[i * 16 * kC0], Load2D(kc / kC0, m16 / 16));
      for (int64_t j = 0; j < kc / kC0; ++j) {   // already n-rows x k-columns fractals, in (k1, n1) order
        LoadData(b2[j * g.n16 * kC0], b1[j * g.n16 * kC0], Load2D(g.n16 / 16, 1));
        LoadData(b2x[j * m16 * kC0], a1[j * m16 * kC0], Load2D(m16 / 16, 1));   // x^T: x's rows are its columns
      }
      SetFlag<HardEvent::MTE1_MTE2>(l1Free_[b]);
      SetFlag<HardEvent::MTE1_M>(l0Ready_[b]);
      WaitFlag<HardEvent::MTE1_M>(l0Ready_[b]);
      MmadParams mp;
      mp.m = static_cast<uint16_t>(mr);
      mp.n = static_cast<uint16_t>(g.nCols);
      mp.k = static_cast<uint16_t>(kc);
      mp.cmatrixInitVal = k == k0;
      Mmad(c, a2, b2, mp);
      mp.n = static_cast<uint16_t>(mr);
      Mmad(cx, a2, b2x, mp);
      SetFlag<HardEvent::M_MTE1>(l0Free_[b]);
      ++step_;
    }
    SetFlag<HardEvent::M_FIX>(cReady_);
    WaitFlag<HardEvent::M_FIX>(cReady_);
    FixpipeParamsV220 fp;                       // float32 partial sums, ND rows of n16 floats
    fp.nSize = static_cast<uint16_t>(g.nCols);
    fp.mSize = static_cast<uint16_t>(mr);
    fp.srcStride = static_cast<uint16_t>(m16);
    fp.dstStride = static_cast<uint32_t>(g.n16);
    fp.ndNum = 1;
    fp.srcNdStride = 0;
    fp.dstNdStride = 0;
    fp.quantPre = QuantMode_t::NoQuant;
    Fixpipe(rawGm_[(part * g.T + tok0) * g.n16], c, fp);
    fp.nSize = static_cast<uint16_t>(mr);        // x x^T of the tile: rows of baseM floats, the AIV reads the diagonal
    fp.dstStride = static_cast<uint32_t>(g.baseM);
    Fixpipe(sqGm_[(part * g.tiles + tile) * g.baseM * g.baseM], cx, fp);
    SetFlag<HardEvent::FIX_M>(cFree_);
  }

  __aicore__ static inline Nd2NzParams Nd2Nz(int64_t rows, int64_t cols, int64_t srcCols, int64_t rowsPad) {
    Nd2NzParams p;
    p.ndNum = 1;
    p.nValue = static_cast<uint16_t>(rows);
    p.dValue = static_cast<uint16_t>(cols);
    p.srcNdMatrixStride = 0;
    p.srcDValue = static_cast<uint16_t>(srcCols);
    p.dstNzC0Stride = static_cast<uint16_t>(rowsPad);
    p.dstNzNStride = 1;
    p.dstNzMatrixStride = 0;
    return p;
  }
  __aicore__ static inline LoadData2DParams Load2D(int64_t repeat, int64_t srcStride) {
    LoadData2DParams p;
    p.startIndex = 0;
    p.repeatTimes = static_cast<uint8_t>(repeat);
    p.srcStride = static_cast<uint16_t>(srcStride);
    p.dstGap = 0;
    p.ifTranspose = false;
    return p;
  }

  const HcPreTilingData* td_ = nullptr;
  GlobalTensor<T> xGm_, bGm_;
  GlobalTensor<float> rawGm_, sqGm_;
  TBuf<TPosition::A1> a1_;
  TBuf<TPosition::B1> b1_;
  TBuf<TPosition::A2> a2_;
  TBuf<TPosition::B2> b2_;
  TBuf<TPosition::CO1> c_;
  int64_t aHalf_ = 0, bHalf_ = 0, step_ = 0;
  TEventID l1Free_[2], l1Ready_[2], l0Free_[2], l0Ready_[2], cReady_, cFree_;
};

}  // namespace mhc_av4
