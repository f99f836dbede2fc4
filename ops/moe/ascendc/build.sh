#!/usr/bin/env bash
# Build (and optionally install) the CANN custom-op package "ascend_v4_moe" holding the MoE AscendC kernels.
#
#   bash ops/moe/ascendc/build.sh                    # -> ops/moe/ascendc/build_out/custom_opp_*.run
#   bash ops/moe/ascendc/build.sh --install [DIR]    # run the package: DIR/vendors/ascend_v4_moe (default $ASCEND_OPP_PATH)
#   bash ops/moe/ascendc/build.sh --check            # what CI runs without CANN: g++ tiling tests + syntax checks
#
# Needs the CANN toolkit (set_env.sh sourced: ASCEND_HOME_PATH, ccec/bisheng, the ASC CMake package) for the first
# two forms. After --install, MindSpore's registry picks backend "ascendc" on Ascend devices
# (ops/moe/ascendc/__init__.py looks for the package under ASCEND_CUSTOM_OPP_PATH / $ASCEND_OPP_PATH/vendors).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
JOBS="${JOBS:-$(nproc)}"
SOCS="${SOCS:-ascend910b;ascend910_93}"

case "${1:-}" in
  --check)
    cd "$ROOT"
    exec python -m pytest -q tests/ops/test_moe_ascendc.py
    ;;
esac

if [[ -z "${ASCEND_HOME_PATH:-}" ]]; then
  for env in /usr/local/Ascend/cann/set_env.sh /usr/local/Ascend/ascend-toolkit/set_env.sh; do
    if [[ -f "$env" ]]; then
      # shellcheck disable=SC1090
      source "$env"
      break
    fi
  done
fi
if [[ -z "${ASCEND_HOME_PATH:-}" ]]; then
  echo "CANN toolkit not found: source <cann>/set_env.sh first (no NPU build is possible without it)" >&2
  exit 1
fi

BUILD="$HERE/build"
cmake -S "$HERE" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DASCEND_COMPUTE_UNIT="$SOCS" \
      -DASCEND_CANN_PACKAGE_PATH="$ASCEND_HOME_PATH"
cmake --build "$BUILD" -j "$JOBS"
mkdir -p "$HERE/build_out"
find "$BUILD" -name 'custom_opp_*.run' -newer "$HERE/CMakeLists.txt" -exec cp {} "$HERE/build_out/" \;
RUN="$(ls -t "$HERE"/build_out/custom_opp_*.run 2>/dev/null | head -n1 || true)"
if [[ -z "$RUN" ]]; then
  echo "build finished but no custom_opp_*.run was produced" >&2
  exit 1
fi
echo "package: $RUN"

if [[ "${1:-}" == "--install" ]]; then
  DEST="${2:-${ASCEND_OPP_PATH:?set ASCEND_OPP_PATH or pass an install dir}}"
  bash "$RUN" --quiet --install-path="$DEST"
  echo "installed under $DEST/vendors/ascend_v4_moe; for a non-default DIR also export"
  echo "  ASCEND_CUSTOM_OPP_PATH=$DEST/vendors/ascend_v4_moe:\${ASCEND_CUSTOM_OPP_PATH:-}"
fi
