// Engram CPU kernels: table-row gather (forward) and its scatter-add (backward) as MindSpore aot kernels, and the
// n-gram hash as a plain C function for the host prefetch path (called through ctypes; integer-exact to
// ops/engram/reference.py: ngram_hash). See docs/deepseek-v4.1.md.
#include <cstdint>
#include <cstring>
#include <vector>

#include "aot.h"

namespace {

bool is_i32(const char* dtype) { return std::strcmp(dtype, "int32") == 0; }

}  // namespace

// table [R, d] (f32 or bf16), ids [N, C] int32 -> out [N, C*d] (table dtype). Returns 4 on an id outside [0, R).
extern "C" int EngramLookupFwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*,
                               void*) {
  if (nparam != 3 || ndims[0] != 2 || ndims[1] < 1) return 1;
  const bool bf16 = av4::is_bf16(dtypes[0]);
  if (!(bf16 || av4::is_f32(dtypes[0])) || !is_i32(dtypes[1])) return 2;
  const int64_t R = shapes[0][0], d = shapes[0][1];
  const int64_t n_ids = av4::numel(ndims[1], shapes[1]);
  const int32_t* ids = static_cast<const int32_t*>(params[1]);
  const size_t row_bytes = static_cast<size_t>(d) * (bf16 ? 2 : 4);
  const char* table = static_cast<const char*>(params[0]);
  char* out = static_cast<char*>(params[2]);
  int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad)
  for (int64_t i = 0; i < n_ids; ++i) {
    const int64_t r = ids[i];
    if (r < 0 || r >= R) {
      std::memset(out + i * row_bytes, 0, row_bytes);
      bad |= 1;
      continue;
    }
    std::memcpy(out + i * row_bytes, table + r * row_bytes, row_bytes);
  }
  return bad ? 4 : 0;
}

// table [R, d], ids [N, C] int32, dout [N, C*d] -> dtable [R, d]: zeros plus the scatter-add of every gathered
// row's gradient (float32 accumulation; rows are visited in id order within each thread's row range so the
// result does not depend on the thread count).
extern "C" int EngramLookupBwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*,
                               void*) {
  if (nparam != 4 || ndims[0] != 2) return 1;
  const bool bf16 = av4::is_bf16(dtypes[0]);
  if (!(bf16 || av4::is_f32(dtypes[0])) || !is_i32(dtypes[1]) || std::strcmp(dtypes[0], dtypes[2]) != 0) return 2;
  const int64_t R = shapes[0][0], d = shapes[0][1];
  const int64_t n_ids = av4::numel(ndims[1], shapes[1]);
  const int32_t* ids = static_cast<const int32_t*>(params[1]);
  const void* dout = params[2];
  void* dtable = params[3];
  for (int64_t i = 0; i < n_ids; ++i)
    if (ids[i] < 0 || ids[i] >= R) return 4;
  // bucket the gathered positions by row (counting sort), then each row sums its contributions in order
  std::vector<int64_t> start(R + 1, 0), order(n_ids);
  for (int64_t i = 0; i < n_ids; ++i) ++start[ids[i] + 1];
  for (int64_t r = 0; r < R; ++r) start[r + 1] += start[r];
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < n_ids; ++i) order[fill[ids[i]]++] = i;
  }
#pragma omp parallel
  {
    std::vector<float> acc(d);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; ++r) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t k = start[r]; k < start[r + 1]; ++k) {
        const int64_t base = order[k] * d;
        for (int64_t j = 0; j < d; ++j) acc[j] += av4::load(dout, bf16, base + j);
      }
      for (int64_t j = 0; j < d; ++j) av4::store(dtable, bf16, r * d + j, acc[j]);
    }
  }
  return 0;
}

// hist [N, K] int64 (compressed ids, s = 0 newest, -1 dead / before the start), mult [K], primes [(K-1)*H],
// offsets [(K-1)*H] -> ids [N, (K-1)*H] int64. Blocked slots (any shorter lookback dead) take pad.
extern "C" int EngramHash(const int64_t* hist, int64_t N, int64_t K, const int64_t* mult, const int64_t* primes,
                          const int64_t* offsets, int64_t H, int64_t pad, int64_t* out) {
  if (K < 2 || K > 64 || H < 1) return 1;
  const int64_t C = (K - 1) * H;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    const int64_t* h = hist + i * K;
    bool blocked = false;
    int64_t tok[64];
    for (int64_t s = 0; s < K; ++s) {
      blocked = blocked || h[s] == -1;
      tok[s] = blocked ? pad : h[s];
    }
    // unsigned arithmetic wraps exactly like NumPy's int64 multiply; the products never exceed 2^63 by design
    uint64_t v = static_cast<uint64_t>(tok[0]) * static_cast<uint64_t>(mult[0]);
    for (int64_t s = 1; s < K; ++s) {
      v ^= static_cast<uint64_t>(tok[s]) * static_cast<uint64_t>(mult[s]);
      const int64_t sv = static_cast<int64_t>(v);
      for (int64_t hh = 0; hh < H; ++hh) {
        const int64_t c = (s - 1) * H + hh;
        int64_t m = sv % primes[c];
        if (m < 0) m += primes[c];  // Python/NumPy modulo of a (never expected) negative value
        out[i * C + c] = m + offsets[c];
      }
    }
  }
  return 0;
}
