// Runs the real MoE kernel bodies (op_kernel/*.cpp) on the CPU: real asc-devkit headers in CPU-debug mode over the
// intrinsic emulator (ops/ascendc_common/emu), host tiling from tiling/moe_tiling.cc, one forked process per core.
//   moe_emu finalize DIR T K H rows mode has_x1 has_x2 has_bias cores ub
//       reads DIR/{expanded_x,scales,x1,x2,bias}.bin (float32), DIR/{row_idx,expert_idx}.bin (int32);
//       writes DIR/out.bin [T, H]
//   moe_emu gating DIR T E k norm groups kgroup gmode has_bias hashed table_cols scale eps cores ub
//       reads DIR/{x,bias}.bin (float32), DIR/{ids,table}.bin (int32); writes DIR/{y,score}.bin, DIR/idx.bin (int32)
//   moe_emu init DIR T k H E capacity active mode flag cores ub
//       reads DIR/x.bin (float32), DIR/expert_idx.bin (int32); writes DIR/expanded_x.bin (float32),
//       DIR/{row_idx,count,before}.bin (int32)
// Data tensors are DTYPE_X of this build; exit 0 on success, 3 on an emulator error (race, tiling refusal).
#include "../op_kernel/moe_finalize_routing_av4.cpp"
#include "../op_kernel/moe_gating_topk_av4.cpp"
#include "../op_kernel/moe_init_routing_av4.cpp"
#include "../tiling/moe_tiling.cc"
#include "emu_runtime.h"
#include "emu_io.h"

#include <string>
#include <vector>

