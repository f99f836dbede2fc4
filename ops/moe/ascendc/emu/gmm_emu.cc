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

#include <string>
#include <vector>

namespace {
template <class V>
std::vector<V> Read(const std::string& path, size_t n) {
  std::vector<V> v(n);
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f || std::fread(v.data(), sizeof(V), n, f) != n) av4_emu::Fail("cannot read %zu values from %s", n, path.c_str());
  std::fclose(f);
  return v;
}
}  // namespace

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
  moe_av4::MoePlatform p{};
  p.aicCores = static_cast<uint32_t>(std::atoi(argv[8]));
  p.aivCores = 2 * p.aicCores;
  p.ubBytes = 196608;
  p.l1Bytes = 524288;
  p.l0aBytes = p.l0bBytes = 65536;
  p.l0cBytes = 131072;
  moe_av4::GroupedMatmulTilingData td{};
  const char* why = "";
  if (!moe_av4::GroupedMatmulTiling(M, K, N, E, ltype, tw, sizeof(X), p, &td, &why)) av4_emu::Fail("tiling: %s", why);
  const std::vector<float> x = Read<float>(dir + "/x.bin", M * K), w = Read<float>(dir + "/weight.bin", E * K * N);
  const std::vector<int64_t> gl = Read<int64_t>(dir + "/group_list.bin", E);
  X* xg = static_cast<X*>(av4_emu::GmAlloc(x.size() * sizeof(X)));
  X* wg = static_cast<X*>(av4_emu::GmAlloc(w.size() * sizeof(X)));
  X* yg = static_cast<X*>(av4_emu::GmAlloc(M * N * sizeof(X)));
  for (size_t i = 0; i < x.size(); ++i) av4_emu::Store(xg + i, x[i]);
  for (size_t i = 0; i < w.size(); ++i) av4_emu::Store(wg + i, w[i]);
  for (int64_t i = 0; i < M * N; ++i) av4_emu::Store(yg + i, NAN);
  void* glg = av4_emu::GmAlloc(E * 8);
  std::memcpy(glg, gl.data(), E * 8);
  uint8_t* tiling = static_cast<uint8_t*>(av4_emu::GmAlloc(sizeof(td)));
  std::memcpy(tiling, &td, sizeof(td));
  if (!av4_emu::Launch(static_cast<int>(td.usedCores), true, [&] {
        grouped_matmul_av4(reinterpret_cast<uint8_t*>(xg), reinterpret_cast<uint8_t*>(wg),
                           static_cast<uint8_t*>(glg), reinterpret_cast<uint8_t*>(yg), nullptr, tiling);
      }))
    return 3;
  std::vector<float> y(M * N);
  for (int64_t i = 0; i < M * N; ++i) y[i] = av4_emu::Load(yg + i);
  FILE* f = std::fopen((dir + "/y.bin").c_str(), "wb");
  if (!f || std::fwrite(y.data(), 4, y.size(), f) != y.size()) av4_emu::Fail("cannot write y.bin");
  std::fclose(f);
  std::printf("ok cores=%lld base=%lldx%lldx%lld\n", (long long)td.usedCores, (long long)td.baseM,
              (long long)td.baseN, (long long)td.baseK);
  return 0;
}
