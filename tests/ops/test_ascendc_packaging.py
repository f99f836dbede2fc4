"""Packaging of the AscendC op families, without CANN: one build driver (ops/ascendc_common/build_opp.sh), one shared
CMake module, one Python package helper (ops/ascendc_package.py), and a Dockerfile that uses them.

* the driver's command line: --help, bad arguments, a missing CANN toolkit, an unwritable install dir (exit codes and
  one-line messages); --check's test selection;
* consistency, parsed from the files: op types in each family's op_kernel/CMakeLists.txt == the OpDefs registered in
  its op_host sources (OP_ADD) == the op types its Python binding calls; kernel entry names follow CANN's op type ->
  snake_case rule; every host source is in the host CMake list; the SoCs agree everywhere;
* package_installed() on fake vendor trees (present / missing op type / unreadable json / default location);
* the Dockerfile's build step runs the driver with options it accepts and points ASCEND_CUSTOM_OPP_PATH at the
  three vendor directories;
* when cmake and a C++ compiler exist: each family's CMakeLists configures up to find_package(ASC) and stops there
  with a clear error; with a *stub* ASC package (written here, not CANN's) the driver runs configure -> build ->
  package -> install -> post-install check end to end, and the stub records what our CMake passes to npu_op_*.
"""
import ast
import glob
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys

import pytest

from ascend_v4.ops import ascendc_package as pkg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.join(ROOT, "ops", "ascendc_common", "build_opp.sh")
CMAKE_MODULE = os.path.join(ROOT, "ops", "ascendc_common", "cmake", "av4_opp.cmake")
DOCKERFILE = os.path.join(ROOT, "docker", "Dockerfile.ascend")
FAMILIES = ("mhc", "moe", "attention", "engram")
BINDINGS = {"mhc": "ops/mhc/ascendc/binding.py", "moe": "ops/moe/ascendc/binding.py",
            "attention": "ops/attention/ascendc.py", "engram": "ops/engram/ascendc/binding.py"}
SYSTEM_CANN = [p for p in ("/usr/local/Ascend/cann/set_env.sh", "/usr/local/Ascend/ascend-toolkit/set_env.sh")
               if os.path.exists(p)]
no_system_cann = pytest.mark.skipif(bool(SYSTEM_CANN), reason="a CANN toolkit is installed on this machine")
CMAKE = shutil.which("cmake")
CXX = shutil.which("c++") or shutil.which("g++")
needs_cmake = pytest.mark.skipif(CMAKE is None or CXX is None, reason="cmake or a C++ compiler not installed")


def _fam_dir(family):
    return os.path.join(ROOT, "ops", family, "ascendc")


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("ASCEND_HOME_PATH", "ASCEND_OPP_PATH", "ASCEND_CUSTOM_OPP_PATH", "AV4_OPP_BUILD_ROOT",
                        "PYTHON")}
    env["HOME"] = str(tmp_path / "home")
    env.update(extra)
    return env


def _drive(args, tmp_path, script=DRIVER, **extra):
    return subprocess.run(["bash", script, *args], capture_output=True, text=True, env=_env(tmp_path, **extra),
                          timeout=600)


def _one_error_line(res):
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("build_opp.sh: error: "), res.stderr
    return lines[0]


# ------------------------------------------------------------------------------------------------ driver CLI
@pytest.mark.parametrize("script", [DRIVER] + [os.path.join(_fam_dir(f), "build.sh") for f in FAMILIES])
def test_help(tmp_path, script):
    res = _drive(["--help"], tmp_path, script=script)
    assert res.returncode == 0, res.stderr
    for word in ("usage:", "FAMILY", "--soc", "--install [DIR]", "--check", "--jobs", "set_env.sh", "ascend910_93"):
        assert word in res.stdout


