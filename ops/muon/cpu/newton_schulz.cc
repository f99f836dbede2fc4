// Muon's hybrid Newton–Schulz orthogonalisation as one CPU kernel (MindSpore ops.Custom, func_type="aot").
//
//   NewtonSchulz(x [k, r, c] f32, cfg [1 + 3S] f32 = (eps, a1, b1, c1, ..., aS, bS, cS)) -> y [k, r, c] f32
//
// Per matrix (independently): X = x, or xᵀ when r > c (so X is n x m with n <= m and the Gram matrix is the
// small side); X /= ||X||_F + eps; S times: A = X Xᵀ, B = b A + c A A, X = a X + B X; y = X (transposed back).
// Identical maths to the graph-op composite (ops/muon/composite.py), all in float32 except the norm's sum
// (double). One call replaces the composite's 3S batched matmuls and ~5S elementwise kernels per shape bucket.
//
// Threads: matrices are independent, so a bucket of k > 1 matrices is split over matrices; a single matrix
// splits its GEMMs over output column blocks. Either way every output element is computed by one thread with
// the same loop order (static partition, no cross-thread reduction): results are bitwise identical for any
// thread count and any run. Small buckets (< kParallelFlops) run on the calling thread: on a loaded 2-core host
// waking a pool worker can cost a scheduler tick (~4 ms), far more than the work.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "aot.h"
#include "../../moe/cpu/gemm.h"

namespace {

constexpr double kParallelFlops = 8e6;

struct Work {
  std::vector<float> x, a, a2, y;
};

inline Work& work() {
  static thread_local Work w;
  return w;
}

// C[M, N] = A[M, K] * B[K, N] over column blocks of moe::NB; blocks spread over the pool when `par`.
void gemm(int64_t M, int64_t N, int64_t K, moe::View A, moe::View B, float* C, int64_t ldc, bool par) {
  const int64_t nblk = (N + moe::NB - 1) / moe::NB;
  auto block = [&](int64_t b) {
    const int64_t n0 = b * moe::NB, nb = std::min(moe::NB, N - n0);
    moe::gemm_block(M, nb, K, A, B.at(0, n0), C + n0, ldc, false);
  };
  if (par && nblk > 1)
    moe::parallel_tasks(nblk, block);
  else
    for (int64_t b = 0; b < nblk; ++b) block(b);
}

// One matrix: src [r, c] row-major -> dst [r, c].
void ns_one(const float* src, float* dst, int64_t r, int64_t c, const float* coef, int64_t steps, float eps,
            bool par) {
  const bool tall = r > c;
  const int64_t n = tall ? c : r, m = tall ? r : c;
  Work& w = work();
  w.x.resize(size_t(n * m));
  w.y.resize(size_t(n * m));
  w.a.resize(size_t(n * n));
  w.a2.resize(size_t(n * n));
  float* X = w.x.data();
  float* Y = w.y.data();
  float* A = w.a.data();
  float* A2 = w.a2.data();
  if (tall) {
    for (int64_t i = 0; i < r; ++i)
      for (int64_t j = 0; j < c; ++j) X[j * m + i] = src[i * c + j];
  } else {
    std::memcpy(X, src, sizeof(float) * size_t(n * m));
  }
  double ss = 0.0;
  for (int64_t i = 0; i < n * m; ++i) ss += double(X[i]) * double(X[i]);
  const float den = float(std::sqrt(ss)) + eps;
  for (int64_t i = 0; i < n * m; ++i) X[i] = X[i] / den;
  const moe::View Xv{X, m, 1}, Xt{X, 1, m}, Av{A, n, 1}, A2v{A2, n, 1};
  for (int64_t s = 0; s < steps; ++s) {
    const float ca = coef[3 * s], cb = coef[3 * s + 1], cc = coef[3 * s + 2];
    gemm(n, n, m, Xv, Xt, A, n, par);           // A = X Xᵀ
    gemm(n, n, n, Av, Av, A2, n, par);          // A2 = A A
    for (int64_t i = 0; i < n * n; ++i) A2[i] = A[i] * cb + A2[i] * cc;   // B (in A2)
    gemm(n, m, n, A2v, Xv, Y, m, par);          // Y = B X
    for (int64_t i = 0; i < n * m; ++i) X[i] = X[i] * ca + Y[i];
  }
  if (tall) {
    for (int64_t i = 0; i < r; ++i)
      for (int64_t j = 0; j < c; ++j) dst[i * c + j] = X[j * m + i];
  } else {
    std::memcpy(dst, X, sizeof(float) * size_t(n * m));
  }
}

}  // namespace

extern "C" int NewtonSchulz(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*,
                            void*) {
  if (nparam != 3 || ndims[0] != 3 || ndims[1] != 1 || ndims[2] != 3) return 1;
  if (!av4::is_f32(dtypes[0]) || !av4::is_f32(dtypes[1]) || !av4::is_f32(dtypes[2])) return 2;
  const int64_t k = shapes[0][0], r = shapes[0][1], c = shapes[0][2];
  const int64_t ncfg = shapes[1][0];
  if (ncfg < 1 || (ncfg - 1) % 3 != 0) return 3;
  const float* x = static_cast<const float*>(params[0]);
  const float* cfg = static_cast<const float*>(params[1]);
  float* y = static_cast<float*>(params[2]);
  const int64_t steps = (ncfg - 1) / 3;
  const float eps = cfg[0];
  const float* coef = cfg + 1;
  if (k <= 0 || r <= 0 || c <= 0) return 0;
  const double n = double(std::min(r, c)), m = double(std::max(r, c));
  const double flops = double(k) * double(steps) * (4.0 * n * n * m + 2.0 * n * n * n);
  const bool par = flops >= kParallelFlops && moe::Pool::get().threads() > 1;
  const int64_t rc = r * c;
  if (par && k > 1) {
    moe::parallel_tasks(k, [&](int64_t i) { ns_one(x + i * rc, y + i * rc, r, c, coef, steps, eps, false); });
  } else {
    for (int64_t i = 0; i < k; ++i) ns_one(x + i * rc, y + i * rc, r, c, coef, steps, eps, par);
  }
  return 0;
}
