// Runs the attention family's AscendC kernels on the CPU through ascendc_emu.h, one simulated AIV core after the
// other, each with a fresh UB arena of the platform's size. Built twice by the test: -DDTYPE_QUERY=float and
// =bfloat16_t (GM tensors in that dtype). Inputs / outputs are raw float32 / int32 files in a directory.
// compress_kv only: sparse attention (its Cube design) and the indexer (mixed AIC/AIV) run over the real headers +
// the intrinsic emulator (ops/attention/ascendc/emu/attention_emu.cc).
//   kernel_emu compress DIR B S c ratio overlap eps ubBytes aivCores
#define AV4_CPU_EMULATOR 1
#include "ascendc_emu.h"
#include "attention_tiling.h"

#ifndef DTYPE_QUERY
#define DTYPE_QUERY float
#endif
#define DTYPE_KV_PROJ DTYPE_QUERY

#include "../op_kernel/compress_kv.cpp"

#include <string>

using Elem = DTYPE_QUERY;

static std::vector<uint8_t> read_file(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  EMU_CHECK(f, "cannot open input");
  std::fseek(f, 0, SEEK_END);
  const long n = std::ftell(f);
  std::fseek(f, 0, SEEK_SET);
  std::vector<uint8_t> b(n);
  EMU_CHECK(std::fread(b.data(), 1, n, f) == static_cast<size_t>(n), "short read");
  std::fclose(f);
  return b;
}
static void write_file(const std::string& path, const void* p, size_t n) {
  FILE* f = std::fopen(path.c_str(), "wb");
  EMU_CHECK(f && std::fwrite(p, 1, n, f) == n, "cannot write output");
  std::fclose(f);
}
// float32 file -> GM buffer in the kernel dtype
static std::vector<Elem> read_elems(const std::string& path) {
  auto raw = read_file(path);
  std::vector<Elem> out(raw.size() / 4);
  for (size_t i = 0; i < out.size(); ++i) {
    float f;
    std::memcpy(&f, raw.data() + 4 * i, 4);
    out[i] = emu::from_f<Elem>(f);
  }
  return out;
}
static void write_elems(const std::string& path, const std::vector<Elem>& v) {
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); ++i) f[i] = emu::to_f(v[i]);
  write_file(path, f.data(), f.size() * 4);
}
template <typename T>
static std::vector<T> read_raw(const std::string& path) {
  auto raw = read_file(path);
  std::vector<T> out(raw.size() / sizeof(T));
  std::memcpy(out.data(), raw.data(), raw.size());
  return out;
}

template <typename Tiling, typename Launch>
static void run_cores(const Tiling& td, uint64_t ub, uint32_t aiv, Launch launch) {
  // every core of the platform runs (cores past usedCores must return at once); each gets a fresh UB of exactly
  // the bytes the host tiling accounted for (so an InitBuffer the tiling forgot overflows and aborts)
  EMU_CHECK(td.ubUsed <= ub, "tiling exceeds the platform UB");
  emu::block_num() = aiv;
  for (uint32_t c = 0; c < aiv; ++c) {
    emu::reset_ub(td.ubUsed);
    emu::block_idx() = c;
    launch(reinterpret_cast<GM_ADDR>(const_cast<Tiling*>(&td)));
  }
}

int main(int argc, char** argv) {
  EMU_CHECK(argc >= 3, "usage: kernel_emu OP DIR args...");
  const std::string op = argv[1], dir = std::string(argv[2]) + "/";
  auto I = [&](int i) { return static_cast<uint32_t>(std::strtoul(argv[i], nullptr, 10)); };
  const char* why = "";
  if (op == "compress") {
    av4_tiling::CompressShape s{I(3), I(4), I(5), I(6), I(7), static_cast<uint32_t>(sizeof(Elem)),
                                std::strtof(argv[8], nullptr)};
    const av4_tiling::Platform p{I(10), std::strtoull(argv[9], nullptr, 10)};
    av4_tiling::CompressTiling td;
    EMU_CHECK(av4_tiling::TileCompress(s, p, &td, &why), why);
    auto kvp = read_elems(dir + "kvp.bin"), scp = read_elems(dir + "scp.bin");
    auto ape = read_raw<float>(dir + "ape.bin"), nw = read_raw<float>(dir + "nw.bin");
    std::vector<Elem> out(std::max<size_t>(1, 1ull * s.B * td.nBlocks * s.c));
    run_cores(td, p.ubBytes, p.aivCores, [&](GM_ADDR t) {
      av4_compress_kv(reinterpret_cast<GM_ADDR>(kvp.data()), reinterpret_cast<GM_ADDR>(scp.data()),
                      reinterpret_cast<GM_ADDR>(ape.data()), reinterpret_cast<GM_ADDR>(nw.data()),
                      reinterpret_cast<GM_ADDR>(out.data()), nullptr, t);
    });
    out.resize(1ull * s.B * td.nBlocks * s.c);
    write_elems(dir + "out.bin", out);
    std::printf("cores %u chanGroup %u ub %llu\n", td.usedCores, td.chanGroup, (unsigned long long)td.ubUsed);
  } else {
    EMU_CHECK(false, "unknown op");
  }
  return 0;
}
