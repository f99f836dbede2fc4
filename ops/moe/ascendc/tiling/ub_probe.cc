// Ties the tiling's UB figures to the kernels' actual buffer allocations: the kernel sources are compiled against
// the AscendC stand-in with just enough of it defined here for Init() to run on the host — TPipe::InitBuffer sums
// the bytes it is asked for (rounded up to 32 B, as on the device) — and for many tilings the sum must equal the
// tiling's ubBytes (which the tiling guarantees fits the platform's UB). Built with -DDTYPE_X=float and =half.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>

#define AV4_KERNEL_CLASSES_ONLY
#include "kernel_operator.h"
#include "decls_moe.h"
#include "../op_kernel/moe_gating_topk_av4.cpp"
#include "../op_kernel/moe_init_routing_av4.cpp"
#include "../op_kernel/moe_finalize_routing_av4.cpp"
#include "moe_tiling.h"

static uint64_t g_ub = 0;
static int64_t g_block = 0;

namespace AscendC {
template <class T>
bool TPipe::InitBuffer(T&, uint8_t num, uint32_t len) {
  g_ub += uint64_t(num) * ((len + 31u) / 32u * 32u);
  return true;
}
template <TPosition pos>
bool TPipe::InitBuffer(TBuf<pos>&, uint32_t len) {
  g_ub += (len + 31u) / 32u * 32u;
  return true;
}
template <TPosition pos>
template <typename T>
LocalTensor<T> TBuf<pos>::Get() {
  return LocalTensor<T>();
}
template <typename T>
void GlobalTensor<T>::SetGlobalBuffer(__gm__ T*, uint64_t) {}
template <typename T>
void GlobalTensor<T>::SetGlobalBuffer(__gm__ T*) {}
template <typename T>
template <typename S>
void LocalTensor<T>::SetValue(const uint32_t, const S) const {}   // gating's Init fills its id / padding lanes
int64_t GetBlockIdx() { return g_block; }
GM_ADDR GetUserWorkspace(GM_ADDR w) { return w; }
template <typename T>
void DataCopyPad(const LocalTensor<T>&, const GlobalTensor<T>&, const DataCopyExtParams&,
                 const DataCopyPadExtParams<T>&) {}
template <HardEvent event>
void SetFlag(int32_t) {}
template <HardEvent event>
void WaitFlag(int32_t) {}
static TPipe* g_pipe = nullptr;
TEventID TPipe::FetchEventID(HardEvent) { return 0; }
}  // namespace AscendC
AscendC::TPipe* GetTPipePtr() { return AscendC::g_pipe; }

using namespace moe_av4;

static void Expect(uint64_t got, uint64_t want, const char* what, long a, long b) {
  if (got != want) {
    std::printf("FAIL %s (%ld, %ld): kernel allocates %llu B, tiling says %llu B\n", what, a, b,
                (unsigned long long)got, (unsigned long long)want);
    std::exit(1);
  }
}

int main() {
  const MoePlatform plats[] = {{48, 24, 196608, 524288, 65536, 65536, 131072},
                               {40, 20, 196352, 524288, 65536, 65536, 131072},
                               {1, 1, 65536, 262144, 32768, 32768, 65536}};
  const int32_t eb = sizeof(DTYPE_X);
  long cases = 0;
  for (const MoePlatform& p : plats) {
    for (int64_t T : {1, 9, 100, 5000})
      for (int64_t E : {8, 60, 256, 1024})
        for (int64_t k : {1, 6}) {
          MoeGatingTopKTilingData td;
          const char* why = nullptr;
          if (!GatingTopKTiling(T, E, k, 2, 1, 1, 0, false, false, 0, 1.f, 1e-20f, 4, p, &td, &why)) continue;
          g_ub = 0;
          TPipe pipe;
          AscendC::g_pipe = &pipe;
          GatingTopKKernel op;
          op.Init(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, &td, &pipe);
          Expect(g_ub, td.ubBytes, "gating", long(T), long(E));
          ++cases;
        }
    for (int64_t T : {1, 47, 2048})
      for (int64_t H : {7, 4096, 100000})
        for (int64_t E : {8, 256, 1024})
          for (int mode = 0; mode < 2; ++mode) {
            MoeInitRoutingTilingData td;
            const char* why = nullptr;
            if (!InitRoutingTiling(T, 6, H, E, std::min<int64_t>(T, 4), 0, mode, 1, eb, p, &td, &why)) {
              std::printf("FAIL init routing tiling refused: %s\n", why);
              return 1;
            }
            g_ub = 0;
            TPipe pipe;
            InitRoutingKernel<DTYPE_X> op;
            op.Init(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, &td, &pipe);
            Expect(g_ub, td.ubBytes, "init routing", long(H), long(E));
            ++cases;
          }
    for (int64_t H : {1, 16, 4096, 7168, 50000})
      for (int extras = 0; extras < 4; ++extras) {
        MoeFinalizeRoutingTilingData td;
        const char* why = nullptr;
        const bool x1 = extras & 1, bias = extras & 2;
        if (!FinalizeRoutingTiling(64, 6, H, 384, 2, x1, x1, bias, eb, p, &td, &why)) {
          std::printf("FAIL finalize tiling refused: %s\n", why);
          return 1;
        }
        g_ub = 0;
        TPipe pipe;
        FinalizeKernel<DTYPE_X> op;
        op.Init(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, &td, &pipe);
        Expect(g_ub, td.ubBytes, "finalize", long(H), long(extras));
        ++cases;
      }
  }
  std::printf("ok %ld\n", cases);
  return 0;
}
