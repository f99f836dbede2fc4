// Runs the attention family's real AscendC kernel bodies on the CPU: real asc-devkit headers in CPU-debug mode over
// the intrinsic emulator (ops/ascendc_common/emu) with its pipe/race model, host tiling from
// op_host/attention_tiling.h, one forked process per AIV core of the platform (cores past usedCores return at once),
// or per group of one AIC + two AIV for the mixed kernels. Inputs / outputs are raw float32 / int32 files in DIR:
//   attention_emu attn    DIR B S H D N W K ratio cmpOffset startPos scale ubBytes aivCores
//   attention_emu indexer DIR B S H d N topk ratio startPos ubBytes aivCores
//   attention_emu compress DIR B S c ratio overlap eps ubBytes aivCores
// Exit 0 on success, 3 on an emulator error (race, unemulated intrinsic, tiling refusal).
#include "../op_host/attention_tiling.h"

#define DTYPE_KV_PROJ DTYPE_QUERY
#include "../op_kernel/compress_kv.cpp"
#include "../op_kernel/lightning_indexer_v4.cpp"
#include "../op_kernel/sparse_attn_shared_kv.cpp"
#include "emu_runtime.h"

#include <string>
#include <vector>

#define EMU_CHECK(cond, msg) \
  do {                       \
    if (!(cond)) av4_emu::Fail("%s", msg); \
  } while (0)

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
// GM buffers are shared with the forked cores
template <typename T>
struct Gm {
  T* p = nullptr;
  size_t n = 0;
  explicit Gm(size_t count) : p(static_cast<T*>(av4_emu::GmAlloc(count * sizeof(T)))), n(count) {}
  T* data() const { return p; }
  size_t size() const { return n; }
};
static Gm<Elem> read_elems(const std::string& path) {
  auto raw = read_file(path);
  Gm<Elem> out(raw.size() / 4);
  for (size_t i = 0; i < out.size(); ++i) {
    float f;
    std::memcpy(&f, raw.data() + 4 * i, 4);
    av4_emu::Store(out.p + i, f);
  }
  return out;
}
static void write_elems(const std::string& path, const Gm<Elem>& v, size_t n) {
  std::vector<float> f(n);
  for (size_t i = 0; i < n; ++i) f[i] = av4_emu::Load(v.p + i);
  write_file(path, f.data(), f.size() * 4);
}
template <typename T>
static Gm<T> read_raw(const std::string& path) {
  auto raw = read_file(path);
  Gm<T> out(raw.size() / sizeof(T));
  std::memcpy(out.p, raw.data(), raw.size());
  return out;
}
template <typename T>
static Gm<T> filled(size_t n, T v) {
  Gm<T> out(n ? n : 1);
  for (size_t i = 0; i < out.size(); ++i) out.p[i] = v;
  return out;
}

template <typename Tiling, typename Launch>
static void run_cores(const Tiling& td, uint64_t ub, uint32_t aiv, Launch launch) {
  // every core of the platform runs (cores past usedCores must return at once)
  EMU_CHECK(td.ubUsed <= ub, "tiling exceeds the platform UB");
  uint8_t* t = static_cast<uint8_t*>(av4_emu::GmAlloc(sizeof(Tiling)));
  std::memcpy(t, &td, sizeof(Tiling));
  if (!av4_emu::Launch(static_cast<int>(aiv), false, [&] { launch(t); })) std::exit(3);
}

