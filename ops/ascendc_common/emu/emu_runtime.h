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

// run fn on `cores` cores (one forked process each); false (with the core's message on stderr) if any core fails
inline bool Launch(int cores, bool aic, const std::function<void()>& fn) {
  std::fflush(stdout);
  std::fflush(stderr);
  std::vector<pid_t> pids;
  SyncCounter() = static_cast<int64_t*>(GmAlloc(sizeof(int64_t)));
  SyncCores() = cores;
  for (int c = 0; c < cores; ++c) {
    const pid_t pid = fork();
    if (pid < 0) Fail("fork failed");
    if (pid == 0) {
      block_idx = c;
      block_num = cores;
      g_coreType = aic ? AscendC::AIC_TYPE : AscendC::AIV_TYPE;
      fn();
      std::fflush(stdout);
      std::_Exit(0);
    }
    pids.push_back(pid);
  }
  bool ok = true;
  for (size_t c = 0; c < pids.size(); ++c) {
    int status = 0;
    waitpid(pids[c], &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      std::fprintf(stderr, "emu: core %zu failed (status %d)\n", c, status);
      ok = false;
    }
  }
  return ok;
}

// Mixed AIC/AIV launch (KERNEL_TYPE_MIX_AIC_1_2): `groups` groups of one AIC core (block_idx = group) and two AIV
// cores (block_idx = group, sub_block_idx 0 / 1, so GetBlockIdx() = 2 * group + sub on the vector side), each a
// forked process over shared GM; cross-core flags as in ffts_cross_core_sync above.
inline bool LaunchMixed(int groups, const std::function<void()>& fn) {
  if (groups > kMixMaxGroups) Fail("mixed launch of %d groups (at most %d emulated)", groups, kMixMaxGroups);
  std::fflush(stdout);
  std::fflush(stderr);
  Mix() = static_cast<MixFlags*>(GmAlloc(sizeof(MixFlags)));
  std::vector<pid_t> pids;
  for (int g = 0; g < groups; ++g) {
    for (int c = 0; c < 3; ++c) {   // c = 0: AIC, 1 / 2: AIV sub-blocks 0 / 1
      const pid_t pid = fork();
      if (pid < 0) Fail("fork failed");
      if (pid == 0) {
        block_idx = g;
        block_num = groups;
        g_taskRation = 2;
        sub_block_idx = c ? c - 1 : 0;
        g_coreType = c ? AscendC::AIV_TYPE : AscendC::AIC_TYPE;
        fn();
        std::fflush(stdout);
        std::_Exit(0);
      }
      pids.push_back(pid);
    }
  }
  // the first core that fails stops the launch: its partners would only wait for flags it will never set
  bool ok = true;
  std::vector<bool> done(pids.size(), false);
  for (size_t left = pids.size(); left > 0; --left) {
    int status = 0;
    const pid_t pid = waitpid(-1, &status, 0);
    size_t i = 0;
    while (i < pids.size() && pids[i] != pid) ++i;
    if (i == pids.size()) Fail("waitpid returned an unknown process");
    done[i] = true;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      if (ok) std::fprintf(stderr, "emu: group %zu %s failed (status %d)\n", i / 3, i % 3 ? "AIV" : "AIC", status);
      if (ok)
        for (size_t j = 0; j < pids.size(); ++j)
          if (!done[j]) kill(pids[j], SIGKILL);
      ok = false;
    }
  }
  Mix() = nullptr;
  return ok;
}
inline bool IsAic() { return g_coreType == AscendC::AIC_TYPE; }

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
