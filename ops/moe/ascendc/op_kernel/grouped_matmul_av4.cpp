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
#include "cube_tiles.h"
#include "moe_tiling_data.h"

namespace moe_av4 {
using namespace AscendC;
using namespace av4_common;

template <typename T>
class GroupedMatmulKernel {
 public:
  static constexpr int64_t kC0 = av4_common::kC0<T>;   // fractal: 16 rows x C0 elements (512 bytes)

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
    ev_.Alloc(pipe);
  }

  __aicore__ inline void Process() {
    const GroupedMatmulTilingData& g = *td_;
    const int64_t core = GetBlockIdx(), cores = g.usedCores;
    ev_.Start();                            // every buffer starts free
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
    ev_.Drain();
  }

 private:
  // y[row, col .. col + nc) for mr rows = x[row .., :] . W_e[:, col ..], K in baseK steps
  __aicore__ inline void Tile(int64_t e, int64_t row, int64_t mr, int64_t col, int64_t nc) {
    const GroupedMatmulTilingData& g = *td_;
    const int64_t m16 = RoundUp(mr, 16), n16 = RoundUp(nc, 16);
    LocalTensor<float> c = c_.Get<float>();
    WaitFlag<HardEvent::FIX_M>(ev_.cFree);     // the previous tile's Fixpipe has read L0C
    for (int64_t k0 = 0; k0 < g.k; k0 += g.baseK) {
      const int64_t kc = g.k - k0 < g.baseK ? g.k - k0 : g.baseK;
      const int64_t kp = RoundUp(kc, g.transposeW ? kC0 : 16);   // [K, N] weights: 16 x 16 transposing loads
      const int b = static_cast<int>(step_ & 1);
      LocalTensor<T> a1 = a1_.Get<T>()[b * aHalf_], b1 = b1_.Get<T>()[b * bHalf_];
      LocalTensor<T> a2 = a2_.Get<T>()[b * aHalf_], b2 = b2_.Get<T>()[b * bHalf_];
      // GM -> L1 (MTE2), once MTE1 has read this L1 buffer two steps ago
      WaitFlag<HardEvent::MTE1_MTE2>(ev_.l1Free[b]);
      if (kc != kp) {
        Fill(a1, InitConstValueParams<T>(1, static_cast<uint16_t>(m16 * kp * sizeof(T) / 32), 0, static_cast<T>(0)));
        Fill(b1, InitConstValueParams<T>(1, static_cast<uint16_t>(n16 * kp * sizeof(T) / 32), 0, static_cast<T>(0)));
      }
      DataCopy(a1, xGm_[row * g.k + k0], NdToNz(mr, kc, g.k, m16));
      if (g.transposeW) {
        DataCopy(b1, wGm_[e * g.n * g.k + col * g.k + k0], NdToNz(nc, kc, g.k, n16));   // [n][k]: NZ [k1][n16][C0]
      } else {
        DataCopy(b1, wGm_[e * g.k * g.n + k0 * g.n + col], NdToNz(kc, nc, g.n, kp));    // [k][n]: NZ [n1][kp][16]
      }
      SetFlag<HardEvent::MTE2_MTE1>(ev_.l1Ready[b]);
      WaitFlag<HardEvent::MTE2_MTE1>(ev_.l1Ready[b]);
      // L1 -> L0A / L0B (MTE1), once the Mmad two steps ago has read this L0 buffer
      WaitFlag<HardEvent::M_MTE1>(ev_.l0Free[b]);
      LoadL0A(a2, a1, m16 / 16, 0, kp / kC0);
      if (g.transposeW) {
        LoadL0BFromRows(b2, b1, n16 / 16, 0, kp / kC0);    // [n][k] rows: already L0B's fractals
      } else {
        LoadL0BTransposed(b2, b1, kp / 16, 0, n16 / 16);   // [k][n] rows: each 16 x 16 fractal transposed
      }
      SetFlag<HardEvent::MTE1_MTE2>(ev_.l1Free[b]);
      SetFlag<HardEvent::MTE1_M>(ev_.l0Ready[b]);
      WaitFlag<HardEvent::MTE1_M>(ev_.l0Ready[b]);
      // Mmad (M): the first K step initialises L0C, the others accumulate
      Mmad(c, a2, b2, MmadShape(mr, nc, kc, k0 == 0));
      SetFlag<HardEvent::M_MTE1>(ev_.l0Free[b]);
      ++step_;
    }
    // L0C -> GM (FIX): NZ -> ND rows of N, float32 -> T
    SetFlag<HardEvent::M_FIX>(ev_.cReady);
    WaitFlag<HardEvent::M_FIX>(ev_.cReady);
    Fixpipe(yGm_[row * g.n + col], c, FixpipeToNd<T>(nc, mr, m16, g.n));
    SetFlag<HardEvent::FIX_M>(ev_.cFree);
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
    WaitFlag<HardEvent::MTE1_MTE2>(ev_.l1Free[0]);   // (z1 is not shared, but the flag pairs stay balanced)
    Fill(z1, InitConstValueParams<T>(1, 16, 0, static_cast<T>(0)));   // one 512-byte zero fractal
    SetFlag<HardEvent::MTE2_MTE1>(ev_.l1Ready[0]);
    WaitFlag<HardEvent::MTE2_MTE1>(ev_.l1Ready[0]);
    WaitFlag<HardEvent::M_MTE1>(ev_.l0Free[0]);
    LoadData(a2, z1, Load2D(0, g.baseM / 16, 0));   // the same zero fractal, repeated
    LoadData(b2, z1, Load2D(0, g.baseN / 16, 0));
    SetFlag<HardEvent::MTE1_MTE2>(ev_.l1Free[0]);
    SetFlag<HardEvent::MTE1_M>(ev_.l0Ready[0]);
    WaitFlag<HardEvent::MTE1_M>(ev_.l0Ready[0]);
    WaitFlag<HardEvent::FIX_M>(ev_.cFree);
    Mmad(c, a2, b2, MmadShape(g.baseM, g.baseN, kC0, true));
    SetFlag<HardEvent::M_MTE1>(ev_.l0Free[0]);
    SetFlag<HardEvent::M_FIX>(ev_.cReady);
    WaitFlag<HardEvent::M_FIX>(ev_.cReady);
    for (int64_t t = core; t < tiles; t += cores) {
      const int64_t r = firstRow + t / nTiles * g.baseM, col = t % nTiles * g.baseN;
      const int64_t mr = g.m - r < g.baseM ? g.m - r : g.baseM, nc = g.n - col < g.baseN ? g.n - col : g.baseN;
      Fixpipe(yGm_[r * g.n + col], c, FixpipeToNd<T>(nc, mr, g.baseM, g.n));
    }
    SetFlag<HardEvent::FIX_M>(ev_.cFree);
  }

  __aicore__ static inline int64_t RoundUp(int64_t v, int64_t a) { return (v + a - 1) / a * a; }
  __aicore__ static inline int64_t CeilDivI(int64_t v, int64_t a) { return (v + a - 1) / a; }

  const GroupedMatmulTilingData* td_ = nullptr;
  GlobalTensor<T> xGm_, wGm_, yGm_;
  GlobalTensor<int64_t> glGm_;
  TBuf<TPosition::A1> a1_, zero1_;
  TBuf<TPosition::B1> b1_;
  TBuf<TPosition::A2> a2_;
  TBuf<TPosition::B2> b2_;
  TBuf<TPosition::CO1> c_;
  int64_t aHalf_ = 0, bHalf_ = 0, step_ = 0;
  CubeEvents ev_;
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