int main(int argc, char** argv) {
  EMU_CHECK(argc >= 3, "usage: attention_emu OP DIR args...");
  const std::string op = argv[1], dir = std::string(argv[2]) + "/";
  auto I = [&](int i) { return static_cast<uint32_t>(std::strtoul(argv[i], nullptr, 10)); };
  const char* why = "";
  if (op == "attn") {
    av4_tiling::AttnShape s{I(3), I(4), I(5), I(6), I(7), I(8), I(9), I(10), I(11), I(12),
                            static_cast<uint32_t>(sizeof(Elem)), std::strtof(argv[13], nullptr)};
    const av4_tiling::Platform p{I(15), std::strtoull(argv[14], nullptr, 10), std::max(1u, I(15) / 2), 512u * 1024};
    av4_tiling::SparseAttnTiling td;
    EMU_CHECK(av4_tiling::TileSparseAttn(s, p, &td, &why), why);
    auto q = read_elems(dir + "q.bin"), kv = read_elems(dir + "kv.bin");
    auto sink = read_raw<float>(dir + "sink.bin");
    auto widx = read_raw<int32_t>(dir + "widx.bin");
    Gm<int32_t> cidx = s.K ? read_raw<int32_t>(dir + "cidx.bin") : filled<int32_t>(1, 0);
    Gm<Elem> out(q.size());
    Gm<float> lse = filled<float>(1ull * s.B * s.S * s.H, -12345.f);
    g_tilingKey = td.tilingKey;
    Gm<uint8_t> ws(td.tilingKey == av4_tiling::ATTN_KEY_CUBE ? td.usedCores * td.wsPerGroup : 1);
    auto launch = [&](GM_ADDR t) {
      av4_sparse_attn_shared_kv(reinterpret_cast<GM_ADDR>(q.data()), reinterpret_cast<GM_ADDR>(kv.data()),
                                reinterpret_cast<GM_ADDR>(sink.data()), reinterpret_cast<GM_ADDR>(widx.data()),
                                s.K ? reinterpret_cast<GM_ADDR>(cidx.data()) : nullptr,
                                reinterpret_cast<GM_ADDR>(out.data()), reinterpret_cast<GM_ADDR>(lse.data()),
                                reinterpret_cast<GM_ADDR>(ws.data()), t);
    };
    if (td.tilingKey == av4_tiling::ATTN_KEY_CUBE) {   // every group of the platform (1 AIC + 2 AIV) runs
      EMU_CHECK(td.ubUsed <= p.ubBytes && td.l1Used <= p.l1Bytes, "tiling exceeds the platform UB / L1");
      uint8_t* t = static_cast<uint8_t*>(av4_emu::GmAlloc(sizeof(td)));
      std::memcpy(t, &td, sizeof(td));
      if (!av4_emu::LaunchMix(static_cast<int>(p.aicCores), [&] { launch(t); })) std::exit(3);
    } else {
      run_cores(td, p.ubBytes, p.aivCores, launch);
    }
    write_elems(dir + "out.bin", out, out.size());
    write_file(dir + "lse.bin", lse.data(), lse.size() * 4);
    std::printf("key %u cores %u headGroup %u entryBlock %u ub %llu\n", td.tilingKey, td.usedCores, td.headGroup,
                td.entryBlock, (unsigned long long)td.ubUsed);
  } else if (op == "indexer") {
    av4_tiling::IndexerShape s{I(3), I(4), I(5), I(6), I(7), I(8), I(9), I(10), static_cast<uint32_t>(sizeof(Elem))};
    // a 910B-like group structure: one AIC per two AIV cores, 512 KiB L1
    const av4_tiling::Platform p{I(12), std::strtoull(argv[11], nullptr, 10), std::max(1u, I(12) / 2), 512u * 1024};
    av4_tiling::IndexerTiling td;
    EMU_CHECK(av4_tiling::TileIndexer(s, p, &td, &why), why);
    EMU_CHECK(td.ubUsed <= p.ubBytes, "tiling exceeds the platform UB");
    auto q = read_elems(dir + "q.bin"), k = read_elems(dir + "k.bin"), w = read_elems(dir + "w.bin");
    Gm<int32_t> idx = filled<int32_t>(1ull * s.B * s.S * td.topk, 7777);
    Gm<uint8_t> ws(td.usedGroups * td.wsPerGroup);
    uint8_t* t = static_cast<uint8_t*>(av4_emu::GmAlloc(sizeof(td)));
    std::memcpy(t, &td, sizeof(td));
    // every group of the platform runs (groups past usedGroups must return at once)
    if (!av4_emu::LaunchMix(static_cast<int>(p.aicCores), [&] {
          av4_lightning_indexer(reinterpret_cast<GM_ADDR>(q.data()), reinterpret_cast<GM_ADDR>(k.data()),
                                reinterpret_cast<GM_ADDR>(w.data()), reinterpret_cast<GM_ADDR>(idx.data()),
                                reinterpret_cast<GM_ADDR>(ws.data()), t);
        }))
      std::exit(3);
    write_file(dir + "idx.bin", idx.data(), idx.size() * 4);
    std::printf("groups %u keyBlock %u kTile %u ub %llu l1 %llu\n", td.usedGroups, td.keyBlock, td.kTile,
                (unsigned long long)td.ubUsed, (unsigned long long)td.l1Used);
  } else if (op == "compress") {
    av4_tiling::CompressShape s{I(3), I(4), I(5), I(6), I(7), static_cast<uint32_t>(sizeof(Elem)),
                                std::strtof(argv[8], nullptr)};
    const av4_tiling::Platform p{I(10), std::strtoull(argv[9], nullptr, 10)};
    av4_tiling::CompressTiling td;
    EMU_CHECK(av4_tiling::TileCompress(s, p, &td, &why), why);
    auto kvp = read_elems(dir + "kvp.bin"), scp = read_elems(dir + "scp.bin");
    auto ape = read_raw<float>(dir + "ape.bin"), nw = read_raw<float>(dir + "nw.bin");
    Gm<Elem> out(std::max<size_t>(1, 1ull * s.B * td.nBlocks * s.c));
    run_cores(td, p.ubBytes, p.aivCores, [&](GM_ADDR t) {
      av4_compress_kv(reinterpret_cast<GM_ADDR>(kvp.data()), reinterpret_cast<GM_ADDR>(scp.data()),
                      reinterpret_cast<GM_ADDR>(ape.data()), reinterpret_cast<GM_ADDR>(nw.data()),
                      reinterpret_cast<GM_ADDR>(out.data()), nullptr, t);
    });
    write_elems(dir + "out.bin", out, 1ull * s.B * td.nBlocks * s.c);
    std::printf("cores %u chanGroup %u ub %llu\n", td.usedCores, td.chanGroup, (unsigned long long)td.ubUsed);
  } else {
    EMU_CHECK(false, "unknown op");
  }
  return 0;
}
