"""The kernel plan: for every operation, which of its kernels may run, decided once when an engine is built.

An operation (``decode_attention``, ``rms_norm``, ``linear``, ...) has candidate kernels in the order they are
tried, each with the condition it is used under, and ends with ``reference``, the pure-torch version that runs
everywhere (CPU always). ``KernelPlan.build`` keeps the candidates that this device, dtype, model and the installed
libraries (CuPy, Triton) allow and that the ``kernels`` setting leaves on; at run time an operation takes the
first kept kernel whose batch-shape condition holds (``kernels.use(x, name)`` asks the plan). ``describe()`` is
what ``fastgen plan`` prints and what the engine logs at start.

The setting (``EngineConfig.kernels``, or the ``FASTGEN_KERNELS`` environment variable that config.py reads):
- ``"auto"``: every kernel that applies, opt-in ones off (a family may turn one on: Mixtral's ``exact_sdpa``);
- ``"reference"``: every operation's reference (debugging, A/B);
- a mapping ``{operation: kernel}``: that operation runs that kernel where its condition holds and the reference
  elsewhere (``"auto"`` as the kernel: the default order); the others as ``"auto"``. From the environment:
  ``FASTGEN_KERNELS=decode_attention=paged_decode,rms_norm=reference``.
Unknown operations and kernels are refused naming the allowed ones. This module imports no torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError

REFERENCE = "reference"
HALF = ("bfloat16", "float16")


@dataclass(frozen=True)
class Kernel:
    """One way to compute an operation. ``backend``: "cupy" (needs CuPy and CUDA), "triton" (Triton and CUDA),
    "cuda" (torch on CUDA) or "torch" (anywhere). ``when``: the run-time condition, for people. ``dtypes``: the
    compute dtypes it takes (empty: any). ``model``: a check of the model's shape (``ModelFacts``), None: any.
    ``opt_in``: off unless the setting or the family names it."""

    name: str
    backend: str
    when: str = ""
    dtypes: tuple[str, ...] = ()
    model: object = None
    model_rule: str = ""
    opt_in: bool = False


@dataclass(frozen=True)
class ModelFacts:
    """What the plan knows of the model: its attention heads (on this rank) and head size."""

    num_heads: int = 0
    num_kv_heads: int = 0
    head_dim: int = 0


def _no_gqa(m: ModelFacts) -> bool:
    return m.num_heads == m.num_kv_heads and m.head_dim in (64, 80, 128)


def _decode_kernel_heads(m: ModelFacts) -> bool:
    g = m.num_heads // max(1, m.num_kv_heads)
    return m.head_dim % 8 == 0 and m.head_dim <= 256 and g <= 8 and g * m.head_dim <= 1024


MANY_PROGRAMS = 256     # (sequence, KV head) pairs of a decode step from which it needs no context splits

OPS: dict[str, tuple[Kernel, ...]] = {
    "decode_attention": (
        Kernel("fused_rotary_decode", "cupy", "decode-only steps below 256 (sequence, KV head) pairs: rotary, "
               "the KV write and attention in one kernel", model=_decode_kernel_heads,
               model_rule="head_dim <= 256, a multiple of 8, <= 8 query heads per KV head", opt_in=True),
        Kernel("mha_decode", "cupy", f">= {MANY_PROGRAMS} (sequence, head) pairs (head_dim 128: < 512)", HALF,
               _no_gqa, "no GQA, head_dim 64, 80 or 128"),
        Kernel("paged_decode", "triton", "every decode row"),
        Kernel("padded_sdpa", "cuda", "every decode row (K/V gathered and padded)"),
        Kernel(REFERENCE, "torch")),
    "prefill_attention": (
        Kernel("exact_sdpa", "cuda", "whole prompts, as transformers attends them (SDPA's flash kernel)",
               opt_in=True),
        Kernel("paged_prefill", "triton", "every prompt chunk"),
        Kernel("sdpa", "cuda", "every prompt chunk"),
        Kernel(REFERENCE, "torch")),
    "rotary_kv": (
        Kernel("rotary_kv_vec", "cupy", "rows of whole 16-byte vectors, 16-byte aligned"),
        Kernel("rotary_kv", "cupy", "rows of contiguous heads"),
        Kernel(REFERENCE, "torch")),
    "rms_norm": (
        Kernel("rms_norm_vec", "cupy", "rows of whole 16-byte vectors (<= 1024), 16-byte aligned"),
        Kernel("rms_norm", "cupy", "contiguous rows"),
        Kernel(REFERENCE, "torch")),
    "add3_layer_norm": (
        Kernel("add3_layer_norm_vec", "cupy", "rows of whole 16-byte vectors (<= 1024), 16-byte aligned", HALF),
        Kernel("add3_layer_norm", "cupy", "up to 256 rows", HALF),
        Kernel(REFERENCE, "torch")),
    "silu_and_mul": (
        Kernel("silu_and_mul_vec", "cupy", "rows of whole 16-byte vectors, 16-byte aligned"),
        Kernel("silu_and_mul", "cupy", "contiguous rows"),
        Kernel(REFERENCE, "torch")),
    "linear": (
        Kernel("gemv_ksplit", "cupy", "one row; K split over warps where that makes blocks enough", HALF),
        Kernel("gemv", "cupy", "one row", HALF),
        Kernel(REFERENCE, "torch", "cuBLAS on CUDA")),
    "moe_experts": (
        Kernel("expert_gemv", "cupy", "up to a few (token, expert) pairs", HALF),
        Kernel("moe_triton", "triton", "decode-sized steps", HALF),
        Kernel(REFERENCE, "torch", "tokens grouped per expert")),
    "moe_combine": (
        Kernel("moe_combine", "cupy", "rows of whole 16-byte vectors"),
        Kernel(REFERENCE, "torch")),
    "parallel_branches": (
        Kernel("branch_streams", "cuda", f"steps of <= {MANY_PROGRAMS} tokens: a parallel layer's MLP on a "
               "second stream"),
        Kernel(REFERENCE, "torch", "one stream")),
}


def parse_setting(value, source: str = "kernels") -> str | dict[str, str]:
    """``value`` as the setting's canonical form ("auto", "reference" or {op: kernel}); the names are checked
    later, against the operations of the model (``KernelPlan.build``). ``source`` names it in errors."""
    if isinstance(value, str):
        text = value.strip()
        if text in ("", "auto"):
            return "auto"
        if text == REFERENCE:
            return REFERENCE
        if "=" not in text:
            raise ConfigError(f"{source} must be 'auto', 'reference' or op=kernel pairs separated by commas "
                              f"(e.g. decode_attention=paged_decode), got {value!r}")
        pairs = {}
        for part in text.split(","):
            op, eq, kernel = part.partition("=")
            if not (eq and op.strip() and kernel.strip()):
                raise ConfigError(f"{source}: {part!r} is not op=kernel (in {value!r})")
            pairs[op.strip()] = kernel.strip()
        return pairs
    if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return dict(value)
    raise ConfigError(f"{source} must be 'auto', 'reference' or a mapping of operation to kernel name, "
                      f"got {value!r}")


def _checked(setting: str | dict, ops: dict[str, tuple[Kernel, ...]]) -> None:
    if not isinstance(setting, dict):
        return
    for op, kernel in setting.items():
        if op not in ops:
            raise ConfigError(f"kernels: unknown operation {op!r}; allowed: {', '.join(sorted(ops))}")
        names = [k.name for k in ops[op]]
        if kernel != "auto" and kernel not in names:
            raise ConfigError(f"kernels: {op} has no kernel {kernel!r}; allowed: {', '.join(['auto', *names])}")


@dataclass(frozen=True)
class KernelPlan:
    """For each operation, the kernels kept, in the order they are tried (``reference`` last, always kept);
    ``dropped``: each candidate not kept, with why."""

    device: str
    dtype: str
    ops: dict[str, tuple[Kernel, ...]]
    kept: dict[str, tuple[str, ...]]
    dropped: dict[str, dict[str, str]] = field(default_factory=dict)
    setting: str | dict = "auto"
    assumed: str = ""         # what the plan assumed about libraries it could not look for
    allowed: frozenset = frozenset()      # every kept kernel (looked up at every call site: a set)
    known: frozenset = frozenset()        # every kernel of the plan's operations

    def allows(self, kernel: str) -> bool:
        """Whether ``kernel`` may run (a kernel of no operation here: only if the setting is "auto", so a plan
        built without a family's own operations leaves them as they default)."""
        return kernel in self.allowed or (kernel not in self.known and self.setting == "auto")

    @classmethod
    def build(cls, setting, device: str, dtype: str, *, have_cupy: bool, have_triton: bool,
              model: ModelFacts = ModelFacts(), extra_ops: dict[str, tuple[Kernel, ...]] | None = None,
              family_on: tuple[str, ...] = (), assumed: str = "") -> "KernelPlan":
        """The plan for a ``device`` type ("cuda", "cpu") and compute ``dtype`` name ("bfloat16", ...).
        ``extra_ops``: a family's own operations (``CausalLM.kernel_ops``); ``family_on``: opt-in kernels the
        family turns on (``CausalLM.kernels_on``)."""
        setting = parse_setting(setting)
        ops = {**OPS, **(extra_ops or {})}
        _checked(setting, ops)
        have = {"torch": True, "cuda": device == "cuda", "cupy": device == "cuda" and have_cupy,
                "triton": device == "cuda" and have_triton}
        kept, dropped = {}, {}
        for op, kernels in ops.items():
            chosen = setting if isinstance(setting, str) else setting.get(op, "auto")
            keep, why = [], {}
            for k in kernels:
                if k.name == REFERENCE:
                    continue
                if chosen == REFERENCE or (chosen != "auto" and k.name != chosen):
                    why[k.name] = "off by the kernels setting"
                elif chosen == "auto" and k.opt_in and k.name not in family_on:
                    why[k.name] = "opt-in"
                elif not have.get(k.backend, False):
                    why[k.name] = f"needs {k.backend}" + (" on CUDA" if k.backend != "cuda" else "")
                elif k.dtypes and dtype and dtype not in k.dtypes:
                    why[k.name] = f"needs {' or '.join(k.dtypes)}"
                elif k.model is not None and model.head_dim and not k.model(model):
                    why[k.name] = f"needs {k.model_rule}"
                else:
                    keep.append(k.name)
            kept[op] = (*keep, REFERENCE)
            dropped[op] = why
        return cls(device, dtype, ops, kept, dropped, setting, assumed,
                   allowed=frozenset(n for names in kept.values() for n in names if n != REFERENCE),
                   known=frozenset(k.name for kernels in ops.values() for k in kernels if k.name != REFERENCE))

    def as_record(self) -> dict[str, list[str]]:
        """{operation: kept kernels in order}: what bench records carry."""
        return {op: list(names) for op, names in self.kept.items()}

    def describe(self) -> list[str]:
        """One line per operation: the kernels tried in order with their conditions, then what was left out."""
        width = max(map(len, self.kept))
        lines = [f"kernel plan for {self.device}, {self.dtype}" + (f" ({self.assumed})" if self.assumed else "")
                 + (f", setting {self.setting!r}" if self.setting != "auto" else "")]
        for op, names in self.kept.items():
            by_name = {k.name: k for k in self.ops[op]}
            tried = " > ".join(f"{n} ({by_name[n].when})" if by_name[n].when and n != REFERENCE else n
                               for n in names)
            off = "; ".join(f"{n}: {why}" for n, why in self.dropped[op].items())
            lines.append(f"  {op:<{width}}  {tried}" + (f"   [not used: {off}]" if off else ""))
        return lines
