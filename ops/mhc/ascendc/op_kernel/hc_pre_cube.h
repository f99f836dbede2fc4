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
#include "cube_tiles.h"
#include "mhc_tiling_data.h"

namespace mhc_av4 {
using namespace AscendC;
using namespace av4_common;

// FFTS cross-core flag IDs of the mixed kernel (11-14 are taken by SyncAll and the super-kernel syncs)
constexpr uint16_t kFlagFnSplit = 6;    // mode 0: every AIV has written its share of the fn split
constexpr uint16_t kFlagFnReady = 7;    // mode 2: AIV -> its AIC, the whole split is in the workspace
constexpr uint16_t kFlagAicDone = 8;    // mode 0: every AIC has written its partial projections
constexpr uint16_t kFlagRawReady = 9;   // mode 2: AIC -> its two AIV, every partial projection is in the workspace

template <typename T>
class HcProjCube {
 public:
  static constexpr int64_t kC0 = av4_common::kC0<T>;   // fractal: 16 rows x C0 elements (512 bytes)

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
    ev_.Alloc(pipe);
  }

  __aicore__ inline void Process() {
    const HcPreTilingData& g = *td_;
    if (g.xBytes == 2) CrossCoreWaitFlag(kFlagFnReady);   // both AIV of the group saw the split (or x cast) done
    ev_.Start();                                          // every buffer starts free
    const int64_t tiles = (g.T + g.baseM - 1) / g.baseM, items = tiles * g.kSplit;
    for (int64_t it = GetBlockIdx(); it < items; it += g.groups) {
      const int64_t tile = it / g.kSplit, part = it % g.kSplit;
      const int64_t tok0 = tile * g.baseM, k0 = part * g.kPart;
      const int64_t mr = g.T - tok0 < g.baseM ? g.T - tok0 : g.baseM;
      const int64_t kEnd = g.K - k0 < g.kPart ? g.K : k0 + g.kPart;
      Item(tile, tok0, mr, k0, kEnd, part);
    }
    ev_.Drain();
    CrossCoreSetFlag<0x0, PIPE_FIX>(kFlagAicDone);   // every cube core's Fixpipe writes are out ...
    CrossCoreWaitFlag(kFlagAicDone);
    CrossCoreSetFlag<0x2, PIPE_FIX>(kFlagRawReady);  // ... then this group's vector cores may read them
  }

 private:
  __aicore__ inline void Item(int64_t tile, int64_t tok0, int64_t mr, int64_t k0, int64_t kEnd, int64_t part) {
    const HcPreTilingData& g = *td_;
    const int64_t m16 = (mr + 15) / 16 * 16;
    LocalTensor<float> c = c_.Get<float>(), cx = c[g.baseM * g.n16];
    WaitFlag<HardEvent::FIX_M>(ev_.cFree);
    for (int64_t k = k0; k < kEnd; k += g.baseK) {
      const int64_t kc = kEnd - k < g.baseK ? kEnd - k : g.baseK;   // a multiple of 64 (tiling: K % 64 == 0)
      const int b = static_cast<int>(step_ & 1);
      LocalTensor<T> a1 = a1_.Get<T>()[b * aHalf_], b1 = b1_.Get<T>()[b * bHalf_];
      LocalTensor<T> a2 = a2_.Get<T>()[b * aHalf_], b2 = b2_.Get<T>()[b * (bHalf_ + aHalf_)];
      LocalTensor<T> b2x = b2[bHalf_];
      WaitFlag<HardEvent::MTE1_MTE2>(ev_.l1Free[b]);
      DataCopy(a1, xGm_[tok0 * g.K + k], NdToNz(mr, kc, g.K, m16));       // x rows: NZ [k1][m16][C0]
      DataCopy(b1, bGm_[k], NdToNz(g.nCols, kc, g.K, g.n16));            // B rows: NZ [k1][n16][C0]
      SetFlag<HardEvent::MTE2_MTE1>(ev_.l1Ready[b]);
      WaitFlag<HardEvent::MTE2_MTE1>(ev_.l1Ready[b]);
      WaitFlag<HardEvent::M_MTE1>(ev_.l0Free[b]);
      LoadL0A(a2, a1, m16 / 16, 0, kc / kC0);
      LoadL0BFromRows(b2, b1, g.n16 / 16, 0, kc / kC0);   // B rows: already L0B's fractals
      LoadL0BFromRows(b2x, a1, m16 / 16, 0, kc / kC0);    // x^T: x's rows are its columns
      SetFlag<HardEvent::MTE1_MTE2>(ev_.l1Free[b]);
      SetFlag<HardEvent::MTE1_M>(ev_.l0Ready[b]);
      WaitFlag<HardEvent::MTE1_M>(ev_.l0Ready[b]);
      Mmad(c, a2, b2, MmadShape(mr, g.nCols, kc, k == k0));
      Mmad(cx, a2, b2x, MmadShape(mr, mr, kc, k == k0));
      SetFlag<HardEvent::M_MTE1>(ev_.l0Free[b]);
      ++step_;
    }
    SetFlag<HardEvent::M_FIX>(ev_.cReady);
    WaitFlag<HardEvent::M_FIX>(ev_.cReady);
    // float32 partial sums, ND rows of n16 floats; x x^T of the tile: rows of baseM floats, the AIV reads the diagonal
    Fixpipe(rawGm_[(part * g.T + tok0) * g.n16], c, FixpipeToNd<float>(g.nCols, mr, m16, g.n16));
    Fixpipe(sqGm_[(part * g.tiles + tile) * g.baseM * g.baseM], cx, FixpipeToNd<float>(mr, mr, m16, g.baseM));
    SetFlag<HardEvent::FIX_M>(ev_.cFree);
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
  CubeEvents ev_;
};

}  // namespace mhc_av4
