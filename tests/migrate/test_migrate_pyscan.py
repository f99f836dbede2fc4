"""Python scanner unit tests: alias resolution, what is and is not a finding, router heuristic."""
import textwrap

import pytest

from ascend_v4.tools.migrate import load_rules
from ascend_v4.tools.migrate.pyscan import scan_python


@pytest.fixture(scope="module")
def rules():
    return load_rules()


def scan(rules, src):
    scanner, err = scan_python(rules, "m.py", textwrap.dedent(src))
    assert err is None, err
    return [(f.line, f.rule_id, f.symbol) for f in scanner.findings]


def rule_ids(rules, src):
    return [r for _l, r, _s in scan(rules, src)]


@pytest.mark.parametrize("src, symbol", [
    ("import torch as th\nth.cuda.synchronize()\n", "torch.cuda.synchronize"),
    ("import torch\ntorch.cuda.synchronize()\n", "torch.cuda.synchronize"),
    ("import torch.cuda\ntorch.cuda.synchronize()\n", "torch.cuda.synchronize"),
    ("from torch.cuda import synchronize as sync\nsync()\n", "torch.cuda.synchronize"),
    ("def f():\n    import torch as T2\n    T2.cuda.synchronize()\n", "torch.cuda.synchronize"),
])
def test_alias_resolution_device_api(rules, src, symbol):
    found = [(r, s) for _l, r, s in scan(rules, src) if r == "torch-cuda-device-api"]
    assert found == [("torch-cuda-device-api", symbol)]


def test_from_torch_import_cuda(rules):
    out = scan(rules, "from torch import cuda\ncuda.empty_cache()\n")
    assert out == [(1, "torch-cuda-import", "torch.cuda"), (2, "torch-cuda-device-api", "torch.cuda.empty_cache")]


def test_triton_language_alias_outside_kernel(rules):
    out = scan(rules, "import triton.language as tl\nx = tl.cdiv(3, 2)\n")
    assert out == [(1, "triton-import", "triton.language"), (2, "triton-runtime", "triton.language.cdiv")]


def test_outermost_chain_only_and_prefix_specificity(rules):
    out = scan(rules, "import torch\ns = torch.cuda.Stream()\ntorch.cuda.Stream.wait_stream(s, s)\n")
    assert out == [(2, "torch-cuda-device-api", "torch.cuda.Stream"),
                   (3, "torch-cuda-device-api", "torch.cuda.Stream")]


def test_unresolved_names_are_not_findings(rules):
    src = """
        cuda = object()
        cuda.synchronize()          # a local called cuda is not torch.cuda
        class torch: pass
        def f(triton):
            return triton.jit
    """
    assert scan(rules, src) == []


def test_docstrings_comments_and_prose_strings_ignored(rules):
    src = '''
        """Runs on cuda with "nccl" -- module docstring."""
        def f():
            """cuda"""
            # x.cuda(); torch.cuda.synchronize()
            return "running on cuda devices"
    '''
    assert scan(rules, src) == []


def test_device_strings_and_fstrings(rules):
    src = """
        import torch
        a = torch.device("cuda")
        device = "cuda:1"
        c = x.to(f"cuda:{rank}")
        d = "cpu"
        e = "npu:0"
        g = "cudnn"
        b = "cuda:1"
        h = "cuda"
    """
    # 'cuda:N' is device syntax anywhere; a bare 'cuda' only in a device context
    assert rule_ids(rules, src) == ["device-string-cuda"] * 4 + ["device-string-cuda-uncertain"]


def _edits(rules, src):
    scanner, err = scan_python(rules, "m.py", textwrap.dedent(src))
    assert err is None, err
    return {(f.line, f.rule_id): bool(f.edits) for f in scanner.findings}


@pytest.mark.parametrize("line, certain", [
    ('y = torch.zeros(2, device="cuda")', True),
    ('y = torch.device("cuda:0")', True),
    ('y = x.to("cuda")', True),
    ('y = torch.autocast("cuda", dtype=torch.bfloat16)', True),
    ('y = torch.autocast(device_type="cuda")', True),
    ('y = torch.amp.GradScaler("cuda")', True),
    ('y = x.device.type == "cuda"', True),
    ('y = x.device.type in ("cuda", "cpu")', True),
    ('device = "cuda" if torch.cuda.is_available() else "cpu"', True),
    ('self.device = "cuda"', True),
    ('def f(device="cuda"): pass', True),
    ('parser.add_argument("--device", default="cuda")', True),
    ('cfg = {"device": "cuda"}', True),
    ('y = torch.load(p, map_location="cuda")', True),
    ('device, dtype = "cuda", torch.bfloat16', True),
    ('kwargs["device_type"] = "cuda"', True),
    ('name, kind = "cuda", "gpu"', False),
    ('if BUILD_TARGET == "cuda": pass', False),
    ('y = transport == "cuda"', False),
    ('y = describe("cuda")', False),
])
def test_device_contexts_decide_rewrite(rules, line, certain):
    out = _edits(rules, "import torch\n" + line + "\n")
    rid = "device-string-cuda" if certain else "device-string-cuda-uncertain"
    assert out.get((2, rid)) is certain, out


