#!/usr/bin/env bash
# Build, install or check the CANN custom-op package of one AscendC op family (or all of them). One mechanism for
# every family: CMake + the ASC package of the CANN toolkit, shared logic in ops/ascendc_common/cmake/av4_opp.cmake.
# ops/<family>/ascendc/build.sh is a thin wrapper around this script.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
FAMILIES=(mhc moe attention engram)
SUPPORTED_SOCS=(ascend910b ascend910_93)          # what every OpDef declares with AICore().AddConfig(...)
DEFAULT_SOCS="ascend910b;ascend910_93"

usage() {
  cat <<'EOF'
usage: ops/ascendc_common/build_opp.sh FAMILY [--soc SOC[;SOC]] [--install [DIR]] [--jobs N]
       ops/ascendc_common/build_opp.sh FAMILY --check

FAMILY      mhc | moe | attention | engram | all (package "ascend_v4_<family>"; all = the four, one after another)
--soc SOCS  SoCs to compile kernels for, separated by ';' or ',': ascend910b (910B), ascend910_93 (910C);
            default "ascend910b;ascend910_93"
--install [DIR]
            after building, install the package. Without DIR: CANN's default location
            $ASCEND_OPP_PATH/vendors/ascend_v4_<family> (found automatically through vendors/config.ini). With DIR:
            DIR/vendors/ascend_v4_<family> (an older install there is uninstalled first); then put that directory
            on ASCEND_CUSTOM_OPP_PATH (the script prints the export line). Either way the installed ops-info json
            is checked to declare every op type of the family (what the Python bindings' available() requires).
--jobs N    parallel build jobs (default: nproc)
--check     no CANN needed: run the family's CPU-side checks (pytest: host tiling, CANN rule checks, kernel/host
            sources against the stand-ins and -- when the CANN source trees are cached -- the real headers, the
            real kernel bodies on the CPU emulator, packaging consistency) and nothing else
-h, --help  this text

Building needs the CANN toolkit (>= 8.3, with the ASC CMake package): source <cann>/set_env.sh first, or the
script sources /usr/local/Ascend/cann/set_env.sh or /usr/local/Ascend/ascend-toolkit/set_env.sh if present.
Output: ops/<family>/ascendc/build_out/custom_opp_*.run (build tree: ops/<family>/ascendc/build/); with
AV4_OPP_BUILD_ROOT=DIR set, DIR/<family>/build_out and DIR/<family>/build instead (out-of-tree builds).
Exit status: 0 ok, 1 build/install failed, 2 bad arguments, 3 missing prerequisite (CANN, cmake, pytest,
writable install dir).
EOF
}

die() {   # die CODE MESSAGE: one line on stderr, non-zero exit
  local code="$1"
  shift
  echo "build_opp.sh: error: $*" >&2
  exit "$code"
}

is_family() {
  local f
  for f in "${FAMILIES[@]}" all; do [[ "$1" == "$f" ]] && return 0; done
  return 1
}

# ------------------------------------------------------------------------------------------------ arguments
FAMILY="" SOCS="" INSTALL=0 INSTALL_DIR="" CHECK=0 JOBS=""
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --soc)
      [[ $# -ge 2 && -n "$2" && "$2" != -* ]] ||
        die 2 "--soc needs a value, e.g. --soc ascend910b or --soc 'ascend910b;ascend910_93'"
      SOCS="$2"; shift 2 ;;
    --soc=*) SOCS="${1#*=}"; [[ -n "$SOCS" ]] || die 2 "--soc= needs a value"; shift ;;
    --install)
      INSTALL=1
      # optional DIR: the next word, unless it is an option or (FAMILY still missing) a family name
      if [[ $# -ge 2 && "$2" != -* ]] && ! { [[ -z "$FAMILY" ]] && is_family "$2"; }; then
        INSTALL_DIR="$2"; shift
      fi
      shift ;;
    --install=*)
      INSTALL=1; INSTALL_DIR="${1#*=}"
      [[ -n "$INSTALL_DIR" ]] || die 2 "--install= needs a directory"
      shift ;;
    --check) CHECK=1; shift ;;
    --jobs | -j)
      [[ $# -ge 2 ]] || die 2 "$1 needs a number"
      JOBS="$2"; shift 2 ;;
    --jobs=*) JOBS="${1#*=}"; shift ;;
    -*) die 2 "unknown option '$1' (see --help)" ;;
    *)
      [[ -z "$FAMILY" ]] || die 2 "unexpected argument '$1': give one FAMILY (see --help)"
      FAMILY="$1"; shift ;;
  esac
