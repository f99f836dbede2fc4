// Runtime of the AscendC CPU emulator: the globals and API-check entry points the real headers reference in
// CPU-debug mode (normally from CANN's closed cpudebug libraries), and a launcher that runs a kernel entry once per
// core in forked processes over shared GM (as the CPU-debug framework does). Include once, after the kernel sources.
#pragma once
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <functional>
#include <vector>

int64_t block_idx = 0;
int64_t block_num = 1;
int32_t g_coreType = 0;
int32_t g_taskRation = 1;
int32_t sub_block_idx = 0;
uint64_t g_tilingKey = 0;   // TILING_KEY_IS in CPU-debug mode; the driver sets the tiling's key before a launch
namespace AscendC {
const int AIV_TYPE = 2;
const int AIC_TYPE = 1;
}  // namespace AscendC
#include "emu_checks.h"   // generated next to the emulator's stub_fun.h (real_headers_check.py)

namespace av4_emu {

// GM buffers shared by the forked cores
inline void* GmAlloc(size_t bytes) {
  void* p = mmap(nullptr, bytes ? bytes : 1, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) Fail("mmap of %zu GM bytes failed", bytes);
  return p;
}

// Fork one process per core; `setup(i)` sets core i's identity in the child, then fn runs. false (with the
// core's message on stderr) if any core fails.
inline bool Fork(int n, const std::function<void(int)>& setup, const std::function<void()>& fn) {
  std::fflush(stdout);
  std::fflush(stderr);
  std::vector<pid_t> pids;
  for (int i = 0; i < n; ++i) {
    const pid_t pid = fork();
    if (pid < 0) Fail("fork failed");
    if (pid == 0) {
      setup(i);
      fn();
      std::fflush(stdout);
      std::_Exit(0);
    }
    pids.push_back(pid);
  }
  // the first core that fails stops the launch: the others may be waiting on a flag it will never set
  bool ok = true;
  size_t left = pids.size();
  while (left > 0) {
    int status = 0;
    const pid_t pid = waitpid(-1, &status, 0);
    if (pid < 0) break;
    size_t i = 0;
    while (i < pids.size() && pids[i] != pid) ++i;
    if (i == pids.size()) continue;
    pids[i] = -1;
    --left;
    if (ok && (!WIFEXITED(status) || WEXITSTATUS(status) != 0)) {
      std::fprintf(stderr, "emu: core %zu failed (status %d)\n", i, status);
      ok = false;
      for (pid_t other : pids)
        if (other > 0) kill(other, SIGKILL);
    }
  }
  return ok;
}

// run fn on `cores` cores of one type (AIV-only or AIC-only kernel)
inline bool Launch(int cores, bool aic, const std::function<void()>& fn) {
  const int most = (aic ? 1 : 2) * kMaxGroups;
  if (cores > most) Fail("launch of %d cores (at most %d emulated)", cores, most);
  CrossCore* shared = static_cast<CrossCore*>(GmAlloc(sizeof(CrossCore)));
  return Fork(cores, [&](int c) {
    block_idx = c;
    block_num = cores;
    g_coreType = aic ? AscendC::AIC_TYPE : AscendC::AIV_TYPE;
    // an AIV-only launch pairs its cores as the chip's groups do (2 g, 2 g + 1), for mode 1 flags
    XCore() = CrossCoreSelf{shared, aic ? cores : 0, aic ? 0 : cores, aic ? c : c / 2, aic ? 0 : c % 2, aic ? 1 : 0,
                            {}};
  }, fn);
}

// run a mixed kernel (KERNEL_TYPE_MIX_AIC_1_2) on `groups` groups of one AIC and two AIV cores: the AIC of group g
// has block_idx g; AIV s of group g has block_idx g and sub_block_idx s, so its GetBlockIdx() is 2 g + s
inline bool LaunchMix(int groups, const std::function<void()>& fn) {
  if (groups > kMaxGroups) Fail("mixed launch of %d groups (at most %d emulated)", groups, kMaxGroups);
  CrossCore* shared = static_cast<CrossCore*>(GmAlloc(sizeof(CrossCore)));
  return Fork(3 * groups, [&](int i) {
    const int g = i / 3, role = i % 3;   // 0: AIC, 1 / 2: AIV 0 / 1
    block_idx = g;
    block_num = groups;
    g_taskRation = 2;
    sub_block_idx = role == 0 ? 0 : role - 1;
    g_coreType = role == 0 ? AscendC::AIC_TYPE : AscendC::AIV_TYPE;
    XCore() = CrossCoreSelf{shared, groups, 2 * groups, g, role == 0 ? 0 : role - 1, role == 0 ? 1 : 0, {}};
  }, fn);
}

}  // namespace av4_emu

// GM writes under SetAtomicAdd take a cross-process lock in CPU-debug mode (closed library); atomic accumulation is
// not emulated, so g_isAtomic stays false and taking the lock stops the run
namespace AscendC {
bool g_isAtomic = false;
ProcessLock* ProcessLock::processLock = nullptr;
ProcessLock* ProcessLock::CreateLock() { av4_emu::Fail("atomic GM writes (ProcessLock) are not emulated"); }
int ProcessLock::Write() { av4_emu::Fail("atomic GM writes (ProcessLock) are not emulated"); }
int ProcessLock::Unlock() { av4_emu::Fail("atomic GM writes (ProcessLock) are not emulated"); }
}  // namespace AscendC

[[noreturn]] void av4_emu_unemulated(const char* name) { av4_emu::Fail("intrinsic %s is not emulated", name); }

// bfloat16_t (asc-tools kernel_bf16.h declares these; their definitions are in the closed cpudebug library)
namespace bfloat16 {
uint16_t Bf16T::FloatToBf16(const float& f) const { return av4_emu::F32ToBf16(f, 'r'); }
Bf16T& Bf16T::operator=(const Bf16T& fp) {
  val = fp.val;
  return *this;
}
Bf16T& Bf16T::operator=(const float& f) {
  val = av4_emu::F32ToBf16(f, 'r');
  return *this;
}
Bf16T::operator float() const { return av4_emu::Bf16ToF32(val); }
float Bf16T::ToFloat() const { return av4_emu::Bf16ToF32(val); }
}  // namespace bfloat16

// half (asc-tools kernel_fp16.h declares these; their definitions are in the closed cpudebug library): round to
// nearest even, as the vector unit's float -> half conversion
uint16_t half::FloatToFp16(const float& f) const { return av4_emu::F32ToF16(f); }
uint16_t half::Int32ToFp16(const int32_t& i) const { return av4_emu::F32ToF16(static_cast<float>(i)); }
half& half::operator=(const half& fp) {
  val = fp.val;
  return *this;
}
half& half::operator=(const float& f) {
  val = av4_emu::F32ToF16(f);
  return *this;
}
half::operator float() const { return av4_emu::F16ToF32(val); }
float half::ToFloat() const { return av4_emu::F16ToF32(val); }
