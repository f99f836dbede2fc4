#!/usr/bin/env python3
"""Compile every AscendC kernel (op_kernel) and host (op_host) source of the project with plain g++ against the REAL
open-source CANN headers -- no toolkit, no NPU. See docs/ascendc.md ("Compile check against the real headers").

  python ops/ascendc_common/real_headers_check.py [--dtypes float,half,bfloat16_t] [--kernels-only|--host-only]
                                                  [--jobs N] [--no-cache] [--verbose] [FILE ...]
  python ops/ascendc_common/real_headers_check.py --setup      # populate the tree cache, then exit

Trees (public; read, never copied into the repository), looked up in this order:
  $AV4_ASCENDC_TREES/{asc-devkit,asc-tools,metadef,ge}            extracted trees
  ~/.cache/ascend-v4/ascendc-trees/{...}                          the default cache
  $AV4_ASCENDC_MIRROR/<owner>+<name>/repo (default /work/.mirror)  bare git mirrors: extracted into the cache
  --setup --clone: git clone --depth 1 from github.com into the cache
  mirror-cann/asc-devkit (AscendC API: include/, impl/), hicann/asc-tools (cpudebug/include: the open part of the
  CPU-debug mode), hicann/metadef (host: register/op_def_registry.h, exe_graph/runtime), hicann/ge (graph/*.h).

Kernels compile in the headers' own CPU-debug mode (ASCENDC_CPU_DEBUG, dav-c220 = 910B/910C), AIV or AIC as the
source declares, once per dtype for every DTYPE_* macro it uses. Generated here, in the cache, never in the repo:
kernel_tiling/kernel_tiling.h (asc-devkit's own generator script), the lib/ and tiling/ include overlays a CANN
install creates (from asc-devkit's cmake link lists), the op-build prelude (GET_TILING_DATA_WITH_STRUCT), and a
stand-in for CANN's closed, generated stub_fun.h: the CCE handle enums plus one catch-all declaration per intrinsic.
The intrinsic names are learnt from the headers themselves: a name g++ reports undeclared *inside* asc-devkit is an
intrinsic the stand-in lacks (never a kernel error); the learnt list is kept in the cache.
Host sources get metadef + ge + asc-devkit's platform / tiling headers, securec.h from the MindSpore wheel (or
$AV4_SECUREC_DIR) and an empty stand-in for the closed platform/soc_spec.h.

Prints `PASS|FAIL <file> [dtype core] errors=N`, exit 0 when all pass, 1 when any fails, 2 when the trees or g++
are missing (`error: ...` names the fix). A pass is cached by the hash of the source, its own headers, the flags
and the tree commits, so unchanged sources are not recompiled.
"""
import argparse
import concurrent.futures
import fcntl
import functools
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OPS = os.path.dirname(HERE)
# headers every family's kernels may include (pipe_sync.h, cube_tiles.h, stream_rows.h): CMake stages them next to each family's
# op_kernel/ sources (cmake/av4_opp.cmake av4_opp_kernels); here they are one more include directory
SHARED_KERNEL = os.path.join(HERE, "op_kernel")
TREES = {"asc-devkit": "mirror-cann/asc-devkit", "asc-tools": "hicann/asc-tools", "metadef": "hicann/metadef",
         "ge": "hicann/ge"}
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "ascend-v4", "ascendc-trees")
VERSION = "1"       # bump when the flags or generated headers change (invalidates cached passes)


class SetupError(Exception):
    pass


# ------------------------------------------------------------------------------------------------ the trees
def cache_dir():
    return os.environ.get("AV4_ASCENDC_TREES") or DEFAULT_CACHE


def generated_dir(root=None):
    """this checkout's build products under the shared trees: two checkouts building at once never share a binary"""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(root or cache_dir(), "_generated", hashlib.sha1(here.encode()).hexdigest()[:10])


def _complete(root):
    return all(os.path.isdir(os.path.join(root, t)) for t in TREES)


def find_trees():
    """the directory holding the four extracted trees, or None"""
    root = cache_dir()
    return root if _complete(root) else None