@pytest.mark.parametrize("line", [
    'setattr(torch.version, "cuda", "12.1")',
    'v = getattr(torch.version, "cuda")',
    'table = {"cuda": 1, "cpu": 2}',
    'n = counts["cuda"]',
])
def test_non_device_cuda_strings_not_reported(rules, line):
    assert [r for r in rule_ids(rules, "import torch\n" + line + "\n") if r.startswith("device-string")] == []


def test_nccl_only_rewritten_as_backend(rules):
    out = _edits(rules, """
        import torch.distributed as dist
        dist.init_process_group("nccl")
        backend = "nccl"
        kind = lookup("nccl")
        ok = dist.get_backend() == "nccl"
    """)
    assert out == {(3, "nccl-backend-string"): True, (4, "nccl-backend-string"): True,
                   (5, "nccl-string-uncertain"): False, (6, "nccl-backend-string"): True}


def test_surface_names_rename_and_others_do_not(rules):
    out = _edits(rules, """
        import torch
        a = torch.cuda.is_bf16_supported()
        b = torch.cuda.memory_stats()
        c = torch.cuda.get_rng_state_all()
        d = torch.cuda.amp.GradScaler()
        e = torch.cuda.get_arch_list()
    """)
    assert out == {(3, "torch-cuda-device-api"): True, (4, "torch-cuda-device-api"): True,
                   (5, "torch-cuda-device-api"): True, (6, "torch-cuda-amp-api"): True,
                   (7, "torch-cuda-other"): False}


def test_nccl_backend_variants(rules):
    src = """
        import torch.distributed as dist
        dist.init_process_group("nccl")
        dist.init_process_group(backend="cpu:gloo,cuda:nccl")
        dist.new_group(backend="gloo")
    """
    assert rule_ids(rules, src) == ["nccl-backend-string", "nccl-backend-string"]


def test_when_conditions(rules):
    src = """
        import torch
        from torch.utils.cpp_extension import load, load_inline
        a = torch.compile(m)
        b = torch.compile(m, mode="reduce-overhead")
        c = torch.compile(m, backend="inductor")
        d = load_inline(name="x", cpp_sources="")
        e = load_inline(name="x", cpp_sources="", cuda_sources="")
        f = load("x", ["a.cpp"])
        g = load("x", ["a.cpp", "k.cu"])
        t = x.to(0)
        u = x.to(dev)
    """
    assert rule_ids(rules, src) == [
        "torch-compile", "torch-compile-cudagraphs", "torch-compile-backend-cudagraphs",
        "cpp-ext-load-inline-cuda", "cpp-ext-load-cuda", "tensor-to-int-device",
    ]


def test_kernel_bodies_collapse_to_one_finding(rules):
    src = """
        import triton
        import triton.language as tl
        import tilelang
        import tilelang.language as T

        @triton.heuristics({"EVEN": lambda a: True})
        @triton.jit
        def k(x, BLOCK: tl.constexpr):
            y = tl.load(x).to(tl.float8e4nv)
            tl.store(x, "float8_e4m3fn")

        def outer(M):
            @T.prim_func
            def main(A: T.Tensor((M,), "float8_e4m3")):
                T.clear(A)
            return main
    """
    out = scan(rules, src)
    kernels = [(line, r, s) for line, r, s in out if r.endswith("-kernel")]
    assert kernels == [(7, "triton-kernel", "k"), (14, "tilelang-kernel", "main")]
    assert not any(r.startswith("fp8") for _l, r, _s in out)


def test_relative_import_of_reference_kernels(rules):
    src = "from .kernel import sparse_attn\nfrom ..inference import kernel as K\nsparse_attn(q)\nK.fp8_gemm(a)\n"
    assert rule_ids(rules, src) == ["v4-sparse-attn", "v4-fp8-gemm"]


def test_relative_import_named_cuda_is_not_a_cuda_library(rules):
    assert scan(rules, "from .cuda import helpers\nfrom . import cuda\n") == []


