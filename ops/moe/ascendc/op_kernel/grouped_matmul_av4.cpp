// GroupedMatmulAv4 on the AI Cube cores (aclnnGroupedMatmul semantics, split_item 3, group_type 0):
//   x [M, K], weight [E, K, N] (or [E, N, K] with transpose_weight), group_list [E] (cumsum or counts, int64)
//   -> y [M, N]: rows of group e times weight[e]; rows past the last group are zero (written here, from a zero tile
//   in L0C, so y never holds stale memory -- masking with y*0 afterwards would keep NaN/Inf garbage).
// Work: tiles of (group, baseM rows, baseN columns), enumerated in group order and dealt round-robin to the cube
// cores; group sizes live in device memory, so every core walks group_list with the scalar unit. Each tile runs the
// basic Cube data path over K in baseK steps (docs/ascendc.md, "Cube unit"):
//   GM -ND2NZ-> L1 (MTE2) -LoadData-> L0A / L0B (MTE1) -Mmad-> L0C (M, float32 accumulation) -Fixpipe NZ2ND-> GM (FIX)
// with ping-pong L1 and L0A/L0B buffers (the MTE2 load of step s+1 overlaps the Mmad of step s) and one L0C tile.
// B in L0B is "Zn" (16 x C0 blocks of B^T): an [E, N, K] weight is that already (plain load); a [K, N] one is
// transposed fractal by fractal by the 2D load (16-bit types; the host refuses float32 without transpose_weight).
// The K tail of a step is zero-filled in L1 first: Mmad reads whole C0 columns, and 0 * garbage may be NaN.
#define ASCENDC_CUBE_ONLY
#include "kernel_operator.h"
#include "moe_tiling_data.h"

namespace moe_av4 {
using namespace AscendC;

template <typename T>
class GroupedMatmulKernel {
 public:
  static constexpr int64_t kC0 = 32 / sizeof(T);    // fractal: 16 rows x C0 elements (512 bytes)

  __aicore__ inline GroupedMatmulKernel() {}

  __aicore__ inline void Init(GM_ADDR x, GM_ADDR w, GM_ADDR groupList, GM_ADDR y, const GroupedMatmulTilingData* td,
                              TPipe* pipe) {
    td_ = td;
    const GroupedMatmulTilingData& g = *td;
    xGm_.SetGlobalBuffer((__gm__ T*)x, static_cast<uint64_t>(g.m * g.k));
    wGm_.SetGlobalBuffer((__gm__ T*)w, static_cast<uint64_t>(g.groups * g.k * g.n));
    yGm_.SetGlobalBuffer((__gm__ T*)y, static_cast<uint64_t>(g.m * g.n));
    glGm_.SetGlobalBuffer((__gm__ int64_t*)groupList, static_cast<uint64_t>(g.groups));
    const uint32_t aBytes = static_cast<uint32_t>(g.baseM * g.baseK * sizeof(T));
    const uint32_t bBytes = static_cast<uint32_t>(g.baseK * g.baseN * sizeof(T));
    pipe->InitBuffer(a1_, 2 * aBytes);     // L1 ping-pong (counted in the tiling's l1Bytes)
    pipe->InitBuffer(b1_, 2 * bBytes);
    pipe->InitBuffer(zero1_, kGmmZeroL1Bytes);
    pipe->InitBuffer(a2_, 2 * aBytes);     // L0A / L0B ping-pong
    pipe->InitBuffer(b2_, 2 * bBytes);
    pipe->InitBuffer(c_, static_cast<uint32_t>(g.baseM * g.baseN * sizeof(float)));   // L0C
    aHalf_ = g.baseM * g.baseK;
    bHalf_ = g.baseK * g.baseN;
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
    const GroupedMatmulTilingData& g = *td_;
    const int64_t core = GetBlockIdx(), cores = g.usedCores;
    for (int i = 0; i < 2; ++i) {           // every buffer starts free
      SetFlag<HardEvent::MTE1_MTE2>(l1Free_[i]);
      SetFlag<HardEvent::M_MTE1>(l0Free_[i]);
    }
    SetFlag<HardEvent::FIX_M>(cFree_);
    int64_t tile = 0, row0 = 0;
    for (int64_t e = 0; e < g.groups; ++e) {
      const int64_t v = glGm_.GetValue(static_cast<uint64_t>(e));
      int64_t end = g.groupListType == 0 ? v : row0 + v;
      end = end > g.m ? g.m : (end < row0 ? row0 : end);
      const int64_t rows = end - row0;
      for (int64_t mb = 0; mb < rows; mb += g.baseM) {
        for (int64_t nb = 0; nb < g.n; nb += g.baseN, ++tile) {
          if (tile % cores != core) continue;
          const int64_t mr = rows - mb < g.baseM ? rows - mb : g.baseM;
          const int64_t nc = g.n - nb < g.baseN ? g.n - nb : g.baseN;
          Tile(e, row0 + mb, mr, nb, nc);
        }
      }
      row0 = end;
    }
    ZeroTail(row0);
    for (int i = 0; i < 2; ++i) {
      WaitFlag<HardEvent::MTE1_MTE2>(l1Free_[i]);
      WaitFlag<HardEvent::M_MTE1>(l0Free_[i]);
    }
    WaitFlag<HardEvent::FIX_M>(cFree_);
  }