done

[[ -n "$FAMILY" ]] || die 2 "missing FAMILY: one of ${FAMILIES[*]} all (see --help)"
is_family "$FAMILY" || die 2 "unknown family '$FAMILY': one of ${FAMILIES[*]} all"
if [[ "$FAMILY" == all ]]; then SELECTED=("${FAMILIES[@]}"); else SELECTED=("$FAMILY"); fi

if [[ -n "$JOBS" ]]; then
  [[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || die 2 "--jobs needs a positive integer, got '$JOBS'"
else
  JOBS="$(nproc 2>/dev/null || echo 2)"
fi

SOC_LIST=()
IFS=';,' read -r -a _socs <<<"${SOCS:-$DEFAULT_SOCS}"
for s in "${_socs[@]}"; do
  s="$(echo "$s" | tr '[:upper:]' '[:lower:]' | tr -d '[:space:]')"
  [[ -n "$s" ]] || continue
  ok=0
  for k in "${SUPPORTED_SOCS[@]}"; do [[ "$s" == "$k" ]] && ok=1; done
  ((ok)) || die 2 "unknown SoC '$s': supported ${SUPPORTED_SOCS[*]} (the SoCs our OpDefs declare)"
  SOC_LIST+=("$s")
done
((${#SOC_LIST[@]})) || die 2 "--soc names no SoC"
SOCS="$(IFS=';'; echo "${SOC_LIST[*]}")"

if ((CHECK)); then
  ((INSTALL == 0)) || die 2 "--check runs the CPU-side checks only; it cannot be combined with --install"
fi

# ------------------------------------------------------------------------------------------------ --check
if ((CHECK)); then
  if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
  elif [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"
  else PY=python3
  fi
  "$PY" -c 'import pytest' >/dev/null 2>&1 ||
    die 3 "pytest is not importable by '$PY': set PYTHON=<a python with pytest>"
  TESTS=(tests/ops/test_ascendc_packaging.py tests/ops/test_ascendc_rules.py tests/ops/test_ascendc_real_headers.py)
  for f in "${SELECTED[@]}"; do
    case "$f" in
      mhc) TESTS+=(tests/ops/test_mhc_ascendc.py tests/ops/test_mhc_ascendc_ms.py tests/ops/test_mhc_ascendc_emu.py) ;;
      moe) TESTS+=(tests/ops/test_moe_ascendc.py tests/ops/test_moe_ascendc_emu.py) ;;
      attention) TESTS+=(tests/ops/test_attention_ascendc.py) ;;
      engram) TESTS+=(tests/ops/test_engram_ascendc.py tests/ops/test_engram_ascendc_emu.py) ;;
    esac
  done
  cd "$ROOT"
  exec "$PY" -m pytest -q "${TESTS[@]}"
fi

# ------------------------------------------------------------------------------------------------ prerequisites
writable_dir() {   # DIR exists and is a writable directory, or can be created under a writable ancestor
  local d="$1"
  if [[ -e "$d" ]]; then
    [[ -d "$d" && -w "$d" ]]
    return
  fi
  while [[ ! -e "$d" ]]; do d="$(dirname "$d")"; done
  [[ -d "$d" && -w "$d" ]]
}

if ((INSTALL)) && [[ -n "$INSTALL_DIR" ]]; then
  INSTALL_DIR="$(realpath -m "$INSTALL_DIR")"
  writable_dir "$INSTALL_DIR" || die 3 "install dir not writable: $INSTALL_DIR"
fi

if [[ -z "${ASCEND_HOME_PATH:-}" ]]; then
  for env in /usr/local/Ascend/cann/set_env.sh /usr/local/Ascend/ascend-toolkit/set_env.sh \
             "${HOME:-/nonexistent}/Ascend/ascend-toolkit/set_env.sh"; do
    if [[ -f "$env" ]]; then
      set +u
      # shellcheck disable=SC1090
      source "$env"
      set -u
      break
    fi
  done
fi
[[ -n "${ASCEND_HOME_PATH:-}" ]] ||
  die 3 "CANN toolkit not found: source <cann>/set_env.sh first (e.g. /usr/local/Ascend/ascend-toolkit/set_env.sh);" \
        "--check runs the CPU-side checks without CANN"
[[ -d "$ASCEND_HOME_PATH" ]] ||
  die 3 "ASCEND_HOME_PATH=$ASCEND_HOME_PATH does not exist: source the set_env.sh of an installed CANN toolkit"

command -v cmake >/dev/null 2>&1 || die 3 "cmake not found: install CMake >= 3.16 (CANN's ASC CMake package needs it)"

if ((INSTALL)) && [[ -z "$INSTALL_DIR" ]]; then
  OPP="${ASCEND_OPP_PATH:-$ASCEND_HOME_PATH/opp}"
  writable_dir "$OPP/vendors" ||
    die 3 "install dir not writable: $OPP/vendors (pass --install DIR to install elsewhere)"
fi

op_types_of() {   # the op types a family's op_kernel/CMakeLists.txt lists (lines "<OpType> <file>.cpp")
  sed -n 's/^[[:space:]]*\([A-Za-z][A-Za-z0-9]*\)[[:space:]][[:space:]]*[A-Za-z0-9_]*\.cpp.*$/\1/p' \
    "$ROOT/ops/$1/ascendc/op_kernel/CMakeLists.txt"
}

# ------------------------------------------------------------------------------------------------ build + install
INSTALLED=()
for fam in "${SELECTED[@]}"; do
  FDIR="$ROOT/ops/$fam/ascendc"
  if [[ -n "${AV4_OPP_BUILD_ROOT:-}" ]]; then
    BUILD="$AV4_OPP_BUILD_ROOT/$fam/build"
    OUT="$AV4_OPP_BUILD_ROOT/$fam/build_out"
  else
    BUILD="$FDIR/build"
    OUT="$FDIR/build_out"
  fi
  VENDOR="ascend_v4_$fam"
  echo "== $VENDOR: socs $SOCS, $JOBS jobs"
  [[ -d "$BUILD" ]] && find "$BUILD" -name 'custom_opp_*.run' -delete
  cmake -S "$FDIR" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release "-DASCEND_COMPUTE_UNIT=$SOCS" \
        "-DASCEND_CANN_PACKAGE_PATH=$ASCEND_HOME_PATH" ||
    die 1 "configuring $VENDOR failed (CMake output above)"
  cmake --build "$BUILD" --target binary package -j "$JOBS" || die 1 "building $VENDOR failed (output above)"
  RUN="$(find "$BUILD" -name 'custom_opp_*.run' | head -n1)"
  [[ -n "$RUN" ]] || die 1 "building $VENDOR finished but produced no custom_opp_*.run under $BUILD"
  mkdir -p "$OUT"
  rm -f "$OUT"/custom_opp_*.run
  cp "$RUN" "$OUT/"
  RUN="$OUT/$(basename "$RUN")"
  echo "package: $RUN"
  ((INSTALL)) || continue

  if [[ -n "$INSTALL_DIR" ]]; then
    TARGET="$INSTALL_DIR/vendors/$VENDOR"
    mkdir -p "$INSTALL_DIR"
    if [[ -f "$TARGET/scripts/uninstall.sh" ]]; then
      bash "$TARGET/scripts/uninstall.sh" || die 1 "uninstalling the previous $VENDOR at $TARGET failed"
    fi
    bash "$RUN" --quiet --install-path="$INSTALL_DIR" || die 1 "installing $RUN into $INSTALL_DIR failed"
  else
    TARGET="${ASCEND_OPP_PATH:-$ASCEND_HOME_PATH/opp}/vendors/$VENDOR"
    bash "$RUN" --quiet || die 1 "installing $RUN into the default CANN location failed"
  fi
  mapfile -t OPS < <(op_types_of "$fam")
  "${PYTHON:-python3}" "$ROOT/ops/ascendc_package.py" "$TARGET" "${OPS[@]}" ||
    die 1 "$VENDOR installed at $TARGET does not declare all of ${OPS[*]}: the bindings would not use it"
  INSTALLED+=("$TARGET")
done

if ((INSTALL)) && [[ -n "$INSTALL_DIR" ]]; then
  paths="$(IFS=':'; echo "${INSTALLED[*]}")"
  libs=""
  for t in "${INSTALLED[@]}"; do libs="$libs$t/op_api/lib:"; done
  echo "installed under $INSTALL_DIR/vendors; before running, export (or source each <vendor>/bin/set_env.bash):"
  echo "  export ASCEND_CUSTOM_OPP_PATH=$paths:\${ASCEND_CUSTOM_OPP_PATH:-}"
  echo "  export LD_LIBRARY_PATH=$libs\${LD_LIBRARY_PATH:-}"
elif ((INSTALL)); then
  echo "installed: ${INSTALLED[*]} (CANN's default vendors dir: no environment change needed)"
fi
