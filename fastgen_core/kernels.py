"""CuPy RawKernels: loading, caching, launching on torch's stream, and the choice between kernel and reference.

The core's CUDA sources live in the repository's top-level ``kernels/`` folder (no Python package, so it never
shadows Hugging Face's ``kernels``), which the wheel carries as ``fastgen_core/_kernels/``; a plugin's live inside
its own package (``src/<package>/kernels/*.cu``). ``load(path)`` compiles one with NVRTC for the current GPU (once
per process and device; the core's folder is on the include path, so any source can ``#include "fastgen.cuh"`` or
``"gemv.cuh"``) and ``launch`` runs a function on torch's current stream, so launches are ordered with torch's ops
and are captured by CUDA graphs with them.

Every kernel here has a pure-torch reference with the same signature next to it (``*_ref``); CPU always runs
the reference. On CUDA a kernel runs when CuPy is installed and the engine's kernel plan (ops/plan.py, decided
once at build from ``EngineConfig.kernels``) allows it: ``use(x, name)``. tests/gpu/test_kernels_gpu.py
compares each kernel with its reference. CuPy is imported only when a kernel is about to run: CPU machines need
not have it.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F

from .ops import KernelPlan, ModelFacts  # noqa: F401  (ModelFacts: what plan_for takes, for callers)

KERNEL_SUBDIR = "_kernels"          # the top-level kernels/ folder, inside fastgen_core in a wheel
FUSED_OPS_CU = "fused_ops.cu"


def kernel_dirs() -> list[Path]:
    """Where the core's *.cu files may be: in the installed package (a wheel), or the checkout's kernels/ folder."""
    package = Path(str(resources.files("fastgen_core")))
    return [package / KERNEL_SUBDIR, package.parent / "kernels"]


@functools.lru_cache(maxsize=None)
def kernel_dir() -> Path:
    """The folder of the core's *.cu files, looked up on first use (only a kernel about to run needs it)."""
    for d in kernel_dirs():
        if (d / FUSED_OPS_CU).is_file():
            return d
    where = ", ".join(map(str, kernel_dirs()))
    raise FileNotFoundError(f"fastgen-core's CUDA sources are not installed (looked in {where}); reinstall "
                            "fastgen-core (pip install -e . in a checkout, or make install)")


SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


@functools.lru_cache(maxsize=None)          # launches ask for it every layer: look the file up once
def core_source(name: str) -> Path:
    """The path of the core's CUDA source ``name`` (``"fused_ops.cu"``); a FileNotFoundError naming what is
    installed when the package lacks it."""
    path = kernel_dir() / name
    if not path.is_file():
        have = sorted(p.name for p in kernel_dir().glob("*.cu"))
        raise FileNotFoundError(f"fastgen-core's CUDA source {name!r} is not in {kernel_dir()} (installed: {have}); "
                                "reinstall fastgen-core (pip install -e . in a checkout)")
    return path


@functools.lru_cache(maxsize=None)
def available() -> bool:
    try:
        import cupy
    except Exception:
        return False
    return cupy is not None and torch.cuda.is_available()


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


_PLAN: contextvars.ContextVar[KernelPlan | None] = contextvars.ContextVar("fastgen_kernel_plan", default=None)


def cuda_plan(setting="auto", extra_ops: dict | None = None, family_on: tuple[str, ...] = ()) -> KernelPlan:
    """A plan for CUDA that takes CuPy and Triton as present and leaves dtypes open: each call site still checks
    the tensor's device and dtype and the library it needs (layers run without an engine, tests, tools)."""
    return KernelPlan.build(setting, "cuda", "", have_cupy=True, have_triton=True, extra_ops=extra_ops,
                            family_on=family_on)


@functools.lru_cache(maxsize=None)
def default_plan(extra_ops: tuple = (), family_on: tuple[str, ...] = ()) -> KernelPlan:
    """The plan of a model no engine built: ``cuda_plan("auto")`` with the family's operations and choices."""
    return cuda_plan("auto", dict(extra_ops), family_on)


def plan_for(device: str, dtype: str, setting="auto", model: ModelFacts = ModelFacts(),
             extra_ops: dict | None = None, family_on: tuple[str, ...] = ()) -> KernelPlan:
    """The plan of an engine on ``device`` ("cuda"/"cpu") computing in ``dtype`` ("bfloat16"), with the libraries
    this process has."""
    cuda = device == "cuda"
    return KernelPlan.build(setting, device, dtype, have_cupy=cuda and available(),
                            have_triton=cuda and triton_available(), model=model, extra_ops=extra_ops,
                            family_on=family_on)