@pytest.mark.parametrize("args, message", [
    ([], "missing FAMILY"),
    (["foo"], "unknown family 'foo'"),
    (["mhc", "--bogus"], "unknown option '--bogus'"),
    (["mhc", "--soc"], "--soc needs a value"),
    (["mhc", "--soc", "ascend310p"], "unknown SoC 'ascend310p'"),
    (["mhc", "--soc=ascend910b;nope"], "unknown SoC 'nope'"),
    (["mhc", "--jobs", "0"], "positive integer"),
    (["mhc", "--jobs=x"], "positive integer"),
    (["mhc", "moe"], "unexpected argument 'moe'"),
    (["moe", "--check", "--install"], "cannot be combined with --install"),
    (["attention", "--install="], "--install= needs a directory"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, args, message):
    res = _drive(args, tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in _one_error_line(res)


@no_system_cann
@pytest.mark.parametrize("family", FAMILIES + ("all",))
def test_no_cann_exits_3_and_says_what_to_source(tmp_path, family):
    res = _drive([family, "--soc", "ascend910b;ascend910_93", "--jobs", "2"], tmp_path)
    assert res.returncode == 3, res.stdout + res.stderr
    line = _one_error_line(res)
    assert "CANN toolkit not found" in line and "set_env.sh" in line and "--check" in line
    # the family wrapper reaches the same place with the same arguments
    if family != "all":
        res = _drive(["--install", str(tmp_path / "opp")], tmp_path, script=os.path.join(_fam_dir(family), "build.sh"))
        assert res.returncode == 3 and "CANN toolkit not found" in _one_error_line(res)


def test_missing_cann_dir_exits_3(tmp_path):
    res = _drive(["moe"], tmp_path, ASCEND_HOME_PATH=str(tmp_path / "no-cann"))
    assert res.returncode == 3 and "does not exist" in _one_error_line(res)


def test_unwritable_install_dir_exits_3_before_anything_else(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for target in (blocker, blocker / "sub"):          # a file, and a path below a file: never a usable dir
        res = _drive(["mhc", "--install", str(target)], tmp_path)
        assert res.returncode == 3 and "install dir not writable" in _one_error_line(res)
    if os.geteuid() != 0:                              # root writes anywhere; the permission case needs a user
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
        try:
            res = _drive(["all", "--install", str(ro / "opp")], tmp_path)
            assert res.returncode == 3 and "install dir not writable" in _one_error_line(res)
        finally:
            ro.chmod(stat.S_IRWXU)


def _fake_python(tmp_path, import_ok=True):
    log = tmp_path / "python_args.txt"
    exe = tmp_path / "fakepython"
    exe.write_text("#!/bin/bash\n"
                   f'if [ "$1" = "-c" ]; then exit {0 if import_ok else 1}; fi\n'
                   f'echo "$PWD $*" > "{log}"\n')
    exe.chmod(0o755)
    return str(exe), log


@pytest.mark.parametrize("family, tests", [
    ("mhc", ["test_mhc_ascendc.py", "test_mhc_ascendc_ms.py", "test_mhc_ascendc_emu.py"]),
    ("moe", ["test_moe_ascendc.py", "test_moe_ascendc_emu.py"]),
    ("attention", ["test_attention_ascendc.py"]),
    ("engram", ["test_engram_ascendc.py", "test_engram_ascendc_emu.py"]),
    ("all", ["test_mhc_ascendc.py", "test_mhc_ascendc_ms.py", "test_mhc_ascendc_emu.py", "test_moe_ascendc.py",
             "test_moe_ascendc_emu.py", "test_attention_ascendc.py", "test_engram_ascendc.py",
             "test_engram_ascendc_emu.py"]),
])
def test_check_runs_the_family_pytest_files(tmp_path, family, tests):
    exe, log = _fake_python(tmp_path)
    res = _drive([family, "--check"], tmp_path, PYTHON=exe)
    assert res.returncode == 0, res.stderr
    cwd, *args = log.read_text().split()
    assert cwd == ROOT and args[:3] == ["-m", "pytest", "-q"]
    files = args[3:]
    common = ["test_ascendc_packaging.py", "test_ascendc_rules.py", "test_ascendc_real_headers.py"]
    assert files == [f"tests/ops/{t}" for t in common + tests]
    assert all(os.path.isfile(os.path.join(ROOT, f)) for f in files)
    exe, _ = _fake_python(tmp_path, import_ok=False)
    res = _drive([family, "--check"], tmp_path, PYTHON=exe)
    assert res.returncode == 3 and "pytest is not importable" in _one_error_line(res)


# ------------------------------------------------------------------------------------------------ consistency
def cann_snake(op_type):
    """CANN's op type -> kernel entry / file name rule (upper after lower or digit, and the last upper of a run
    before a lower, start a new word)."""
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", op_type)
    return re.sub(r"([A-Z])([A-Z][a-z])", r"\1_\2", s).lower()


def test_snake_rule_matches_the_documented_examples():
    # the examples of CANN's kernel-entry naming table, and the vendor's MoeGatingTopK -> moe_gating_top_k
    for op, name in (("AddCustom", "add_custom"), ("MatmulCustom", "matmul_custom"),
                     ("ReduceMaxCustom", "reduce_max_custom"), ("Conv2DCustom", "conv2_d_custom"),
                     ("GatherV2Custom", "gather_v2_custom"), ("MoeGatingTopK", "moe_gating_top_k")):
        assert cann_snake(op) == name


def kernel_pairs(family):
    """(op type, kernel file) pairs of av4_opp_kernels(OPS ...) in op_kernel/CMakeLists.txt."""
    text = _read(os.path.join(_fam_dir(family), "op_kernel", "CMakeLists.txt"))
    m = re.search(r"av4_opp_kernels\(\s*OPS\s+(.*?)\)", re.sub(r"#[^\n]*", "", text), re.S)
    assert m, "op_kernel/CMakeLists.txt must call av4_opp_kernels(OPS ...)"
    words = m.group(1).split()
    assert len(words) % 2 == 0, words
    return list(zip(words[::2], words[1::2]))


def host_sources(family):
    text = _read(os.path.join(_fam_dir(family), "op_host", "CMakeLists.txt"))
    m = re.search(r"av4_opp_host\(\s*SOURCES\s+(.*?)\)", re.sub(r"#[^\n]*", "", text), re.S)
    assert m, "op_host/CMakeLists.txt must call av4_opp_host(SOURCES ...)"
    return [os.path.normpath(os.path.join(_fam_dir(family), "op_host", w)) for w in m.group(1).split()]


def opdef_names(family):
    names = []
    for src in sorted(glob.glob(os.path.join(_fam_dir(family), "op_host", "*.cpp"))):
        names += re.findall(r"^\s*OP_ADD\((\w+)\);", _read(src), re.M)
    return names


def binding(family):
    """FAMILY, OP_TYPES (literal values) and the source of a family's Python binding, without importing it."""
    src = _read(os.path.join(ROOT, BINDINGS[family]))
    consts = {}
    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("FAMILY", "OP_TYPES"):
                consts[node.targets[0].id] = ast.literal_eval(node.value)
    ops = consts["OP_TYPES"]
    return consts["FAMILY"], list(ops.values()) if isinstance(ops, dict) else list(ops), src


@pytest.mark.parametrize("family", FAMILIES)
def test_op_types_agree_cmake_opdefs_binding(family):
    pairs = kernel_pairs(family)
    cmake_ops = [op for op, _ in pairs]
    fam, bind_ops, src = binding(family)
    assert fam == family and "VENDOR = _pkg.vendor_name(FAMILY)" in src
    assert len(set(cmake_ops)) == len(cmake_ops)
    assert sorted(cmake_ops) == sorted(opdef_names(family)) == sorted(bind_ops)
    # every op type the binding hands to ops.Custom / CustomRegOp literally is one of OP_TYPES
    literal = re.findall(r"(?:_custom|_reg|Custom|CustomRegOp|Contract)\(\s*\"(\w+)\"", src)
    assert set(literal) <= set(bind_ops), literal
    for op in cmake_ops:   # each OpDef class exists under its op type
        assert any(re.search(rf"class {op}\b[^{{]*OpDef", _read(f))
                   for f in glob.glob(os.path.join(_fam_dir(family), "op_host", "*.cpp"))), op


@pytest.mark.parametrize("family", FAMILIES)
def test_kernel_files_exist_and_entries_follow_cann_naming(family):
    kdir = os.path.join(_fam_dir(family), "op_kernel")
    pairs = kernel_pairs(family)
    assert sorted(f for _, f in pairs) == sorted(os.path.basename(p) for p in glob.glob(os.path.join(kdir, "*.cpp")))
    for op, f in pairs:
        entries = re.findall(r'extern "C" __global__ __aicore__ void (\w+)\(', _read(os.path.join(kdir, f)))
        assert entries == [cann_snake(op)], (op, f, entries)


@pytest.mark.parametrize("family", FAMILIES)
def test_host_cmake_lists_every_host_source(family):
    listed = host_sources(family)
    assert all(os.path.isfile(p) for p in listed), listed
    hdir = os.path.join(_fam_dir(family), "op_host")
    for cpp in glob.glob(os.path.join(hdir, "*.cpp")):
        assert os.path.normpath(cpp) in listed, cpp
    # the plain-C++ tiling a host file includes (../tiling/x.h) is compiled too (x.cc), or the libraries miss symbols
    for f in glob.glob(os.path.join(hdir, "*.cpp")) + glob.glob(os.path.join(hdir, "*.h")):
        for inc in re.findall(r'#include "\.\./tiling/(\w+)\.h"', _read(f)):
            cc = os.path.normpath(os.path.join(_fam_dir(family), "tiling", inc + ".cc"))
            if os.path.exists(cc):
                assert cc in listed, (f, cc)


def test_socs_and_vendor_names_agree_everywhere():
    driver, cmake = _read(DRIVER), _read(CMAKE_MODULE)
    drv_socs = re.search(r"SUPPORTED_SOCS=\(([^)]*)\)", driver).group(1).split()
    cmk_socs = re.search(r'set\(AV4_OPP_SOCS "([^"]*)"\)', cmake).group(1).split(";")
    drv_default = re.search(r'DEFAULT_SOCS="([^"]*)"', driver).group(1).split(";")
    assert sorted(drv_socs) == sorted(cmk_socs) == sorted(drv_default)
    for family in FAMILIES:
        configs = set()
        for f in glob.glob(os.path.join(_fam_dir(family), "op_host", "*.cpp")):
            configs |= set(re.findall(r'AddConfig\("(\w+)"\)', _read(f)))
        assert configs == set(drv_socs), (family, configs)
        top = _read(os.path.join(_fam_dir(family), "CMakeLists.txt"))
        assert f"av4_opp_package({family})" in top and "ascendc_common/cmake/av4_opp.cmake" in top
        assert pkg.vendor_name(family) == f"ascend_v4_{family}"
    assert "set(vendor_name ascend_v4_${family})" in cmake
    assert re.search(r"FAMILIES=\(mhc moe attention engram\)", driver) and pkg.FAMILIES == FAMILIES
    assert 'VENDOR="ascend_v4_$fam"' in driver


def test_no_stale_vendor_names():
    files = [DOCKERFILE, os.path.join(ROOT, "docker", "README.md"), os.path.join(ROOT, "README.md"),
             os.path.join(ROOT, "ops", "mhc", "README.md")]
    for family in FAMILIES:
        files += [p for p in glob.glob(os.path.join(_fam_dir(family), "**", "*"), recursive=True)
                  if os.path.isfile(p) and p.endswith((".py", ".md", ".sh", ".txt", ".cpp", ".h"))
                  and not re.search(r"/build(_out)?/", os.path.relpath(p, ROOT))]
    files += [os.path.join(ROOT, BINDINGS[f]) for f in FAMILIES]
    files += [os.path.join(ROOT, "ops", f, "__init__.py") for f in FAMILIES]
    for f in files:
        text = _read(f)
        for stale in (r"\bav4_attention\b", r"vendors/ascend_v4(?!_)\b", r"package [`\"']ascend_v4[`\"']",
                      r"vendor [`\"']ascend_v4[`\"']", r"setenv\.bash"):
            assert not re.search(stale, text), (f, stale)


# ------------------------------------------------------------------------------------------------ package helper
def _vendor_tree(root, ops, soc="ascend910b", text=None):
    cfg = root / "op_impl" / "ai_core" / "tbe" / "config" / soc
    cfg.mkdir(parents=True, exist_ok=True)
    info = cfg / f"aic-{soc}-ops-info.json"
    info.write_text(text if text is not None else json.dumps({op: {"opFile": {"value": op.lower()}} for op in ops}))
    return info


@pytest.fixture
def clean_env(monkeypatch):
    for k in ("ASCEND_OPP_PATH", "ASCEND_CUSTOM_OPP_PATH"):
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


OPS = ("HcPreAv4", "HcHeadAv4", "HcPostAv4")


def test_package_installed_present_and_missing_op_type(tmp_path, clean_env):
    v = "ascend_v4_mhc"
    assert pkg.vendor_dirs(v) == [] and not pkg.package_installed(v, OPS)
    _vendor_tree(tmp_path / "pkg", OPS[:2])                                  # one op type missing
    clean_env.setenv("ASCEND_CUSTOM_OPP_PATH", f"{tmp_path / 'nothing'}::{tmp_path / 'pkg'}")
    assert pkg.vendor_dirs(v) == [str(tmp_path / "nothing"), str(tmp_path / "pkg")]
    assert not pkg.package_installed(v, OPS)
    _vendor_tree(tmp_path / "pkg", OPS, soc="ascend910_93")                  # another SoC's json has all three
    assert pkg.package_installed(v, OPS)
    assert pkg.find_ops_info(pkg.vendor_dirs(v), OPS).endswith("aic-ascend910_93-ops-info.json")
    assert not pkg.package_installed(v, OPS + ("HcExtraAv4",))
    with pytest.raises(ValueError):
        pkg.package_installed(v, ())


def test_package_installed_unreadable_or_malformed_json(tmp_path, clean_env):
    v = "ascend_v4_moe"
    clean_env.setenv("ASCEND_CUSTOM_OPP_PATH", str(tmp_path / "pkg"))
    info = _vendor_tree(tmp_path / "pkg", OPS, text='{"HcPreAv4": {}, "HcHeadAv4": {}, "HcPostAv4": ')   # truncated
    assert not pkg.package_installed(v, OPS)
    info.write_text(json.dumps([{"op": op} for op in OPS]))                 # not an object keyed by op type
    assert not pkg.package_installed(v, OPS)
    info.write_text(json.dumps({"other": {"note": " ".join(OPS)}}))        # names only as text, not as op types
    assert not pkg.package_installed(v, OPS)
    info.unlink()
    info.mkdir()                                                            # a directory named like the json
    assert not pkg.package_installed(v, OPS)
    info.rmdir()
    _vendor_tree(tmp_path / "pkg", OPS)
    assert pkg.package_installed(v, OPS)
    if os.geteuid() != 0:                                                   # root reads mode-000 files anyway
        info.chmod(0)
        try:
            assert not pkg.package_installed(v, OPS)
        finally:
            info.chmod(0o644)


def test_package_found_in_default_vendors_dir_by_name(tmp_path, clean_env):
    _vendor_tree(tmp_path / "opp" / "vendors" / "ascend_v4_attention", ("AV4CompressKV",))
    clean_env.setenv("ASCEND_OPP_PATH", str(tmp_path / "opp"))
    assert pkg.package_installed("ascend_v4_attention", ["AV4CompressKV"])
    assert not pkg.package_installed("ascend_v4_moe", ["AV4CompressKV"])   # another vendor's default dir


def test_available_needs_the_device_too(tmp_path, clean_env):
    _vendor_tree(tmp_path / "pkg", OPS)
    clean_env.setenv("ASCEND_CUSTOM_OPP_PATH", str(tmp_path / "pkg"))
    clean_env.setattr(pkg, "on_ascend", lambda: False)
    assert pkg.package_installed("ascend_v4_mhc", OPS) and not pkg.available("ascend_v4_mhc", OPS)
    clean_env.setattr(pkg, "on_ascend", lambda: True)
    assert pkg.available("ascend_v4_mhc", OPS)
    with pytest.raises(ValueError, match="unknown AscendC op family"):
        pkg.vendor_name("mla")
    note = pkg.install_note("moe", ["B", "A"])
    assert "'ascend_v4_moe' (2 op types)" in note and "ops/moe/ascendc/build.sh --install" in note


def test_helper_script_exit_codes(tmp_path):
    script = os.path.join(ROOT, "ops", "ascendc_package.py")
    _vendor_tree(tmp_path / "v", OPS)
    run = lambda *a: subprocess.run([sys.executable, script, *a], capture_output=True, text=True)  # noqa: E731
    assert run(str(tmp_path / "v"), *OPS).returncode == 0
    bad = run(str(tmp_path / "v"), *OPS, "Missing")
    assert bad.returncode == 1 and "error: no ops-info json" in bad.stderr
    assert run(str(tmp_path / "v")).returncode == 2 and run("--help").returncode == 0


# ------------------------------------------------------------------------------------------------ Dockerfile
def _docker_values():
    text = _read(DOCKERFILE)
    values = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    env_block = re.search(r"^ENV (.*?)(?=^\S)", text, re.M | re.S).group(1)
    values.update(re.findall(r"(\w+)=(\S+)", env_block.replace("\\\n", " ")))
    return text, values


def test_dockerfile_env_names_the_three_vendor_dirs():
    text, values = _docker_values()
    opp = values["AV4_OPP"]
    want = {f"{opp}/vendors/{pkg.vendor_name(f)}" for f in FAMILIES}
    assert set(values["ASCEND_CUSTOM_OPP_PATH"].split(":")) == want
    libs = set(values["LD_LIBRARY_PATH"].split(":"))
    assert {f"{d}/op_api/lib" for d in want} <= libs
    assert values["CANN_SET_ENV"].endswith("/set_env.sh") and 'source "${CANN_SET_ENV}"' in text
    assert values["SOC"] in ("ascend910b", "ascend910_93")


@no_system_cann
def test_dockerfile_build_step_uses_options_the_driver_accepts(tmp_path):
    text, values = _docker_values()
    calls = re.findall(r"bash (ops/\S+\.sh)([^\n\\&]*)", text)
    assert [c[0] for c in calls] == ["ops/ascendc_common/build_opp.sh"], calls
    values["AV4_OPP"] = str(tmp_path / "opp")                                # the image's dir, here in tmp
    line = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], calls[0][1])
    args = shlex.split(line)
    assert args[0] == "all" and "--install" in args and "--soc" in args
    res = _drive(args, tmp_path)
    # every option parsed, the install dir accepted; the only thing missing here is the CANN toolkit
    assert res.returncode == 3 and "CANN toolkit not found" in _one_error_line(res), res.stderr


# ------------------------------------------------------------------------------------------------ CMake
@needs_cmake
@pytest.mark.parametrize("family", FAMILIES)
def test_cmake_configures_up_to_find_package_asc(tmp_path, family):
    env = _env(tmp_path)
    res = subprocess.run([CMAKE, "-S", _fam_dir(family), "-B", str(tmp_path / "b")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode != 0
    assert "CANN's ASC CMake package not found" in res.stderr and "set_env.sh" in res.stderr, res.stderr
    res = subprocess.run([CMAKE, "-S", _fam_dir(family), "-B", str(tmp_path / "c"), "-DASCEND_COMPUTE_UNIT=ascend310p"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode != 0 and "is not one our OpDefs declare" in res.stderr, res.stderr


# A stand-in for CANN's ASC CMake package: records every npu_op_* call, and its "package" target writes a fake
# custom_opp_*.run that installs a vendor tree with one ops-info json per SoC listing the op types the kernels
# declared (STUB_DROP_OP leaves one out), plus scripts/uninstall.sh. It checks OUR wiring, not CANN's behaviour.
STUB_ASC = r'''
set(ASC_FOUND TRUE)
set(STUB_LOG ${CMAKE_BINARY_DIR}/stub_calls.txt)
file(WRITE ${STUB_LOG} "")
file(WRITE ${CMAKE_BINARY_DIR}/stub_empty.cpp "")
function(_stub_log)
  string(REPLACE ";" " " line "${ARGN}")
  file(APPEND ${STUB_LOG} "${line}\n")
endfunction()
function(npu_op_package name)
  _stub_log(npu_op_package ${name} ${ARGN})
  set_property(GLOBAL PROPERTY STUB_VENDOR ${name})
  add_custom_target(binary)
  add_custom_target(package COMMAND ${CMAKE_COMMAND} -E copy ${CMAKE_BINARY_DIR}/stub_installer.sh
                    ${CMAKE_BINARY_DIR}/custom_opp_stub_x86_64.run)
endfunction()
function(npu_op_code_gen)
  _stub_log(npu_op_code_gen ${ARGN})
endfunction()
function(npu_op_library name type)
  _stub_log(npu_op_library ${name} ${type} ${ARGN})
  add_library(${name} STATIC ${CMAKE_BINARY_DIR}/stub_empty.cpp)
endfunction()
function(npu_op_kernel_sources target)
  _stub_log(npu_op_kernel_sources ${target} ${ARGN})
  cmake_parse_arguments(A "" "OP_TYPE;KERNEL_DIR;KERNEL_FILE" "" ${ARGN})
  set_property(GLOBAL APPEND PROPERTY STUB_OPS ${A_OP_TYPE})
endfunction()
function(npu_op_kernel_library target)
  _stub_log(npu_op_kernel_library ${target} ${ARGN})
  add_library(${target} STATIC ${CMAKE_BINARY_DIR}/stub_empty.cpp)
  get_property(vendor GLOBAL PROPERTY STUB_VENDOR)
  get_property(ops GLOBAL PROPERTY STUB_OPS)
  string(REPLACE ";" " " ops "${ops}")
  string(REPLACE ";" " " socs "${ASCEND_COMPUTE_UNIT}")
  file(WRITE ${CMAKE_BINARY_DIR}/stub_installer.sh "#!/bin/bash
set -e
dest=\"\${ASCEND_OPP_PATH}\"
for a in \"\$@\"; do case \"\$a\" in --install-path=*) dest=\"\${a#*=}\";; --quiet) ;; *) exit 9;; esac; done
v=\"\$dest/vendors/${vendor}\"
for soc in ${socs}; do
  mkdir -p \"\$v/op_impl/ai_core/tbe/config/\$soc\" \"\$v/scripts\"
  json='{'; sep=''
  for op in ${ops}; do
    if [ \"\$op\" != \"\${STUB_DROP_OP:-}\" ]; then json=\"\$json\$sep\\\"\$op\\\": {}\"; sep=', '; fi
  done
  echo \"\$json}\" > \"\$v/op_impl/ai_core/tbe/config/\$soc/aic-\$soc-ops-info.json\"
done
printf '#!/bin/bash\\necho %s >> \"%s/uninstall.log\"\\nrm -rf \"%s\"\\n' ${vendor} \"\$dest\" \"\$v\" \\
  > \"\$v/scripts/uninstall.sh\"
echo \"${vendor} \$*\" >> \"\$dest/install.log\"
")
endfunction()
function(npu_op_package_add name)
  _stub_log(npu_op_package_add ${name} ${ARGN})
endfunction()
'''


@pytest.fixture
def stub_cann(tmp_path):
    cann = tmp_path / "cann"
    mod = cann / "compiler" / "tikcpp" / "ascendc_kernel_cmake"
    mod.mkdir(parents=True)
    (mod / "ASCConfig.cmake").write_text(STUB_ASC)
    return cann


def _calls(build_root, family):
    return [ln.split() for ln in (build_root / family / "build" / "stub_calls.txt").read_text().splitlines()]


SHARED_KERNEL = os.path.join(ROOT, "ops", "ascendc_common", "op_kernel")


def _check_staged_kernels(staged, own):
    """The kernel directory the package is built from (and ships as source): the family's op_kernel/ sources plus
    the shared kernel headers, unchanged, and every header a kernel includes is in it (the stand-in declarations
    are included only under AV4_ASCENDC_STANDIN, never in a CANN build)."""
    want = {f: os.path.join(own, f) for f in os.listdir(own) if f.endswith((".h", ".cpp"))}
    want.update({f: os.path.join(SHARED_KERNEL, f) for f in os.listdir(SHARED_KERNEL) if f.endswith(".h")})
    assert sorted(os.listdir(staged)) == sorted(want)
    for f, src in want.items():
        text = _read(staged / f)
        assert text == _read(src), f
        for inc in re.findall(r'^\s*#\s*include\s*"([^"]+)"', text, re.M):
            assert inc == "kernel_operator.h" or inc in want or re.fullmatch(r"decls_\w+\.h", inc), (f, inc)


def test_shared_kernel_headers_are_used_and_shadow_nothing():
    """ops/ascendc_common/op_kernel/ holds only headers the families' kernels include, none shadowing a family's"""
    shared = sorted(f for f in os.listdir(SHARED_KERNEL) if f.endswith(".h"))
    assert shared and sorted(os.listdir(SHARED_KERNEL)) == shared
    used = set()
    for family in FAMILIES:
        kdir = os.path.join(_fam_dir(family), "op_kernel")
        assert not set(shared) & set(os.listdir(kdir)), family
        for f in glob.glob(os.path.join(kdir, "*.*")):
            used |= set(re.findall(r'#\s*include\s*"(\w+\.h)"', _read(f))) & set(shared)
    assert used == set(shared)


@needs_cmake
def test_driver_end_to_end_with_stub_asc_package(tmp_path, stub_cann):
    build_root, opp = tmp_path / "out", tmp_path / "opp"
    kw = dict(ASCEND_HOME_PATH=str(stub_cann), AV4_OPP_BUILD_ROOT=str(build_root), PYTHON=sys.executable)
    for attempt in (1, 2):                                   # the second run replaces the first install
        res = _drive(["all", "--soc", "ascend910b,ascend910_93", "--jobs", "1", "--install", str(opp)], tmp_path, **kw)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (opp / "install.log").read_text().count("--install-path=") == 2 * len(FAMILIES)
    assert sorted((opp / "uninstall.log").read_text().split()) == sorted(pkg.vendor_name(f) for f in FAMILIES)
    export = [ln for ln in res.stdout.splitlines() if "export ASCEND_CUSTOM_OPP_PATH=" in ln][0]
    value = export.split("=", 1)[1]
    assert value.endswith(":${ASCEND_CUSTOM_OPP_PATH:-}")
    dirs = value[:-len(":${ASCEND_CUSTOM_OPP_PATH:-}")].split(":")
    assert dirs == [str(opp / "vendors" / pkg.vendor_name(f)) for f in FAMILIES]
    for family in FAMILIES:
        _, ops, _ = binding(family)
        # what the bindings' package_installed() will see, through the printed ASCEND_CUSTOM_OPP_PATH
        assert pkg.find_ops_info(dirs, ops) is not None
        for soc in ("ascend910b", "ascend910_93"):
            assert os.path.isfile(opp / "vendors" / pkg.vendor_name(family) / "op_impl" / "ai_core" / "tbe" / "config"
                                  / soc / f"aic-{soc}-ops-info.json")
        assert len(glob.glob(str(build_root / family / "build_out" / "custom_opp_*.run"))) == 1
        calls = _calls(build_root, family)
        fdir = _fam_dir(family)
        assert calls[0][:2] == ["npu_op_package", pkg.vendor_name(family)] and "RUN" in calls[0]
        gen = calls[1]
        assert gen[0] == "npu_op_code_gen"
        assert gen[gen.index("SRC") + 1:gen.index("PACKAGE")] == host_sources(family)
        libs = {c[1]: c[2] for c in calls if c[0] == "npu_op_library"}
        assert libs == {"cust_opapi": "ACLNN", "cust_op_proto": "GRAPH", "cust_optiling": "TILING"}
        kernels = [c for c in calls if c[0] == "npu_op_kernel_sources"]
        assert [(c[c.index("OP_TYPE") + 1], c[c.index("KERNEL_FILE") + 1]) for c in kernels] == kernel_pairs(family)
        assert all(c[c.index("KERNEL_DIR") + 1] == "op_kernel" for c in kernels)
        lib = [c for c in calls if c[0] == "npu_op_kernel_library"][0]
        stage = build_root / family / "build" / "kernel_src"
        assert lib[lib.index("SRC_BASE") + 1].rstrip("/") == str(stage)
        _check_staged_kernels(stage / "op_kernel", os.path.join(fdir, "op_kernel"))
        assert lib[lib.index("TILING_LIBRARY") + 1] == "cust_optiling"
        added = {w for c in calls if c[0] == "npu_op_package_add" for w in c[3:]}
        assert added == {"cust_optiling", "cust_opapi", "cust_op_proto", "ascendc_kernels"}
        cache = (build_root / family / "build" / "CMakeCache.txt").read_text()
        assert "ASCEND_COMPUTE_UNIT:STRING=ascend910b;ascend910_93" in cache


@needs_cmake
def test_driver_default_install_and_incomplete_package(tmp_path, stub_cann):
    build_root, opp = tmp_path / "out", tmp_path / "cann-opp"
    (opp / "vendors").mkdir(parents=True)
    kw = dict(ASCEND_HOME_PATH=str(stub_cann), ASCEND_OPP_PATH=str(opp), AV4_OPP_BUILD_ROOT=str(build_root),
              PYTHON=sys.executable)
    res = _drive(["moe", "--soc", "ascend910_93", "--install"], tmp_path, **kw)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (opp / "install.log").read_text().split() == ["ascend_v4_moe", "--quiet"]      # no --install-path
    assert "default vendors dir" in res.stdout
    assert os.path.isfile(opp / "vendors" / "ascend_v4_moe" / "op_impl" / "ai_core" / "tbe" / "config" / "ascend910_93"
                          / "aic-ascend910_93-ops-info.json")
    # an installed package that lacks an op type the binding calls fails the build step (exit 1, one line)
    res = _drive(["moe", "--install", str(tmp_path / "o2")], tmp_path, STUB_DROP_OP="GroupedMatmulAv4", **kw)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    assert "does not declare all of" in res.stderr.splitlines()[-1] and "GroupedMatmulAv4" in res.stderr
