// GroupedMatmulAv4 on the AI Cube cores (aclnnGroupedMatmul semantics, split_item 3, group_type 0):
//   x [M, K], weight [E, K, N] (or [E, N, K] with transpose_weight), group_list [E] (cumsum or counts, int64)
//   -> y [M, N]: rows of group e times weight[e]; rows past the last group are zero (written here, from a zero tile
//   in L1, so y never holds stale memory -- masking with y*0 afterwards would keep NaN/Inf garbage).
// Work: blocks of (group, singleM rows, singleN columns), enumerated in group order and dealt round-robin to the
// cube cores; group sizes live in device memory, so every core walks group_list with the scalar unit. Each
// block is one Matmul-API call (SetSingleShape for ragged tails, IterateAll straight to GM): GM -> L1 -> L0A/L0B
// -> cube -> L0C -> GM with the API's double buffering, tiled by the host's TCubeTiling (baseM/N/K).
#define ASCENDC_CUBE_ONLY
#include "kernel_operator.h"
#ifdef AV4_ASCENDC_STANDIN
#include "decls_moe.h"
#else
#include "kernel_tiling/kernel_tiling.h"
#include "lib/matmul_intf.h"
#endif
#include "grouped_matmul_tiling.h"

namespace moe_av4 {
using namespace AscendC;

template <typename T>
class GroupedMatmulKernel {
 public:
  using AType = MatmulType<TPosition::GM, CubeFormat::ND, T>;
  // ISTRANS = true: B may be handed over transposed (transpose_weight, [E, N, K]); SetTensorB(.., true) on a type
  // declared with ISTRANS = false is refused by the Matmul API's CheckMatrixB (and silently wrong on the device).
  using BType = MatmulType<TPosition::GM, CubeFormat::ND, T, true>;
  using CType = MatmulType<TPosition::GM, CubeFormat::ND, T>;
  using MM = Matmul<AType, BType, CType>;

  __aicore__ inline GroupedMatmulKernel() {}

  __aicore__ inline void Init(GM_ADDR x, GM_ADDR w, GM_ADDR groupList, GM_ADDR y, const GroupedMatmulKernelTiling* td,
                              TPipe* pipe) {
    td_ = td;
    pipe->InitBuffer(zeroBuf_, kGmmZeroL1Bytes);   // counted in the tiling's l1Bytes
    const GroupedMatmulTilingData& g = td->gmm;
    xGm_.SetGlobalBuffer((__gm__ T*)x, static_cast<uint64_t>(g.m * g.k));
    wGm_.SetGlobalBuffer((__gm__ T*)w, static_cast<uint64_t>(g.groups * g.k * g.n));
    yGm_.SetGlobalBuffer((__gm__ T*)y, static_cast<uint64_t>(g.m * g.n));
    glGm_.SetGlobalBuffer((__gm__ int64_t*)groupList, static_cast<uint64_t>(g.groups));
  }

  __aicore__ inline void Process(MM& mm) {
    const GroupedMatmulTilingData& g = td_->gmm;
    const int64_t core = GetBlockIdx(), cores = g.usedCores;
    int64_t block = 0, row0 = 0;
    for (int64_t e = 0; e < g.groups; ++e) {
      const int64_t v = glGm_.GetValue(static_cast<uint64_t>(e));
      int64_t end = g.groupListType == 0 ? v : row0 + v;
      end = end > g.m ? g.m : (end < row0 ? row0 : end);
      const int64_t rows = end - row0;
      for (int64_t mb = 0; mb < rows; mb += g.singleM) {
        for (int64_t nb = 0; nb < g.n; nb += g.singleN, ++block) {
          if (block % cores != core) continue;
          const int64_t mr = rows - mb < g.singleM ? rows - mb : g.singleM;
          const int64_t nc = g.n - nb < g.singleN ? g.n - nb : g.singleN;
          const int64_t wOff = g.transposeW ? e * g.n * g.k + nb * g.k : e * g.k * g.n + nb;
          mm.SetOrgShape(static_cast<int>(g.m), static_cast<int>(g.n), static_cast<int>(g.k));
          mm.SetSingleShape(static_cast<int>(mr), static_cast<int>(nc), static_cast<int>(g.k));
          mm.SetTensorA(xGm_[(row0 + mb) * g.k], false);
          mm.SetTensorB(wGm_[wOff], g.transposeW != 0);
          mm.IterateAll(yGm_[(row0 + mb) * g.n + nb]);
        }
      }
      row0 = end;
    }
    mm.End();
    ZeroTail(row0);
  }

  // y rows [firstRow, m) belong to no group: zero them, in zero-tile chunks dealt round-robin over the cores. The
  // region is contiguous and 32-byte aligned (tiling: N * sizeof(T) % 32 == 0).
  __aicore__ inline void ZeroTail(int64_t firstRow) {
    const GroupedMatmulTilingData& g = td_->gmm;
    const int64_t total = (g.m - firstRow) * g.n;
    if (total <= 0) return;
    constexpr int64_t chunk = kGmmZeroL1Bytes / sizeof(T);
    LocalTensor<T> zero = zeroBuf_.Get<T>();
    Fill(zero, InitConstValueParams<T>(1, static_cast<uint16_t>(kGmmZeroL1Bytes / 32), 0, static_cast<T>(0)));
    const TEventID id = GetTPipePtr()->FetchEventID(HardEvent::MTE2_MTE3);   // L1 fill -> L1 to GM copy
    SetFlag<HardEvent::MTE2_MTE3>(id);
    WaitFlag<HardEvent::MTE2_MTE3>(id);
    const int64_t core = GetBlockIdx(), cores = g.usedCores;
    for (int64_t off = core * chunk; off < total; off += cores * chunk) {
      const int64_t len = total - off < chunk ? total - off : chunk;
      DataCopy(yGm_[firstRow * g.n + off], zero,
               DataCopyParams(1, static_cast<uint16_t>(len * static_cast<int64_t>(sizeof(T)) / 32), 0, 0));
    }
  }

 private:
  const GroupedMatmulKernelTiling* td_ = nullptr;
  GlobalTensor<T> xGm_, wGm_, yGm_;
  GlobalTensor<int64_t> glGm_;
  TBuf<TPosition::A1> zeroBuf_;
};

}  // namespace moe_av4

#ifndef AV4_KERNEL_CLASSES_ONLY  // host-side probes (tiling/ub_probe.cc) compile the classes only
extern "C" __global__ __aicore__ void grouped_matmul_av4(GM_ADDR x, GM_ADDR weight, GM_ADDR groupList, GM_ADDR y,
                                                         GM_ADDR workspace, GM_ADDR tiling) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIC_ONLY);
  (void)workspace;
  REGISTER_TILING_DEFAULT(moe_av4::GroupedMatmulKernelTiling);
  GET_TILING_DATA_WITH_STRUCT(moe_av4::GroupedMatmulKernelTiling, td, tiling);
  AscendC::TPipe pipe;
  moe_av4::GroupedMatmulKernel<DTYPE_X> op;
  typename moe_av4::GroupedMatmulKernel<DTYPE_X>::MM mm;
  REGIST_MATMUL_OBJ(&pipe, AscendC::GetSysWorkSpacePtr(), mm, &td.cube);
  op.Init(x, weight, groupList, y, &td, &pipe);
  op.Process(mm);
}
#endif