def active_plan() -> KernelPlan:
    return _PLAN.get() or default_plan()


@contextlib.contextmanager
def plan_scope(plan: KernelPlan | str | dict | None):
    """While open, kernel choices follow ``plan`` (a KernelPlan, or a setting: "reference", {op: kernel}, which
    is planned as for CUDA); None leaves the current one. ``CausalLM`` opens its engine's plan around each forward."""
    if plan is None:
        yield
        return
    if not isinstance(plan, KernelPlan):
        plan = cuda_plan(plan)
    token = _PLAN.set(plan)
    try:
        yield
    finally:
        _PLAN.reset(token)


def allows(name: str) -> bool:
    """Whether the active plan lets the kernel ``name`` run (its call site checks the operands)."""
    return active_plan().allows(name)


def use(x: torch.Tensor, name: str = "") -> bool:
    """Whether the CuPy kernel ``name`` should run on ``x``: CUDA, a dtype it is compiled for, CuPy here, and the
    active plan allows it."""
    return x.is_cuda and x.dtype in SUFFIX and available() and allows(name)


def triton_builds(build) -> bool:
    """Whether Triton imports and accepts the kernels ``build()`` defines (else the caller's torch path runs)."""
    try:
        build()
    except Exception:  # ImportError, or a Triton too old for the kernel
        return False
    return True


@functools.lru_cache(maxsize=None)
def load(path: str | Path, device_index: int = 0):
    """A compiled ``cupy.RawModule`` of the CUDA source at ``path`` for the GPU ``device_index``."""
    import cupy
    path = Path(path)
    major, minor = torch.cuda.get_device_capability(device_index)
    arch = f"-arch=sm_{major}{minor}" + ("a" if major >= 9 else "")
    include = f"-I{kernel_dir()}"           # the core's headers (fastgen.cuh, gemv.cuh), for plugins' sources too
    with cupy.cuda.Device(device_index):
        mod = cupy.RawModule(code=path.read_text(), options=("-std=c++17", arch, include), name_expressions=None)
        mod.compile()
    return mod


class _StreamHandle:
    """A raw cudaStream_t in the CUDA stream protocol (``__cuda_stream__``: (version 0, handle)), for CuPy's
    ``Stream.from_external``."""

    def __init__(self, ptr: int):
        self.ptr = ptr

    def __cuda_stream__(self):
        return (0, self.ptr)


@functools.lru_cache(maxsize=None)
def _external_stream(ptr: int, device_index: int):
    """CuPy's view of torch's stream ``ptr``. CuPy 14 deprecates ``ExternalStream`` (the form measured on the
    GPU machine, kept while it exists) for ``Stream.from_external``, which a CuPy without it gets."""
    import cupy
    if hasattr(cupy.cuda, "ExternalStream"):
        return cupy.cuda.ExternalStream(ptr, device_index)
    return cupy.cuda.Stream.from_external(_StreamHandle(ptr))


@functools.lru_cache(maxsize=None)
def _function(path: str, name: str, device_index: int):
    return load(path, device_index).get_function(name)


# the current stream's handle without building a torch.cuda.Stream per launch (CUDA builds of torch have it;
# a prompt step launches ~100 of these kernels, so the host's few microseconds each add up)
_RAW_STREAM = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def launch(path: str | Path, name: str, grid: tuple, block: tuple, args: tuple, device: torch.device) -> None:
    """Run ``name`` from the module at ``path`` on torch's current stream of ``device``."""
    index = device.index or 0
    fn = _function(str(path), name, index)
    stream = _RAW_STREAM(index) if _RAW_STREAM is not None else torch.cuda.current_stream(device).cuda_stream
    with _external_stream(stream, index):
        fn(grid, block, args)


def ptr(t: torch.Tensor | None):
    """A tensor as a kernel pointer argument (None: a null pointer)."""
    import cupy
    return cupy.uint64(t.data_ptr() if t is not None else 0)