def test_amp_uses_fixed_by_import_rewrite_are_not_repeated(rules):
    src = """
        import torch
        from torch.cuda.amp import autocast
        with autocast():
            pass
        with torch.cuda.amp.autocast():
            pass
    """
    assert scan(rules, src) == [(3, "torch-cuda-amp-import", "torch.cuda.amp"),
                                (6, "torch-cuda-amp-api", "torch.cuda.amp.autocast")]


def test_fp8_dtypes(rules):
    src = "import torch\na = torch.float8_e4m3fn\nb = torch.float8_e5m2\nc = getattr(torch, 'float8_e4m3fn')\n"
    assert rule_ids(rules, src) == ["fp8-dtype", "fp8-dtype", "fp8-dtype-string"]


# ------------------------------------------------------------------------------------------ router
ROUTER_BAD = [
    """
    import torch.nn.functional as F
    from torch import nn
    class MoEGate(nn.Module):
        def forward(self, x):
            logits = F.linear(x, self.weight)
            return logits.softmax(-1).topk(2)
    """,
    """
    from torch import nn
    class TopKRouter(nn.Module):
        def forward(self, x):
            return (x @ self.weight.t()).topk(8)
    """,
    """
    import torch
    from torch import nn
    class MixtralSparseMoeBlock(nn.Module):
        def __init__(self):
            self.gate = nn.Linear(16, 8, bias=False)
        def forward(self, h):
            return torch.topk(self.gate(h), 2)
    """,
]
ROUTER_BAD.append("""
    import torch
    from torch import nn
    class MixtralSparseMoeBlock(nn.Module):   # input cast to a bf16 layer's dtype: still a bf16 GEMM
        def __init__(self):
            self.gate = nn.Linear(16, 8, bias=False)
        def forward(self, h):
            return torch.topk(self.gate(h.to(self.gate.weight.dtype)), 2)
    """)
ROUTER_OK = [
    """
    import torch
    import torch.nn.functional as F
    from torch import nn
    class MoEGate(nn.Module):
        def forward(self, x):
            logits = F.linear(x.type(torch.float32), self.weight.type(torch.float32), None)
            return logits.topk(2)
    """,
    """
    import torch
    from torch import nn
    class Gate(nn.Module):
        def forward(self, x):
            x = x.to(dtype=torch.float32)
            return torch.matmul(x, self.weight.float().t()).topk(2)
    """,
    """
    from torch import nn
    class SparseMoeBlock(nn.Module):
        def __init__(self):
            self.gate = MoEGate()         # custom gate class: analysed on its own
        def forward(self, h):
            return self.gate(h)
    """,
    """
    import torch
    from torch import nn
    class TopKRouter(nn.Module):
        def forward(self, h):
            return torch.mm(h, self.weight.t(), out_dtype=torch.float32).topk(2)
    """,
    """
    import torch
    from torch import nn
    class MixtralSparseMoeBlock(nn.Module):   # fp32 gate layer, input cast to its dtype
        def __init__(self):
            self.gate = nn.Linear(16, 8, bias=False, dtype=torch.float32)
        def forward(self, h):
            return torch.topk(self.gate(h.to(self.gate.weight.dtype)), 2)
    """,
    """
    import torch
    import torch.nn.functional as F
    from torch import nn
    class MoEGate(nn.Module):                 # fp32 parameter, input cast with type_as
        def __init__(self):
            self.weight = nn.Parameter(torch.empty(8, 16, dtype=torch.float32))
        def forward(self, x):
            return F.linear(x.type_as(self.weight), self.weight).topk(2)
    """,
    """
    from torch import nn
    class GatedMLP(nn.Module):            # 'Gated' is not a router
        def forward(self, x):
            return x @ self.w
    """,
]


@pytest.mark.parametrize("src", ROUTER_BAD)
def test_router_bf16_detected(rules, src):
    assert rule_ids(rules, src).count("router-bf16-gate") == 1


@pytest.mark.parametrize("src", ROUTER_OK)
def test_router_fp32_or_unrelated_not_flagged(rules, src):
    assert "router-bf16-gate" not in rule_ids(rules, src)


def test_non_ascii_columns(rules):
    src = "import torch\nx = ('é', torch.zeros(1).cuda())\n"
    scanner, err = scan_python(rules, "m.py", src)
    f = [f for f in scanner.findings if f.rule_id == "tensor-cuda-method"][0]
    e = f.edits[0]
    assert src.splitlines()[1][e.start:e.end] == "cuda"


def test_capability_queries_are_reported_not_renamed(rules):
    out = _edits(rules, """
        import torch
        hopper = torch.cuda.get_device_capability()[0] >= 9
        sms = torch.cuda.get_device_properties(0).multi_processor_count
    """)
    assert out == {(3, "torch-cuda-capability"): False, (4, "torch-cuda-capability"): False}
