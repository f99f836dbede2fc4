// What the host tiling of the AIV-only families (Engram, mHC) reads from the platform: the AIV core count and the UB
// size. Plain C++ (no CANN headers), so the families' tiling/*.cc and their g++ checks include it as well as op_host;
// op_host fills it with av4_host::ReadAivPlatform (host_steps.h).
#pragma once
#include <cstdint>

namespace av4_host {

struct AivPlatform {
  uint32_t aivCores;   // PlatformAscendC::GetCoreNumAiv()
  uint64_t ubBytes;    // PlatformAscendC::GetCoreMemSize(CoreMemType::UB, ...)
};

}  // namespace av4_host
