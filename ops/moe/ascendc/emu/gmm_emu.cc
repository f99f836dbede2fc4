// Runs the real GroupedMatmulAv4 kernel body (op_kernel/grouped_matmul_av4.cpp) on the CPU, on the AI Cube core
// path: real asc-devkit headers in CPU-debug mode (AIC) over the intrinsic emulator's Cube unit
// (ops/ascendc_common/emu), host tiling from tiling/moe_tiling.cc, one forked process per cube core.
//   gmm_emu DIR M K N E group_list_type transpose_weight aic_cores
//       reads DIR/{x,weight}.bin (float32, rounded to DTYPE_X here), DIR/group_list.bin (int64);
//       writes DIR/y.bin [M, N] (float32 of the DTYPE_X result; y starts NaN-poisoned)
// Exit 0 on success, 3 on an emulator error (race, tiling refusal), 2 on bad arguments.
#include "../op_kernel/grouped_matmul_av4.cpp"
#include "../tiling/moe_tiling.cc"
#include "emu_runtime.h"
#include "emu_io.h"

#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 9) {
    std::fprintf(stderr, "usage: %s DIR M K N E group_list_type transpose_weight aic_cores\n", argv[0]);
    return 2;
  }
  using X = DTYPE_X;
  const std::string dir = argv[1];
  const int64_t M = std::atoll(argv[2]), K = std::atoll(argv[3]), N = std::atoll(argv[4]), E = std::atoll(argv[5]);
  const int32_t ltype = std::atoi(argv[6]);
  const bool tw = std::atoi(argv[7]) != 0;
  const moe_av4::MoePlatform p = moe_av4::Platform910B(2 * static_cast<uint32_t>(std::atoi(argv[8])), 196608);
  moe_av4::GroupedMatmulTilingData td{};
  const char* why = "";
  if (!moe_av4::GroupedMatmulTiling(M, K, N, E, ltype, tw, sizeof(X), p, &td, &why)) av4_emu::Fail("tiling: %s", why);
  uint8_t* x = av4_emu::ToGm<X>(av4_emu::ReadFile<float>(dir + "/x.bin", M * K));
  uint8_t* w = av4_emu::ToGm<X>(av4_emu::ReadFile<float>(dir + "/weight.bin", E * K * N));
  uint8_t* gl = av4_emu::GmCopy(av4_emu::ReadFile<int64_t>(dir + "/group_list.bin", E));
  uint8_t* y = av4_emu::ToGm<X>(std::vector<float>(M * N, NAN));
  uint8_t* tiling = av4_emu::TilingGm(td);
  if (!av4_emu::Launch(static_cast<int>(td.usedCores), true,
                       [&] { grouped_matmul_av4(x, w, gl, y, nullptr, tiling); }))
    return 3;
  av4_emu::WriteFile(dir + "/y.bin", av4_emu::FromGm<X>(y, M * N));
  std::printf("ok cores=%lld base=%lldx%lldx%lld\n", (long long)td.usedCores, (long long)td.baseM,
              (long long)td.baseN, (long long)td.baseK);
  return 0;
}