 private:
  // y[row, col .. col + nc) for mr rows = x[row .., :] . W_e[:, col ..], K in baseK steps
  __aicore__ inline void Tile(int64_t e, int64_t row, int64_t mr, int64_t col, int64_t nc) {
    const GroupedMatmulTilingData& g = *td_;
    const int64_t m16 = RoundUp(mr, 16), n16 = RoundUp(nc, 16);
    LocalTensor<float> c = c_.Get<float>();
    WaitFlag<HardEvent::FIX_M>(cFree_);     // the previous tile's Fixpipe has read L0C
    for (int64_t k0 = 0; k0 < g.k; k0 += g.baseK) {
      const int64_t kc = g.k - k0 < g.baseK ? g.k - k0 : g.baseK;
      const int64_t kp = RoundUp(kc, g.transposeW ? kC0 : 16);   // [K, N] weights: 16 x 16 transposing loads
      const int b = static_cast<int>(step_ & 1);
      LocalTensor<T> a1 = a1_.Get<T>()[b * aHalf_], b1 = b1_.Get<T>()[b * bHalf_];
      LocalTensor<T> a2 = a2_.Get<T>()[b * aHalf_], b2 = b2_.Get<T>()[b * bHalf_];
      // GM -> L1 (MTE2), once MTE1 has read this L1 buffer two steps ago
      WaitFlag<HardEvent::MTE1_MTE2>(l1Free_[b]);
      if (kc != kp) {
        Fill(a1, InitConstValueParams<T>(1, static_cast<uint16_t>(m16 * kp * sizeof(T) / 32), 0, static_cast<T>(0)));
        Fill(b1, InitConstValueParams<T>(1, static_cast<uint16_t>(n16 * kp * sizeof(T) / 32), 0, static_cast<T>(0)));
      }
      DataCopy(a1, xGm_[row * g.k + k0], Nd2Nz(mr, kc, g.k, m16));
      if (g.transposeW) {
        DataCopy(b1, wGm_[e * g.n * g.k + col * g.k + k0], Nd2Nz(nc, kc, g.k, n16));    // [n][k]: NZ [k1][n16][C0]
      } else {
        DataCopy(b1, wGm_[e * g.k * g.n + k0 * g.n + col], Nd2Nz(kc, nc, g.n, kp));     // [k][n]: NZ [n1][kp][16]
      }
      SetFlag<HardEvent::MTE2_MTE1>(l1Ready_[b]);
      WaitFlag<HardEvent::MTE2_MTE1>(l1Ready_[b]);
      // L1 -> L0A / L0B (MTE1), once the Mmad two steps ago has read this L0 buffer
      WaitFlag<HardEvent::M_MTE1>(l0Free_[b]);
      for (int64_t i = 0; i < m16 / 16; ++i)   // A: fractal (m1, k1) sits at k1 * m16/16 + m1 in L1, Zz in L0A
        LoadData(a2[i * 16 * kp], a1[i * 16 * kC0], Load2D(kp / kC0, m16 / 16, false));
      if (g.transposeW) {
        for (int64_t j = 0; j < kp / kC0; ++j)   // already n-rows x k-columns fractals, in (k1, n1) order
          LoadData(b2[j * n16 * kC0], b1[j * n16 * kC0], Load2D(n16 / 16, 1, false));
      } else {
        for (int64_t j = 0; j < kp / 16; ++j)    // fractal (k1, n1) at n1 * kp/16 + k1: transpose each
          LoadData(b2[j * n16 * 16], b1[j * 16 * 16], Load2D(n16 / 16, kp / 16, true));
      }
      SetFlag<HardEvent::MTE1_MTE2>(l1Free_[b]);
      SetFlag<HardEvent::MTE1_M>(l0Ready_[b]);
      WaitFlag<HardEvent::MTE1_M>(l0Ready_[b]);
      // Mmad (M): the first K step initialises L0C, the others accumulate
      MmadParams mp;
      mp.m = static_cast<uint16_t>(mr);
      mp.n = static_cast<uint16_t>(nc);
      mp.k = static_cast<uint16_t>(kc);
      mp.cmatrixInitVal = k0 == 0;
      Mmad(c, a2, b2, mp);
      SetFlag<HardEvent::M_MTE1>(l0Free_[b]);
      ++step_;
    }
    // L0C -> GM (FIX): NZ -> ND rows of N, float32 -> T
    SetFlag<HardEvent::M_FIX>(cReady_);
    WaitFlag<HardEvent::M_FIX>(cReady_);
    Fixpipe(yGm_[row * g.n + col], c, FixOut(nc, mr, m16));
    SetFlag<HardEvent::FIX_M>(cFree_);
  }

