// Runs the real Engram kernel bodies (op_kernel/*.cpp) on the CPU: real asc-devkit headers in CPU-debug mode over
// the intrinsic emulator (ops/ascendc_common/emu), host tiling from tiling/engram_tiling.cc, one forked process
// per core.
//   engram_emu gate    DIR T D hc eps cores ub   reads DIR/{h,kv,weight,alive}.bin (float32), writes DIR/out.bin
//   engram_emu dequant DIR N L S cores ub        reads DIR/rows.bin (int8) and DIR/scales.bin (float32 [N, S]),
//                                                writes DIR/y.bin
// h / kv / out are DTYPE_H and y is DTYPE_Y of this build (float or bfloat16_t); float data is converted on the
// way in (round to nearest even) and back to float32 on the way out. Exit 0 on success, 3 on a tiling refusal or
// an emulator error (race, bad access).
#include "../op_kernel/engram_gate_av4.cpp"
#include "../op_kernel/engram_dequant_av4.cpp"
#include "../tiling/engram_tiling.cc"
#include "emu_runtime.h"
#include "emu_io.h"

#include <string>
#include <vector>

namespace {

using av4_emu::FromGm;
using av4_emu::TilingGm;
using av4_emu::ToGm;

std::vector<float> ReadF32(const std::string& path, size_t n) { return av4_emu::ReadFile<float>(path, n); }

}  // namespace

int main(int argc, char** argv) {
  const std::string op = argc > 1 ? argv[1] : "";
  if (op == "gate" && argc == 9) {
    const std::string dir = argv[2];
    const int64_t T = std::atoll(argv[3]), D = std::atoll(argv[4]);
    const int32_t hc = std::atoi(argv[5]);
    const float eps = std::strtof(argv[6], nullptr);
    const av4_host::AivPlatform plat{static_cast<uint32_t>(std::atoi(argv[7])),
                                          std::strtoull(argv[8], nullptr, 10)};
    using X = DTYPE_H;
    engram_av4::EngramGateTilingData td{};
    const char* why = "";
    if (!engram_av4::EngramGateTiling(T, D, hc, sizeof(X), eps, plat, &td, &why)) av4_emu::Fail("tiling: %s", why);
    uint8_t* h = ToGm<X>(ReadF32(dir + "/h.bin", T * hc * D));
    uint8_t* kv = ToGm<X>(ReadF32(dir + "/kv.bin", T * (hc + 1) * D));
    uint8_t* w = ToGm<float>(ReadF32(dir + "/weight.bin", hc * D));
    uint8_t* alive = ToGm<float>(ReadF32(dir + "/alive.bin", T));
    uint8_t* out = ToGm<X>(std::vector<float>(T * hc * D, NAN));
    uint8_t* tiling = TilingGm(td);
    if (!av4_emu::Launch(td.usedCores, false, [&] { engram_gate_av4(h, kv, w, alive, out, nullptr, tiling); }))
      return 3;
    av4_emu::WriteFile(dir + "/out.bin", FromGm<X>(out, T * hc * D));
    std::printf("ok cores=%d tileT=%d dChunk=%d dChunks=%d ub=%u\n", td.usedCores, td.tileT, td.dChunk, td.dChunks,
                td.ubBytes);
    return 0;
  }
  if (op == "dequant" && argc == 8) {
    const std::string dir = argv[2];
    const int64_t N = std::atoll(argv[3]), L = std::atoll(argv[4]), S = std::atoll(argv[5]);
    const av4_host::AivPlatform plat{static_cast<uint32_t>(std::atoi(argv[6])),
                                          std::strtoull(argv[7], nullptr, 10)};
    using Y = DTYPE_Y;
    engram_av4::EngramDequantTilingData td{};
    const char* why = "";
    if (!engram_av4::EngramDequantTiling(N, L, S, sizeof(Y), plat, &td, &why)) av4_emu::Fail("tiling: %s", why);
    uint8_t* rows = av4_emu::GmCopy(av4_emu::ReadFile<int8_t>(dir + "/rows.bin", N * L));
    uint8_t* scales = ToGm<float>(ReadF32(dir + "/scales.bin", N * S));
    uint8_t* y = ToGm<Y>(std::vector<float>(N * L, NAN));
    uint8_t* tiling = TilingGm(td);
    if (!av4_emu::Launch(td.usedCores, false, [&] { engram_dequant_av4(rows, scales, y, nullptr, tiling); })) return 3;
    av4_emu::WriteFile(dir + "/y.bin", FromGm<Y>(y, N * L));
    std::printf("ok cores=%d chunkGroups=%d g=%d ub=%u\n", td.usedCores, td.chunkGroups, td.g, td.ubBytes);
    return 0;
  }
  std::fprintf(stderr, "usage: %s gate DIR T D hc eps cores ub | dequant DIR N L S cores ub\n", argv[0]);
  return 2;
}