def setup_trees(clone=False, log=print):
    root = cache_dir()
    os.makedirs(root, exist_ok=True)
    mirror = os.environ.get("AV4_ASCENDC_MIRROR", "/work/.mirror")
    for tree, repo in TREES.items():
        dst = os.path.join(root, tree)
        if os.path.isdir(dst):
            continue
        tmp = dst + ".part"
        shutil.rmtree(tmp, ignore_errors=True)
        gitdir = os.path.join(mirror, repo.replace("/", "+"), "repo")
        if os.path.isdir(gitdir):
            log(f"extracting {repo} from {gitdir}")
            os.makedirs(tmp)
            commit = subprocess.run(["git", "--git-dir", gitdir, "rev-parse", "HEAD"], capture_output=True,
                                    text=True, check=True).stdout.strip()
            archive = subprocess.Popen(["git", "--git-dir", gitdir, "archive", "HEAD"], stdout=subprocess.PIPE)
            subprocess.run(["tar", "-x", "-C", tmp], stdin=archive.stdout, check=True)
            if archive.wait() != 0:
                raise SetupError(f"git archive of {gitdir} failed")
        elif clone:
            log(f"cloning https://github.com/{repo}")
            r = subprocess.run(["git", "clone", "-q", "--depth", "1", f"https://github.com/{repo}", tmp],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise SetupError(f"git clone of {repo} failed: {r.stderr.strip()[-300:]}")
            commit = subprocess.run(["git", "-C", tmp, "rev-parse", "HEAD"], capture_output=True, text=True,
                                    check=True).stdout.strip()
            shutil.rmtree(os.path.join(tmp, ".git"), ignore_errors=True)
        else:
            raise SetupError(f"{tree} is not in {root} and no mirror at {gitdir}: run with --setup --clone "
                             f"(needs network) or set AV4_ASCENDC_TREES to a directory holding {', '.join(TREES)}")
        with open(os.path.join(tmp, ".commit"), "w") as f:
            f.write(commit + "\n")
        os.rename(tmp, dst)
    return root


def tree_commits(root):
    out = {}
    for t in TREES:
        p = os.path.join(root, t, ".commit")
        out[t] = open(p).read().strip() if os.path.exists(p) else "unknown"
    return out


# ------------------------------------------------------------------------------------- generated headers
CCE_ENUMS = """\
// GENERATED by ops/ascendc_common/real_headers_check.py: stand-in for CANN's closed, generated cpudebug stub_fun.h.
// Declarations only (syntax checks). The CCE handle enums with the enumerators the asc-devkit headers name, then one
// catch-all template per intrinsic the headers call (names learnt from the headers).
#pragma once
#include <cstddef>
#include <cstdint>
struct __av4_any_t { template <class T> operator T() const { return T(); } };
typedef enum { PIPE_S = 0, PIPE_V, PIPE_M, PIPE_MTE1, PIPE_MTE2, PIPE_MTE3, PIPE_ALL, PIPE_MTE4, PIPE_MTE5, PIPE_V2,
               PIPE_FIX } pipe_t;
typedef enum { EVENT_ID0 = 0, EVENT_ID1, EVENT_ID2, EVENT_ID3, EVENT_ID4, EVENT_ID5, EVENT_ID6, EVENT_ID7 } event_t;
typedef enum { VA0 = 0, VA1, VA2, VA3, VA4, VA5, VA6, VA7 } ub_addr8_t;
typedef enum { L128 = 0, H128 } __av4_half_sel_t;
typedef int mem_t;
typedef int mem_dsb_t;
typedef int atomic_op_t;
typedef int atomic_type_t;
typedef enum { inc = 0, dec } addr_cal_mode_t;
typedef enum { PAD_NONE = 0, PAD_MODE1, PAD_MODE2, PAD_MODE3, PAD_MODE4, PAD_MODE5 } pad_t;
typedef enum { ENTIRE_DATA_CACHE = 0, SINGLE_CACHE_LINE } cache_line_t;
typedef enum { CACHELINE_ALL = 0, CACHELINE_UB, CACHELINE_OUT, CACHELINE_ATOMIC } dcci_dst_t;
typedef enum { VALUE_INDEX = 0, INDEX_VALUE, ONLY_VALUE, ONLY_INDEX } Order_t;
"""
SCALAR_INTRINSICS = re.compile(r"^(get_\w+|sff\w*|sbitset\w*|bcnt\w*|clz|sflbits|ld_dev)$")

OPC_PRELUDE = """\
// GENERATED: what the op build wraps around a kernel source (dynamic-shape tiling accessors of get_op_tiling.py).
#pragma once
#include "kernel_operator.h"
#include <cstring>
#define REGISTER_TILINGDATA_SIZE(tiling_struct, counter)
template <class T>
inline __aicore__ void InitTilingData(const __gm__ uint8_t* p, T* t) { memcpy((void*)t, (const void*)p, sizeof(T)); }
#define GET_TILING_DATA_WITH_STRUCT(tiling_struct, tiling_data, tiling_arg) \\
  REGISTER_TILINGDATA_SIZE(tiling_struct, __COUNTER__); tiling_struct tiling_data; \\
  InitTilingData<tiling_struct>(tiling_arg, &tiling_data)
"""


class Workspace:
    def __init__(self, root):
        self.root = root
        self.A = os.path.join(root, "asc-devkit")
        self.T = os.path.join(root, "asc-tools")
        self.M = os.path.join(root, "metadef")
        self.G = os.path.join(root, "ge")
        self.gen = generated_dir(root)
        self.names_file = os.path.join(self.gen, "intrinsics.txt")
        self.results_file = os.path.join(self.gen, "passes.json")
        for sub in ("shim", "gen/kernel_tiling", "host_shim/platform", "logs"):
            os.makedirs(os.path.join(self.gen, sub), exist_ok=True)
        self._generate()

    def _generate(self):
        kt = os.path.join(self.gen, "gen", "kernel_tiling", "kernel_tiling.h")
        if not os.path.exists(kt):
            script = os.path.join(self.A, "impl", "adv_api", "cmake", "scripts", "gen_kernel_tiling_data_def.py")
            r = subprocess.run([sys.executable, script, os.path.join(self.A, "include", "adv_api"), kt],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise SetupError(f"kernel_tiling.h generation failed: {r.stderr[-300:]}")
        with open(os.path.join(self.gen, "gen", "opc_prelude.h"), "w") as f:
            f.write(OPC_PRELUDE)
        self._install_overlay()
        soc = os.path.join(self.gen, "host_shim", "platform", "soc_spec.h")
        if not os.path.exists(soc):
            with open(soc, "w") as f:   # closed header; platform_ascendc.h only needs it to exist
                f.write("// GENERATED stand-in for the closed platform/soc_spec.h\n#pragma once\n#include <cstdint>\n")
        if not os.path.exists(self.names_file):
            open(self.names_file, "w").close()
        self.write_shim()

    def _install_overlay(self):
        """the include layout a CANN install creates: asc/include/adv_api (+ links), asc/include/tiling, lib/"""
        inst = os.path.join(self.gen, "install")
        if os.path.isdir(inst):
            return
        tmp = inst + ".part"
        shutil.rmtree(tmp, ignore_errors=True)
        adv = os.path.join(tmp, "asc", "include", "adv_api")
        src_adv = os.path.join(self.A, "include", "adv_api")
        for d, _, files in os.walk(src_adv):
            rel = os.path.relpath(d, src_adv)
            os.makedirs(os.path.join(adv, rel), exist_ok=True)
            for fn in files:
                os.symlink(os.path.join(d, fn), os.path.join(adv, rel, fn))
        os.symlink(os.path.join(self.A, "impl"), os.path.join(tmp, "asc", "impl"))
        for cm in ("kernel_headers.cmake", "tiling_headers.cmake"):
            text = " ".join(open(os.path.join(self.A, "impl", "adv_api", "cmake", cm)).read().split())
            for src, dst in re.findall(r"CREATE_LINK (\S+) \$\{ASCENDC_INSTALL_BASE_PATH\}/(asc/include/\S+)", text):
                link = os.path.join(tmp, dst)
                os.makedirs(os.path.dirname(link), exist_ok=True)
                if not os.path.lexists(link):
                    os.symlink(src, link)
        os.makedirs(os.path.join(tmp, "kinc"))
        os.symlink(os.path.join("..", "asc", "include", "adv_api"), os.path.join(tmp, "kinc", "lib"))
        os.rename(tmp, inst)

    def emu_shim(self):
        """stub_fun.h of the CPU emulator: the handle enums, the emulated intrinsics (emu/emu_intrinsics.h) and, for
        every other intrinsic the headers name, a definition that stops the run naming it"""
        emu_h = os.path.join(HERE, "emu", "emu_intrinsics.h")
        text = open(emu_h).read()
        done = set(re.findall(r"^inline\s+(?:void|int64_t)\s+(\w+)\s*\(", text, re.M))
        done |= set(re.findall(r"^\s*inline\s+(?:void|int64_t)\s+(\w+)\s*\(", text, re.M))
        done |= set(re.findall(r"^AV4_EMU_(?:BINARY|SCALAR|UNARY|ND2NZ)\((\w+)[,)]", text, re.M))
        for b in re.findall(r"^AV4_EMU_COPY_ALIGN\((\d+)\)", text, re.M):
            done |= {f"copy_gm_to_ubuf_align_b{b}", f"copy_ubuf_to_gm_align_b{b}"}
        shim = self.shim_text(skip=done, abort=True) + f'\n#include "{emu_h}"\n'
        d = os.path.join(self.gen, "emu_shim")
        os.makedirs(d, exist_ok=True)
        # the CPU-debug library's API parameter checks (declared in asc-devkit, defined in closed code): the
        # emulator checks what it executes instead, so each one accepts
        checks = ["// GENERATED: accepting definitions of asc-devkit's CPU-debug API checks", "namespace AscendC {",
                  "namespace check {"]
        seen = set()
        for hp in sorted(glob.glob(os.path.join(self.A, "impl", "basic_api", "utils", "kernel_check_*_util.h"))):
            for ret, name, params in re.findall(r"^\s*(bool|void)\s+(Check\w+)\s*\(([^;{]*?)\)\s*;",
                                                open(hp).read(), re.M):
                sig = (name, " ".join(params.split()))
                if sig in seen:
                    continue
                seen.add(sig)
                checks.append(f"{ret} {name}({sig[1]}) {{ {'return true; ' if ret == 'bool' else ''}}}")
        checks += ["}  // namespace check", "}  // namespace AscendC", ""]
        with open(os.path.join(d, "emu_checks.h"), "w") as f:
            f.write("\n".join(checks))
        path = os.path.join(d, "stub_fun.h")
        if not os.path.exists(path) or open(path).read() != shim:
            with open(path, "w") as f:
                f.write(shim)
        return d

    def names(self):
        return sorted({n.strip() for n in open(self.names_file) if n.strip()})

    def write_shim(self):
        text = self.shim_text()
        path = os.path.join(self.gen, "shim", "stub_fun.h")
        if not os.path.exists(path) or open(path).read() != text:
            with open(path, "w") as f:
                f.write(text)

    def shim_text(self, skip=(), abort=False):
        qm_file = os.path.join(self.gen, "quantmode.txt")   # enumerators the headers name (scanned once)
        if not os.path.exists(qm_file):
            qm = set()
            for base in (os.path.join(self.A, "impl"), os.path.join(self.A, "include")):
                for p in glob.glob(os.path.join(base, "**", "*.h"), recursive=True):
                    qm |= set(re.findall(r"\bQuantMode_t::(\w+)", open(p, errors="replace").read()))
            qm.discard("NoQuant")
            with open(qm_file + ".tmp", "w") as f:
                f.write("\n".join(sorted(qm)) + "\n")
            os.replace(qm_file + ".tmp", qm_file)
        qm = {q.strip() for q in open(qm_file) if q.strip()}
        lines = [CCE_ENUMS, "typedef enum { NoQuant = 0" + "".join(f", {q}" for q in sorted(qm)) + " } QuantMode_t;"]
        if abort:
            lines.append("[[noreturn]] void av4_emu_unemulated(const char* name);")
        for n in self.names():
            if n in skip:
                continue
            # AscendC*/PingPong* are the CPU-debug framework's bookkeeping hooks, not hardware: no-ops
            body = f'av4_emu_unemulated("{n}"); ' if abort and not re.match(r"AscendC|PingPong", n) else ""
            if SCALAR_INTRINSICS.match(n):
                lines.append(f"template <class... A> inline int64_t {n}(A&&...) {{ {body}return 0; }}")
            elif n.startswith("conv_"):
                lines.append(f"template <class... A> inline __av4_any_t {n}(A&&...) {{ {body}return {{}}; }}")
            else:
                lines.append(f"template <class... A> inline void {n}(A&&...) {{ {body}}}")
        return "\n".join(lines) + "\n"

    def learn(self, log_text):
        """intrinsic names g++ reported undeclared inside asc-devkit; True if any was new"""
        known = set(self.names())
        new = set()
        pat = re.compile(r"^([^:\s]+):(\d+):\d+: error: (?:'(\w+)' was not declared in this "
                         r"scope|there are no arguments to '(\w+)')", re.M)
        real_a = os.path.realpath(self.A) + os.sep
        for m in pat.finditer(log_text):
            name = m.group(3) or m.group(4)
            if name in known or name in new or not os.path.realpath(m.group(1)).startswith(real_a):
                continue
            src = open(m.group(1), errors="replace").read().splitlines()
            line = " ".join(src[int(m.group(2)) - 1:int(m.group(2)) + 1])
            if re.search(r"\b" + name + r"\s*(<[^;]*>\s*)?\(", line):
                new.add(name)
        if new:
            with open(self.names_file, "a") as f:
                f.writelines(n + "\n" for n in sorted(new))
            self.write_shim()
        return bool(new)

    # -------------------------------------------------------------------------------------------- commands
    def kernel_cmd(self, cxx, path, dtype, core):
        A, g = self.A, self.gen
        inc = [f"-I{g}/shim", "-isystem", f"{self.T}/cpudebug/include"] + [
            f"-I{A}/{d}" for d in ("", "impl", "impl/basic_api", "impl/basic_api/reg_compute", "impl/simt_api",
                                   "impl/c_api", "include", "include/basic_api", "include/simt_api",
                                   "include/simt_api/cpp", "include/basic_api/reg_compute", "include/c_api",
                                   "include/utils")] + [f"-I{g}/gen", f"-I{g}/install/kinc", f"-I{SHARED_KERNEL}"]
        defs = ["-D__CCE_KT_TEST__=1", "-D__CCE_AICORE__=220", "-D__NPU_ARCH__=2201", "-DASCENDC_CPU_DEBUG=1",
                "-D__DAV_C220__"]
        # AIV / AIC: one core's pass of the compiler; MIX: neither split macro (both sides' intrinsics and event
        # cases compiled in, the core type read at run time) -- the emulator binary of a mixed AIC/AIV kernel
        if core == "AIV":
            defs += ["-D__DAV_C220_VEC__", "-D__DAV_VEC__"]
        elif core == "AIC":
            defs += ["-D__DAV_C220_CUBE__", "-D__DAV_CUBE__"]
        text = open(path).read()
        defs += [f"-D{m}={dtype}" for m in sorted(set(re.findall(r"\bDTYPE_[A-Z0-9_]+", text)))]
        return [cxx, "-x", "c++", "-std=c++17", "-fsyntax-only", "-w", "-fmax-errors=0", *inc, *defs,
                "-include", f"{g}/gen/opc_prelude.h", path]

    def host_cmd(self, cxx, path):
        M, A, G, g = self.M, self.A, self.G, self.gen
        securec = os.environ.get("AV4_SECUREC_DIR") or _securec_dir()
        if not securec:
            raise SetupError("securec.h not found: install the project's .venv (MindSpore ships it) or set "
                             "AV4_SECUREC_DIR to a directory holding securec.h (libboundscheck)")
        inc = [f"-I{M}/inc/external", f"-I{M}/inc/external/asc", f"-I{M}/inc", f"-I{M}/base", f"-I{M}/pkg_inc",
               f"-I{A}/include/utils", f"-I{g}/install/asc/include", f"-I{A}/include/adv_api", f"-I{A}/include",
               f"-I{A}/impl/adv_api", f"-I{G}/inc/graph_metadef/external", f"-I{G}/inc/graph_metadef",
               f"-I{G}/inc/external", f"-I{securec}", f"-I{g}/host_shim", f"-I{g}/gen"]
        return [cxx, "-x", "c++", "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-fmax-errors=0", *inc, path]


@functools.lru_cache(maxsize=1)
def _securec_dir():
    for base in [sys.prefix] + sys.path:
        hits = glob.glob(os.path.join(base, "**", "mindspore", "include", "third_party", "include", "securec.h"),
                         recursive=True) if base == sys.prefix else \
            glob.glob(os.path.join(base, "mindspore", "include", "third_party", "include", "securec.h"))
        if hits:
            return os.path.dirname(hits[0])
    return None


# ----------------------------------------------------------------------------------------------- the sources
def kernel_sources(ops_dir=OPS):
    return sorted(glob.glob(os.path.join(ops_dir, "*", "ascendc", "op_kernel", "*.cpp")))


def host_sources(ops_dir=OPS):
    return sorted(glob.glob(os.path.join(ops_dir, "*", "ascendc", "op_host", "*.cpp")))


def cores_of(path):
    text = open(path).read()
    if "KERNEL_TYPE_AIC_ONLY" in text:
        return ["AIC"]
    if "KERNEL_TYPE_MIX" in text:
        return ["AIV", "AIC"]
    return ["AIV"]


def _digest(path, cmd, commits):
    h = hashlib.sha256((VERSION + json.dumps(commits, sort_keys=True) + os.path.basename(cmd[0]) +
                        " ".join(cmd[1:-1])).encode())
    d = os.path.dirname(path)
    for p in sorted(glob.glob(os.path.join(d, "*")) + glob.glob(os.path.join(os.path.dirname(d), "*", "*.h")) +
                    glob.glob(os.path.join(SHARED_KERNEL, "*.h"))):
        if os.path.isfile(p):
            h.update(p.encode())
            h.update(open(p, "rb").read())
    return h.hexdigest()


def _exclusive(fn):
    """Run fn holding this checkout's build lock: test processes running side by side (pytest -n 2) share the
    generated workspace (shim headers the builds learn, emulator binaries), so one builds at a time."""
    @functools.wraps(fn)
    def locked(*args, **kwargs):
        d = generated_dir()
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, ".build.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return fn(*args, **kwargs)
    return locked


@_exclusive
def run(files, dtypes, cxx="g++", use_cache=True, jobs=1, verbose=False, log=print):
    """compile the given sources; returns [(label, ok, nerrors, first_error)]"""
    root = find_trees()
    if root is None:
        raise SetupError(f"the CANN source trees are not in {cache_dir()}: run "
                         f"`python ops/ascendc_common/real_headers_check.py --setup` (extracts the fetched mirrors "
                         f"or, with --clone, clones github.com/{{{','.join(TREES.values())}}})")
    if shutil.which(cxx) is None:
        raise SetupError(f"{cxx} not found: install g++ (apt-get install g++) or set CXX")
    ws = Workspace(root)
    commits = tree_commits(root)
    passes = json.load(open(ws.results_file)) if use_cache and os.path.exists(ws.results_file) else {}
    jobs_list = []
    for path in files:
        if "/op_kernel/" in path:
            for dt in dtypes:
                for core in cores_of(path):
                    jobs_list.append((path, dt, core))
        else:
            jobs_list.append((path, None, None))

    def one(job):
        path, dt, core = job
        label = os.path.relpath(path, os.path.dirname(OPS)) + (f" dtype={dt} core={core}" if dt else "")
        for attempt in range(8):
            cmd = ws.kernel_cmd(cxx, path, dt, core) if dt else ws.host_cmd(cxx, path)
            key = _digest(path, cmd, commits)   # learnt intrinsic names only add declarations: not part of the key
            if passes.get(label) == key:
                return label, True, 0, "(cached)"
            r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, LC_ALL="C"))
            out = r.stderr
            errors = [ln for ln in out.splitlines() if ": error:" in ln or ": fatal error:" in ln]
            if dt and errors and ws.learn(out):
                continue                        # the stand-in lacked intrinsics: retry with them declared
            break
        logfile = os.path.join(ws.gen, "logs", re.sub(r"[^\w.=-]+", "_", label) + ".log")
        with open(logfile, "w") as f:
            f.write(out)
        ok = r.returncode == 0 and not errors
        if ok:
            passes[label] = key
        if verbose and errors:
            log("\n".join("      " + e for e in errors[:40]))
        return label, ok, len(errors), (errors[0][:240] if errors else "")

    results = []
    # intrinsic learning rewrites the shared stand-in: run kernels one by one, host sources in parallel
    kernel_jobs = [j for j in jobs_list if j[1]]
    host_jobs = [j for j in jobs_list if not j[1]]
    for job in kernel_jobs:
        res = one(job)
        results.append(res)
        log(("PASS  " if res[1] else "FAIL  ") + f"{res[0]}  errors={res[2]}  {res[3]}".rstrip())
    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as ex:
        for res in ex.map(one, host_jobs):
            results.append(res)
            log(("PASS  " if res[1] else "FAIL  ") + f"{res[0]}  errors={res[2]}  {res[3]}".rstrip())
    if use_cache:
        with open(ws.results_file + ".tmp", "w") as f:
            json.dump(passes, f, indent=0, sort_keys=True)
        os.replace(ws.results_file + ".tmp", ws.results_file)
    return results