def threads(n: int) -> int:
    """Threads for one block per row of ``n`` elements: a multiple of 32 (the block reduction needs whole
    warps), at most 1024."""
    return min(1024, max(32, (n + 31) // 32 * 32))


# ---- RMSNorm, with the residual add of the pre-norm block fused in --------------------------------------

def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float,
                 residual: torch.Tensor | None = None) -> torch.Tensor:
    """``weight * rmsnorm(x)`` computed in float32 and cast back, as transformers' Llama does. With
    ``residual``: ``residual += x`` first (in place, in x's dtype) and the sum is normalised."""
    if residual is not None:
        residual.add_(x)
        x = residual
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``rms_norm_ref`` as one kernel per call on CUDA (the plan's ``rms_norm`` operation), else the reference."""
    if not ((use(x, "rms_norm_vec") or use(x, "rms_norm")) and x.is_contiguous() and weight.dtype == x.dtype
            and (residual is None or (residual.is_contiguous() and residual.dtype == x.dtype))):
        return rms_norm_ref(x, weight, eps, residual)
    hidden = x.shape[-1]
    rows = x.numel() // hidden
    out = torch.empty_like(x)
    if rows:
        # 16-byte vectors, one per thread, where the rows allow (else scalar loads)
        vec = vector_rows_ok(hidden, x, out, weight, residual) and allows("rms_norm_vec")
        if not (vec or allows("rms_norm")):
            return rms_norm_ref(x, weight, eps, residual)
        name, block = ("rms_norm_vec", vector_threads(x)) if vec else ("rms_norm", threads(hidden))
        launch(core_source(FUSED_OPS_CU), f"{name}_{SUFFIX[x.dtype]}", (rows,), (block,),
               (ptr(out), ptr(x), ptr(residual), ptr(weight), f32(eps), i32(hidden)), x.device)
    return out


def vector_rows_ok(hidden: int, *tensors: torch.Tensor | None) -> bool:
    """Whether one-vector-per-thread row kernels (rms_norm_vec, add3_layer_norm_vec, moe_combine) take rows of
    ``hidden`` elements of these tensors: whole 16-byte vectors, at most 1024 of them, every pointer 16-byte
    aligned (None entries are skipped)."""
    ts = [t for t in tensors if t is not None]
    vec = 16 // ts[0].element_size()
    return hidden % vec == 0 and hidden // vec <= 1024 and all(t.data_ptr() % 16 == 0 for t in ts)


def vector_threads(x: torch.Tensor) -> int:
    """Threads for a one-vector-per-thread row kernel over rows of ``x``'s last dimension (``vector_rows_ok``)."""
    return threads(x.shape[-1] // (16 // x.element_size()))


# ---- (attn + mlp) + x, then LayerNorm: the parallel-residual layer's boundary ----------------------------

ADD3_MAX_ROWS = 256


def add3_layer_norm_ref(a: torch.Tensor, m: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, layer_norm(s)) with s = (a + m) + x: a parallel layer's output and the next layer's norm of it."""
    s = a + m + x
    return s, F.layer_norm(s, (s.shape[-1],), weight, bias, eps)


def add3_layer_norm(a: torch.Tensor, m: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``add3_layer_norm_ref`` in one kernel on CUDA in bf16/fp16: the sum read and written once instead of
    three kernels (two adds, torch's LayerNorm; about half the time at one row). Rows of whole
    16-byte vectors (``vector_rows_ok``: Phi, Falcon, GPT-NeoX hidden sizes) take the vector form at any
    number of rows; otherwise the scalar form (one block per row, scalar loads) takes up to ``ADD3_MAX_ROWS``
    rows (at 1200 rows of 2560 it is slower than torch's kernels) and the reference the
    rest, as it does float32 (whose statistics it shares bit for bit with transformers).
    The plan's ``add3_layer_norm`` operation may leave out either form."""
    if not ((use(x, "add3_layer_norm_vec") or use(x, "add3_layer_norm")) and x.dtype != torch.float32
            and weight is not None
            and all(t.is_contiguous() and t.dtype == x.dtype and t.shape == x.shape for t in (a, m, x))
            and weight.dtype == x.dtype and (bias is None or bias.dtype == x.dtype)):
        return add3_layer_norm_ref(a, m, x, weight, bias, eps)
    hidden = x.shape[-1]
    vec = vector_rows_ok(hidden, a, m, x, weight, bias) and allows("add3_layer_norm_vec")
    if not vec and (x.numel() > ADD3_MAX_ROWS * hidden or not allows("add3_layer_norm")):
        return add3_layer_norm_ref(a, m, x, weight, bias, eps)
    rows = x.numel() // hidden
    s, out = torch.empty_like(x), torch.empty_like(x)
    if rows:
        name, block = ("add3_layer_norm_vec", vector_threads(x)) if vec else ("add3_layer_norm", threads(hidden))
        launch(core_source(FUSED_OPS_CU), f"{name}_{SUFFIX[x.dtype]}", (rows,), (block,),
               (ptr(s), ptr(out), ptr(a), ptr(m), ptr(x), ptr(weight), ptr(bias), f32(eps), i32(hidden)), x.device)
    return s, out


# ---- SiLU(gate) * up -------------------------------------------------------------------------------------

def silu_and_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    """[T, 2I] (gate | up) -> silu(gate) * up [T, I]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    if not ((use(gate_up, "silu_and_mul_vec") or use(gate_up, "silu_and_mul")) and gate_up.is_contiguous()):
        return silu_and_mul_ref(gate_up)
    inter = gate_up.shape[-1] // 2
    out = gate_up.new_empty(*gate_up.shape[:-1], inter)
    total = out.numel()
    if total:
        vec = 16 // gate_up.element_size()
        aligned = inter % vec == 0 and gate_up.data_ptr() % 16 == 0 and out.data_ptr() % 16 == 0
        if not ((aligned and allows("silu_and_mul_vec")) or allows("silu_and_mul")):
            return silu_and_mul_ref(gate_up)
        if aligned and allows("silu_and_mul_vec"):
            vecs = total // vec
            launch(core_source(FUSED_OPS_CU), f"silu_and_mul_vec_{SUFFIX[gate_up.dtype]}",
                   (min(-(-vecs // 256), 65535),), (256,), (ptr(out), ptr(gate_up), i64(vecs), i32(inter // vec)),
                   gate_up.device)
        else:
            launch(core_source(FUSED_OPS_CU), f"silu_and_mul_{SUFFIX[gate_up.dtype]}", (min(-(-total // 256), 65535),),
                   (256,), (ptr(out), ptr(gate_up), i64(total), i32(inter)), gate_up.device)
    return out


# ---- the MoE block's combine: each token's k expert outputs, weighted and summed -------------------------

def moe_combine_ref(ys: torch.Tensor, order: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
    """ys [T * k, H]: expert outputs in expert-sorted order (row i is the pair order[i] = token * k + slot).
    Each weighted in float32, a token's k contributions summed in float32, rounded once to ys' dtype (as
    transformers' grouped_mm experts do) -> [T, H]."""
    t, k = topk_weights.shape
    weighted = torch.empty(t * k, ys.shape[1], dtype=torch.float32, device=ys.device)
    weighted[order] = ys * topk_weights.reshape(-1).index_select(0, order).float()[:, None]
    return weighted.view(t, k, -1).sum(dim=1).to(ys.dtype)


def _moe_combine_fits(ys: torch.Tensor, index: torch.Tensor) -> bool:
    return (use(ys, "moe_combine") and ys.is_contiguous() and index.dtype == torch.long
            and vector_rows_ok(ys.shape[1], ys))


def moe_combine(ys: torch.Tensor, order: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
    """``moe_combine_ref`` as one kernel on CUDA (a block per token reading its k rows of ys), the same bits for
    k <= 2 (the float32 sum of two products has one order)."""
    if not _moe_combine_fits(ys, order):
        return moe_combine_ref(ys, order, topk_weights)
    position = torch.empty_like(order)
    position[order] = torch.arange(order.numel(), device=order.device)
    return _moe_combine_launch(ys, position, topk_weights)


def moe_combine_rows_ref(ys: torch.Tensor, position: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
    """``moe_combine_ref`` for expert outputs in any layout: pair p = token * k + slot is row ``position[p]`` of
    ys (rows no pair names are ignored)."""
    t, k = topk_weights.shape
    picked = ys.index_select(0, position).float() * topk_weights.reshape(-1).float()[:, None]
    return picked.view(t, k, -1).sum(dim=1).to(ys.dtype)


def moe_combine_rows(ys: torch.Tensor, position: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
    """``moe_combine_rows_ref`` as the ``moe_combine`` kernel on CUDA."""
    if not _moe_combine_fits(ys, position):
        return moe_combine_rows_ref(ys, position, topk_weights)
    return _moe_combine_launch(ys, position, topk_weights)


def _moe_combine_launch(ys: torch.Tensor, position: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
    """The ``moe_combine`` kernel, for inputs ``_moe_combine_fits`` took."""
    t, k = topk_weights.shape
    out = ys.new_empty(t, ys.shape[1])
    if t:
        w = topk_weights.float().contiguous()
        launch(core_source(FUSED_OPS_CU), f"moe_combine_{SUFFIX[ys.dtype]}", (t,), (vector_threads(ys),),
               (ptr(out), ptr(ys), ptr(position), ptr(w), i32(k), i32(ys.shape[1])), ys.device)
    return out


def f32(v):
    """Scalar kernel arguments of an exact C type (CuPy takes numpy scalars): f32, i32, i64."""
    import numpy
    return numpy.float32(v)


def i32(v):
    import numpy
    return numpy.int32(v)


def i64(v):
    import numpy
    return numpy.int64(v)
