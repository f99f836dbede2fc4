// Test driver for the host tiling: reads "op T D hc xBytes aivCores ubBytes" lines (op = pre | head | post) on
// stdin and prints one JSON object per line with every tiling field and each core's token range, computed with
// the same HcTokenRange the kernels use. Built and run by tests/ops/test_mhc_ascendc.py.
#include <cstdio>
#include <iostream>
#include <string>

#include "hc_tiling.h"

using namespace mhc_av4;

namespace {

void Ranges(int32_t used, int32_t front, int64_t base) {
  std::printf(", \"ranges\": [");
  for (int32_t b = 0; b < used; ++b) {
    int64_t start = 0, count = 0;
    HcTokenRange(b, front, base, &start, &count);
    std::printf("%s[%lld, %lld]", b ? ", " : "", static_cast<long long>(start), static_cast<long long>(count));
  }
  std::printf("]");
}

#define F(name) std::printf(", \"%s\": %lld", #name, static_cast<long long>(td.name))

}  // namespace

int main() {
  std::string op;
  long long T, D, hc, xBytes, cores, ub;
  while (std::cin >> op >> T >> D >> hc >> xBytes >> cores >> ub) {
    const AivPlatform p{static_cast<uint32_t>(cores), static_cast<uint64_t>(ub)};
    const char* why = "";
    std::printf("{\"op\": \"%s\", ", op.c_str());
    if (op == "post") {
      HcPostTilingData td;
      const bool ok = HcPostTiling(T, D, static_cast<int32_t>(hc), static_cast<int32_t>(xBytes), p, &td, &why);
      std::printf("\"ok\": %s, \"why\": \"%s\"", ok ? "true" : "false", why);
      if (ok) {
        F(T); F(D); F(hc); F(xBytes); F(usedCores); F(frontCores); F(baseTokens); F(dChunk); F(dChunks);
        F(dTail); F(fInBytes); F(resInBytes); F(castBytes); F(outBytes); F(ubBytes);
        Ranges(td.usedCores, td.frontCores, td.baseTokens);
      }
    } else {
      HcPreTilingData td;
      const bool ok = HcPreTiling(T, D, static_cast<int32_t>(hc), static_cast<int32_t>(xBytes), op == "head", p,
                                  &td, &why);
      std::printf("\"ok\": %s, \"why\": \"%s\"", ok ? "true" : "false", why);
      if (ok) {
        F(T); F(D); F(K); F(hc); F(M); F(head); F(xBytes); F(usedCores); F(frontCores); F(baseTokens); F(tileT);
        F(lanes); F(dChunk); F(dChunks); F(dTail); F(rawInBytes); F(sqInBytes); F(coefBytes); F(stageBytes);
        F(yInBytes); F(yCastBytes); F(yOutBytes); F(splitBytes); F(splitChunk); F(xCast); F(ubBytes); F(groups); F(nCols);
        F(n16); F(baseM); F(baseK); F(kSplit); F(kPart); F(tiles); F(wsFnOffset); F(wsRawOffset); F(wsSqOffset);
        F(wsBytes);
        Ranges(td.usedCores, td.frontCores, td.baseTokens);
      }
    }
    std::printf("}\n");
  }
  return 0;
}