@_exclusive
def build_emulator(driver, defines, exe, cxx="g++", core="AIV"):
    """compile a kernel driver (includes op_kernel sources + emu/emu_runtime.h) into an executable that runs the
    kernel bodies on the CPU through the intrinsic emulator; rebuilt only when a source it depends on changed"""
    root = find_trees()
    if root is None:
        raise SetupError(f"the CANN source trees are not in {cache_dir()}: run "
                         "`python ops/ascendc_common/real_headers_check.py --setup`")
    ws = Workspace(root)
    emu_dir = ws.emu_shim()
    cmd = ws.kernel_cmd(cxx, driver, "float", core)
    cmd = [c for c in cmd if c not in ("-fsyntax-only", "-w") and not c.startswith("-DDTYPE_")]
    cmd = [c if c != f"-I{ws.gen}/shim" else f"-I{emu_dir}" for c in cmd]
    cmd = cmd[:-1] + [f"-D{d}" for d in defines] + [f"-I{os.path.join(HERE, 'emu')}", "-O1", "-w", "-o", exe,
                                                     driver]
    h = hashlib.sha256((" ".join([os.path.basename(cmd[0])] + cmd[1:]) + json.dumps(tree_commits(root))).encode())
    for p in sorted(glob.glob(os.path.join(HERE, "emu", "*")) + glob.glob(os.path.join(SHARED_KERNEL, "*.h")) +
                    [driver] +
                    glob.glob(os.path.join(os.path.dirname(os.path.dirname(driver)), "*", "*.*")) +
                    [os.path.join(emu_dir, "stub_fun.h")]):
        if os.path.isfile(p):
            h.update(open(p, "rb").read())
    stamp = exe + ".sha256"
    if os.path.exists(exe) and os.path.exists(stamp) and open(stamp).read() == h.hexdigest():
        return exe
    # an intrinsic the headers call that no syntax check has met yet (names are learnt per dtype and core type)
    # gets its stopping definition in the emulator's stub_fun.h, then the build is tried again
    for _ in range(4):
        r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, LC_ALL="C"))
        if r.returncode == 0 or not ws.learn(r.stderr):
            break
        ws.emu_shim()
    if r.returncode != 0:
        raise RuntimeError("emulator build failed:\n" + "\n".join(r.stderr.splitlines()[:60]))
    with open(stamp, "w") as f:
        f.write(h.hexdigest())
    return exe


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help="sources to check (default: every op_kernel and op_host .cpp)")
    ap.add_argument("--dtypes", default="float,half,bfloat16_t")
    ap.add_argument("--kernels-only", action="store_true")
    ap.add_argument("--host-only", action="store_true")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--setup", action="store_true", help="populate the tree cache and exit")
    ap.add_argument("--clone", action="store_true", help="with --setup: clone from github.com when no mirror")
    a = ap.parse_args(argv)
    try:
        if a.setup:
            root = setup_trees(clone=a.clone)
            Workspace(root)
            print(f"trees ready in {root}: " + ", ".join(f"{k}@{v[:9]}" for k, v in tree_commits(root).items()))
            return 0
        files = [os.path.abspath(f) for f in a.files]
        for f in files:
            if not os.path.isfile(f):
                raise SetupError(f"no such source: {f}")
        if not files:
            files = ([] if a.host_only else kernel_sources()) + ([] if a.kernels_only else host_sources())
        results = run(files, [d for d in a.dtypes.split(",") if d], cxx=os.environ.get("CXX", "g++"),
                      use_cache=not a.no_cache, jobs=a.jobs, verbose=a.verbose)
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bad = [r for r in results if not r[1]]
    print(f"summary: {len(results) - len(bad)}/{len(results)} passed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