  // y rows [firstRow, m) belong to no group: a zero baseM x baseN tile in L0C (Mmad of zero fractals) is written
  // over them by Fixpipe, in tiles dealt round-robin over the cores (any N: Fixpipe writes ND rows of any width)
  __aicore__ inline void ZeroTail(int64_t firstRow) {
    const GroupedMatmulTilingData& g = *td_;
    const int64_t rows = g.m - firstRow;
    if (rows <= 0) return;
    const int64_t core = GetBlockIdx(), cores = g.usedCores;
    const int64_t nTiles = CeilDivI(g.n, g.baseN), tiles = CeilDivI(rows, g.baseM) * nTiles;
    if (core >= tiles) return;
    LocalTensor<T> z1 = zero1_.Get<T>();
    LocalTensor<T> a2 = a2_.Get<T>(), b2 = b2_.Get<T>();
    LocalTensor<float> c = c_.Get<float>();
    WaitFlag<HardEvent::MTE1_MTE2>(l1Free_[0]);   // (z1 is not shared, but the flag pairs stay balanced)
    Fill(z1, InitConstValueParams<T>(1, 16, 0, static_cast<T>(0)));   // one 512-byte zero fractal
    SetFlag<HardEvent::MTE2_MTE1>(l1Ready_[0]);
    WaitFlag<HardEvent::MTE2_MTE1>(l1Ready_[0]);
    WaitFlag<HardEvent::M_MTE1>(l0Free_[0]);
    LoadData(a2, z1, Load2D(g.baseM / 16, 0, false));   // the same zero fractal, repeated
    LoadData(b2, z1, Load2D(g.baseN / 16, 0, false));
    SetFlag<HardEvent::MTE1_MTE2>(l1Free_[0]);
    SetFlag<HardEvent::MTE1_M>(l0Ready_[0]);
    WaitFlag<HardEvent::MTE1_M>(l0Ready_[0]);
    WaitFlag<HardEvent::FIX_M>(cFree_);
    MmadParams mp;
    mp.m = static_cast<uint16_t>(g.baseM);
    mp.n = static_cast<uint16_t>(g.baseN);
    mp.k = static_cast<uint16_t>(kC0);
    mp.cmatrixInitVal = true;
    Mmad(c, a2, b2, mp);
    SetFlag<HardEvent::M_MTE1>(l0Free_[0]);
    SetFlag<HardEvent::M_FIX>(cReady_);
    WaitFlag<HardEvent::M_FIX>(cReady_);
    for (int64_t t = core; t < tiles; t += cores) {
      const int64_t r = firstRow + t / nTiles * g.baseM, col = t % nTiles * g.baseN;
      const int64_t mr = g.m - r < g.baseM ? g.m - r : g.baseM, nc = g.n - col < g.baseN ? g.n - col : g.baseN;
      Fixpipe(yGm_[r * g.n + col], c, FixOut(nc, mr, g.baseM));
    }
    SetFlag<HardEvent::FIX_M>(cFree_);
  }

