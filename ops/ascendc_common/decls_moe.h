// AscendC APIs used only by the MoE kernels (ops/moe/ascendc/op_kernel), declarations only, for
// g++ -fsyntax-only checks (see README.md). Signatures as declared in hicann/asc-devkit:
//   include/basic_api/kernel_operator_vec_unary_intf.h         Ln, Abs (level-2 "count" forms)
//   include/basic_api/kernel_operator_vec_binary_scalar_intf.h Maxs, Mins
//   kernel_operator_vec_reduce_intf.h                          ReduceMax / ReduceSum (count forms)
//   kernel_operator_sync_intf / SyncAll docs                  SyncAll (hard sync across AIV cores)
//   lib/matmul_intf.h, kernel_tiling/kernel_tiling.h            Matmul high-level API, MatmulType, TCubeTiling
// Included by the MoE kernels after kernel_operator.h (until kernel_operator.h includes it itself).
#pragma once
#include "decls_core.h"

#ifndef KERNEL_TYPE_AIC_ONLY
#define KERNEL_TYPE_AIC_ONLY 1
#endif

namespace AscendC {

template <typename T>
__aicore__ void Ln(const LocalTensor<T>& dst, const LocalTensor<T>& src, const int32_t& count);
template <typename T>
__aicore__ void Abs(const LocalTensor<T>& dst, const LocalTensor<T>& src, const int32_t& count);

AV4_DECLARE_SCALAR(Maxs);
AV4_DECLARE_SCALAR(Mins);

// dst[0] = max of the first `count` elements; with calIndex, dst[1] holds its index (as the bits of a uint32 for
// float). The index among equal maxima is not documented: our kernels re-scan for the lowest id themselves.
template <typename T>
__aicore__ void ReduceMax(const LocalTensor<T>& dst, const LocalTensor<T>& src, const LocalTensor<T>& sharedTmpBuffer,
                          const int32_t count, bool calIndex = 0);
template <typename T>
__aicore__ void ReduceSum(const LocalTensor<T>& dst, const LocalTensor<T>& src, const LocalTensor<T>& sharedTmpBuffer,
                          const int32_t count);

// Barrier across all cores of the launch (hardware sync variant).
template <bool isAIVOnly = true>
__aicore__ void SyncAll();

__aicore__ GM_ADDR GetSysWorkSpacePtr();
// The user part of the launch workspace (after the system workspace the host reserved).
__aicore__ GM_ADDR GetUserWorkspace(GM_ADDR workspace);

// ------------------------------------------------------------------------------------------ Matmul API
enum class CubeFormat { ND = 0, NZ, ZN, ZZ, NN, ND_ALIGN, SCALAR, VECTOR };

namespace tiling {
struct TCubeTiling {  // kernel_tiling/kernel_tiling.h (the fields our host code sets or reads)
  int32_t usedCoreNum, M, N, Ka, Kb, singleCoreM, singleCoreN, singleCoreK, baseM, baseN, baseK, depthA1, depthB1,
      stepM, stepN, isBias, transLength, iterateOrder, shareMode, shareL1Size, shareL0CSize, shareUbSize, batchM,
      batchN, singleBatchM, singleBatchN, stepKa, stepKb, depthAL1CacheUB, depthBL1CacheUB, dbL0A, dbL0B, dbL0C;
};
}  // namespace tiling

template <typename T>
struct InitConstValueParams {  // kernel_struct_mm.h
  __aicore__ InitConstValueParams() {}
  __aicore__ InitConstValueParams(const uint16_t repeatTimesIn, const uint16_t blockNumIn, const uint16_t dstGapIn,
                                  const T initValueIn)
      : repeatTimes(repeatTimesIn), blockNum(blockNumIn), dstGap(dstGapIn), initValue(initValueIn) {}
  uint16_t repeatTimes = 0;
  uint16_t blockNum = 0;
  uint16_t dstGap = 0;
  T initValue = 0;
};
template <typename T, typename U = T>
__aicore__ void Fill(const LocalTensor<T>& dst, const InitConstValueParams<U>& initConstValueParams);

template <TPosition POSITION, CubeFormat FORMAT, typename TYPE, bool ISTRANS = false>
struct MatmulType {
  constexpr static TPosition pos = POSITION;
  constexpr static CubeFormat format = FORMAT;
  using T = TYPE;
  constexpr static bool isTrans = ISTRANS;
};

template <class A_TYPE, class B_TYPE, class C_TYPE, class BIAS_TYPE = C_TYPE>
class Matmul {
 public:
  using SrcAT = typename A_TYPE::T;
  using SrcBT = typename B_TYPE::T;
  using DstT = typename C_TYPE::T;
  __aicore__ void Init(const tiling::TCubeTiling* cubeTiling, TPipe* tpipe = nullptr);
  __aicore__ void SetOrgShape(int orgM, int orgN, int orgK);
  __aicore__ void SetSingleShape(int singleM, int singleN, int singleK);
  __aicore__ void SetTensorA(const GlobalTensor<SrcAT>& gm, bool isTransposeA = false);
  __aicore__ void SetTensorB(const GlobalTensor<SrcBT>& gm, bool isTransposeB = false);
  template <bool sync = true>
  __aicore__ void IterateAll(const GlobalTensor<DstT>& gm, uint8_t enAtomic = 0, bool enSequentialWrite = false,
                             bool waitIterateAll = false, bool fakeMsg = false);
  __aicore__ void End();
};

}  // namespace AscendC

// REGIST_MATMUL_OBJ(tpipe, workspace, matmul object, &tiling): binds the Matmul object to the pipe and tiling.
#ifndef REGIST_MATMUL_OBJ
#define REGIST_MATMUL_OBJ(tpipe, workspace, mm, tilingPtr) ((void)(workspace), (mm).Init((tilingPtr), (tpipe)))
#endif