namespace {

using av4_emu::FromGm;
using av4_emu::GmCopy;
using av4_emu::TilingGm;
using av4_emu::ToGm;
template <class V>
std::vector<V> Read(const std::string& path, size_t n) { return av4_emu::ReadFile<V>(path, n); }
template <class V>
void Write(const std::string& path, const std::vector<V>& v) { av4_emu::WriteFile(path, v); }

moe_av4::MoePlatform Platform(const char* cores, const char* ub) {
  return moe_av4::Platform910B(static_cast<uint32_t>(std::atoi(cores)), std::strtoull(ub, nullptr, 10));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s finalize|gating DIR ...\n", argv[0]);
    return 2;
  }
  const std::string op = argv[1], dir = argv[2];
  using X = DTYPE_X;
  const char* why = "";
  if (op == "finalize" && argc == 13) {
    const int64_t T = std::atoll(argv[3]), K = std::atoll(argv[4]), H = std::atoll(argv[5]),
                  rows = std::atoll(argv[6]);
    const int32_t mode = std::atoi(argv[7]);
    const bool hasX1 = std::atoi(argv[8]), hasX2 = std::atoi(argv[9]), hasBias = std::atoi(argv[10]);
    moe_av4::MoeFinalizeRoutingTilingData td{};
    if (!moe_av4::FinalizeRoutingTiling(T, K, H, rows, mode, hasX1, hasX2, hasBias, sizeof(X),
                                        Platform(argv[11], argv[12]), &td, &why))
      av4_emu::Fail("tiling: %s", why);
    uint8_t* ex = ToGm<X>(Read<float>(dir + "/expanded_x.bin", rows * H));
    uint8_t* row = GmCopy(Read<int32_t>(dir + "/row_idx.bin", T * K));
    uint8_t* scales = ToGm<float>(Read<float>(dir + "/scales.bin", T * K));
    uint8_t* x1 = hasX1 ? ToGm<X>(Read<float>(dir + "/x1.bin", T * H)) : nullptr;
    uint8_t* x2 = hasX2 ? ToGm<X>(Read<float>(dir + "/x2.bin", T * H)) : nullptr;
    const int64_t E = hasBias ? av4_emu::FileCount<float>(dir + "/bias.bin") / H : 0;
    uint8_t* bias = hasBias ? ToGm<X>(Read<float>(dir + "/bias.bin", E * H)) : nullptr;
    uint8_t* eidx = hasBias ? GmCopy(Read<int32_t>(dir + "/expert_idx.bin", T * K)) : nullptr;
    uint8_t* out = ToGm<X>(std::vector<float>(T * H, NAN));
    uint8_t* tiling = TilingGm(td);
    if (!av4_emu::Launch(static_cast<int>(td.split.usedCores), false, [&] {
          moe_finalize_routing_av4(ex, row, x1, x2, bias, scales, eidx, out, nullptr, tiling);
        }))
      return 3;
    Write(dir + "/out.bin", FromGm<X>(out, T * H));
    std::printf("ok cores=%lld hTile=%lld\n", (long long)td.split.usedCores, (long long)td.hTile);
    return 0;
  }
  if (op == "gating" && argc == 17) {
    const int64_t T = std::atoll(argv[3]), E = std::atoll(argv[4]), k = std::atoll(argv[5]);
    const int32_t norm = std::atoi(argv[6]), groups = std::atoi(argv[7]), kgroup = std::atoi(argv[8]),
                  gmode = std::atoi(argv[9]);
    const bool hasBias = std::atoi(argv[10]), hashed = std::atoi(argv[11]);
    const int64_t cols = std::atoll(argv[12]);
    const float scale = std::strtof(argv[13], nullptr), eps = std::strtof(argv[14], nullptr);
    moe_av4::MoeGatingTopKTilingData td{};
    if (!moe_av4::GatingTopKTiling(T, E, k, norm, groups, kgroup, gmode, hasBias, hashed, cols, scale, eps, 4,
                                   Platform(argv[15], argv[16]), &td, &why))
      av4_emu::Fail("tiling: %s", why);
    uint8_t* x = ToGm<float>(Read<float>(dir + "/x.bin", T * E));
    uint8_t* bias = hasBias ? ToGm<float>(Read<float>(dir + "/bias.bin", E)) : nullptr;
    uint8_t* ids = nullptr;
    uint8_t* table = nullptr;
    if (hashed) {
      ids = GmCopy(Read<int32_t>(dir + "/ids.bin", T));
      table = GmCopy(Read<int32_t>(dir + "/table.bin", av4_emu::FileCount<int32_t>(dir + "/table.bin")));
    }
    uint8_t* y = ToGm<float>(std::vector<float>(T * k, NAN));
    uint8_t* idx = GmCopy(std::vector<int32_t>(T * k, -7));
    uint8_t* score = ToGm<float>(std::vector<float>(T * E, NAN));
    uint8_t* tiling = TilingGm(td);
    if (!av4_emu::Launch(static_cast<int>(td.split.usedCores), false, [&] {
          moe_gating_top_k_av4(x, bias, ids, table, y, idx, score, nullptr, tiling);
        }))
      return 3;
    Write(dir + "/y.bin", FromGm<float>(y, T * k));
    Write(dir + "/score.bin", FromGm<float>(score, T * E));
    Write(dir + "/idx.bin", av4_emu::GmValues<int32_t>(idx, T * k));
    std::printf("ok cores=%lld rowsPerLoop=%lld\n", (long long)td.split.usedCores, (long long)td.rowsPerLoop);
    return 0;
  }
  if (op == "init" && argc == 13) {
    const int64_t T = std::atoll(argv[3]), k = std::atoll(argv[4]), H = std::atoll(argv[5]), E = std::atoll(argv[6]),
                  C = std::atoll(argv[7]), active = std::atoll(argv[8]);
    const int32_t mode = std::atoi(argv[9]), flag = std::atoi(argv[10]);
    moe_av4::MoeInitRoutingTilingData td{};
    if (!moe_av4::InitRoutingTiling(T, k, H, E, C, active, mode, flag, sizeof(X), Platform(argv[11], argv[12]), &td,
                                    &why))
      av4_emu::Fail("tiling: %s", why);
    uint8_t* x = ToGm<X>(Read<float>(dir + "/x.bin", T * H));
    uint8_t* ids = GmCopy(Read<int32_t>(dir + "/expert_idx.bin", T * k));
    uint8_t* ex = ToGm<X>(std::vector<float>(td.outRows * H, NAN));
    uint8_t* row = GmCopy(std::vector<int32_t>(T * k, -7));
    uint8_t* cnt = GmCopy(std::vector<int32_t>(E, -7));
    uint8_t* before = GmCopy(std::vector<int32_t>(E, -7));
    uint8_t* ws = static_cast<uint8_t*>(av4_emu::GmAlloc(td.workspaceBytes));
    uint8_t* tiling = TilingGm(td);
    if (!av4_emu::Launch(static_cast<int>(td.split.usedCores), false, [&] {
          moe_init_routing_av4(x, ids, ex, row, cnt, before, ws, tiling);
        }))
      return 3;
    Write(dir + "/expanded_x.bin", FromGm<X>(ex, td.outRows * H));
    Write(dir + "/row_idx.bin", av4_emu::GmValues<int32_t>(row, T * k));
    Write(dir + "/count.bin", av4_emu::GmValues<int32_t>(cnt, E));
    Write(dir + "/before.bin", av4_emu::GmValues<int32_t>(before, E));
    std::printf("ok cores=%lld outRows=%lld\n", (long long)td.split.usedCores, (long long)td.outRows);
    return 0;
  }
  std::fprintf(stderr, "unknown op or wrong argument count: %s\n", op.c_str());
  return 2;
}