  __aicore__ static inline int64_t RoundUp(int64_t v, int64_t a) { return (v + a - 1) / a * a; }
  __aicore__ static inline int64_t CeilDivI(int64_t v, int64_t a) { return (v + a - 1) / a; }
  // one ND matrix of rows x cols (row stride srcCols) -> NZ with rowsPad rows per C0 column
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
  __aicore__ static inline LoadData2DParams Load2D(int64_t repeat, int64_t srcStride, bool transpose) {
    LoadData2DParams p;
    p.startIndex = 0;
    p.repeatTimes = static_cast<uint8_t>(repeat);
    p.srcStride = static_cast<uint16_t>(srcStride);
    p.dstGap = 0;
    p.ifTranspose = transpose;
    return p;
  }
  __aicore__ inline FixpipeParamsV220 FixOut(int64_t nc, int64_t mr, int64_t m16) const {
    FixpipeParamsV220 p;
    p.nSize = static_cast<uint16_t>(nc);
    p.mSize = static_cast<uint16_t>(mr);
    p.srcStride = static_cast<uint16_t>(m16);
    p.dstStride = static_cast<uint32_t>(td_->n);
    p.ndNum = 1;
    p.srcNdStride = 0;
    p.dstNdStride = 0;
    if constexpr (sizeof(T) == 4) p.quantPre = QuantMode_t::NoQuant;
    else if constexpr (IsSameType<T, bfloat16_t>::value) p.quantPre = QuantMode_t::F322BF16;
    else p.quantPre = QuantMode_t::F322F16;
    return p;
  }

  const GroupedMatmulTilingData* td_ = nullptr;
  GlobalTensor<T> xGm_, wGm_, yGm_;
  GlobalTensor<int64_t> glGm_;
  TBuf<TPosition::A1> a1_, zero1_;
  TBuf<TPosition::B1> b1_;
  TBuf<TPosition::A2> a2_;
  TBuf<TPosition::B2> b2_;
  TBuf<TPosition::CO1> c_;
  int64_t aHalf_ = 0, bHalf_ = 0, step_ = 0;
  TEventID l1Free_[2], l1Ready_[2], l0Free_[2], l0Ready_[2], cReady_, cFree_;
};

}  // namespace moe_av4

#ifndef AV4_KERNEL_CLASSES_ONLY  // host-side probes (tiling/ub_probe.cc) compile the classes only
extern "C" __global__ __aicore__ void grouped_matmul_av4(GM_ADDR x, GM_ADDR weight, GM_ADDR groupList, GM_ADDR y,
                                                         GM_ADDR workspace, GM_ADDR tiling) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIC_ONLY);
  (void)workspace;
  REGISTER_TILING_DEFAULT(moe_av4::GroupedMatmulTilingData);
  GET_TILING_DATA_WITH_STRUCT(moe_av4::GroupedMatmulTilingData, td, tiling);
  AscendC::TPipe pipe;
  moe_av4::GroupedMatmulKernel<DTYPE_X> op;
  op.Init(x, weight, groupList, y, &td, &pipe);
  op.Process();
}
#endif
