#!/usr/bin/env bash
# Build / install / check the CANN custom-op package "ascend_v4_engram" (this folder's AscendC kernels):
#   bash ops/engram/ascendc/build.sh [--soc SOC[;SOC]] [--install [DIR]] [--jobs N]   # needs the CANN toolkit
#   bash ops/engram/ascendc/build.sh --check                                           # CPU-side checks, no CANN
# The same as ops/ascendc_common/build_opp.sh engram ... (see its --help): one driver for every op family.
exec bash "$(dirname "${BASH_SOURCE[0]}")/../../ascendc_common/build_opp.sh" engram "$@"
