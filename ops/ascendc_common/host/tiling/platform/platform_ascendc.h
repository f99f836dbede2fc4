// Stand-in for CANN's "tiling/platform/platform_ascendc.h": PlatformAscendC over the fake fe::PlatFormInfos of
// op_def_registry.h, so host tiling code can be compiled and exercised with chosen core counts and UB sizes.
#pragma once
#include <cstdint>

#include "register/op_def_registry.h"

namespace platform_ascendc {
enum class CoreMemType { L0_A = 0, L0_B = 1, L0_C = 2, L1 = 3, L2 = 4, UB = 5, HBM = 6, RESERVED };
enum class SocVersion { ASCEND910B, ASCEND910_93, ASCEND950, RESERVED_VERSION };

class PlatformAscendC {
 public:
  explicit PlatformAscendC(fe::PlatFormInfos* info) : info_(info) {}
  uint32_t GetCoreNumAiv() const { return info_ ? info_->aivCores : 0; }
  void GetCoreMemSize(const CoreMemType& memType, uint64_t& size) const {
    size = (info_ && memType == CoreMemType::UB) ? info_->ubBytes : 0;
  }
  SocVersion GetSocVersion() const { return SocVersion::ASCEND910B; }
  // system workspace the AscendC libraries reserve ahead of the user workspace (CANN: 16 MB on 910B / 910C)
  uint32_t GetLibApiWorkSpaceSize() const { return 16u << 20; }

 private:
  fe::PlatFormInfos* info_;
};
}  // namespace platform_ascendc
