// Runs the real mHC kernel bodies (op_kernel/*.cpp) on the CPU: real asc-devkit headers in CPU-debug mode over the
// intrinsic emulator (ops/ascendc_common/emu), host tiling from tiling/hc_tiling.cc, one forked process per core.
//   mhc_emu post DIR T D hc cores ub   reads DIR/{f,residual,post,comb}.bin (float32), writes DIR/out.bin
//   mhc_emu pre  DIR T D hc cores ub   reads DIR/{x,fn,scale,base,cfg}.bin, writes DIR/{y,post,comb,mix,rstd}.bin
//   mhc_emu head DIR T D hc cores ub   reads DIR/{x,fn,scale,base,cfg}.bin, writes DIR/{y,mix,rstd}.bin
// Data tensors are DTYPE_F / DTYPE_X of this build (float or bfloat16_t); inputs are converted on the way in
// (round to nearest even) and outputs back to float32. Exit 0 on success, 3 on an emulator error (race, bad access).
#include "../op_kernel/hc_post_av4.cpp"
#include "../op_kernel/hc_pre_av4.cpp"
#include "../op_kernel/hc_head_av4.cpp"
#include "../tiling/hc_tiling.cc"
#include "emu_runtime.h"
#include "emu_io.h"

#include <string>
#include <vector>

namespace {

using av4_emu::FromGm;
using av4_emu::TilingGm;
using av4_emu::ToGm;

std::vector<float> ReadF32(const std::string& path, size_t n) { return av4_emu::ReadFile<float>(path, n); }
void WriteF32(const std::string& path, const std::vector<float>& v) { av4_emu::WriteFile(path, v); }

}  // namespace

int main(int argc, char** argv) {
  if (argc != 8) {
    std::fprintf(stderr, "usage: %s post|pre|head DIR T D hc cores ub\n", argv[0]);
    return 2;
  }
  const std::string op = argv[1], dir = argv[2];
  const int64_t T = std::atoll(argv[3]), D = std::atoll(argv[4]);
  const int32_t hc = std::atoi(argv[5]);
  const av4_host::AivPlatform plat{static_cast<uint32_t>(std::atoi(argv[6])), std::strtoull(argv[7], nullptr, 10)};
  using X = DTYPE_F;
  const char* why = "";
  if (op == "post") {
    mhc_av4::HcPostTilingData td{};
    if (!mhc_av4::HcPostTiling(T, D, hc, sizeof(X), plat, &td, &why)) av4_emu::Fail("tiling: %s", why);
    uint8_t* f = ToGm<X>(ReadF32(dir + "/f.bin", T * D));
    uint8_t* res = ToGm<X>(ReadF32(dir + "/residual.bin", T * hc * D));
    uint8_t* post = ToGm<float>(ReadF32(dir + "/post.bin", T * hc));
    uint8_t* comb = ToGm<float>(ReadF32(dir + "/comb.bin", T * hc * hc));
    uint8_t* out = ToGm<X>(std::vector<float>(T * hc * D, NAN));
    uint8_t* tiling = TilingGm(td);
    if (!av4_emu::Launch(td.usedCores, false, [&] { hc_post_av4(f, res, post, comb, out, nullptr, tiling); })) return 3;
    WriteF32(dir + "/out.bin", FromGm<X>(out, T * hc * D));
    std::printf("ok cores=%d dChunk=%d dChunks=%d\n", td.usedCores, td.dChunk, td.dChunks);
    return 0;
  }
  if (op == "pre" || op == "head") {
    const bool head = op == "head";
    mhc_av4::HcPreTilingData td{};
    if (!mhc_av4::HcPreTiling(T, D, hc, sizeof(X), head, plat, &td, &why)) av4_emu::Fail("tiling: %s", why);
    const int64_t M = td.M;
    uint8_t* x = ToGm<X>(ReadF32(dir + "/x.bin", T * hc * D));
    uint8_t* fn = ToGm<float>(ReadF32(dir + "/fn.bin", M * hc * D));
    uint8_t* scale = ToGm<float>(ReadF32(dir + "/scale.bin", head ? 1 : 3));
    uint8_t* base = ToGm<float>(ReadF32(dir + "/base.bin", M));
    uint8_t* cfg = ToGm<float>(ReadF32(dir + "/cfg.bin", head ? 2 : 3));
    uint8_t* y = ToGm<X>(std::vector<float>(T * D, NAN));
    uint8_t* post = ToGm<float>(std::vector<float>(T * hc, NAN));
    uint8_t* comb = ToGm<float>(std::vector<float>(T * hc * hc, NAN));
    uint8_t* mix = ToGm<float>(std::vector<float>(T * M, NAN));
    uint8_t* rstd = ToGm<float>(std::vector<float>(T, NAN));
    uint8_t* tiling = TilingGm(td);
    uint8_t* ws = ToGm<float>(std::vector<float>(td.wsBytes / 4, NAN));   // fn split + partial projections
    const bool ok = av4_emu::LaunchMix(td.groups, [&] {
      if (head) hc_head_av4(x, fn, scale, base, cfg, y, mix, rstd, ws, tiling);
      else hc_pre_av4(x, fn, scale, base, cfg, y, post, comb, mix, rstd, ws, tiling);
    });
    if (!ok) return 3;
    WriteF32(dir + "/y.bin", FromGm<X>(y, T * D));
    WriteF32(dir + "/mix.bin", FromGm<float>(mix, T * M));
    WriteF32(dir + "/rstd.bin", FromGm<float>(rstd, T));
    if (!head) {
      WriteF32(dir + "/post.bin", FromGm<float>(post, T * hc));
      WriteF32(dir + "/comb.bin", FromGm<float>(comb, T * hc * hc));
    }
    std::printf("ok groups=%d cores=%d tileT=%d baseM=%d baseK=%d kSplit=%d\n", td.groups, td.usedCores, td.tileT,
                td.baseM, td.baseK, td.kSplit);
    return 0;
  }
  std::fprintf(stderr, "unknown op %s\n", op.c_str());
  return 2;
}
