"""Engine settings, validated when constructed (errors name the field, the value and what is allowed).

The field defaults of EngineConfig are the one home of each engine default: pipeline(), ``fastgen serve``,
``fastgen generate`` and ``fastgen bench`` read them from here (``EngineConfig.max_ragged_batch_size``).
Importing this module imports no torch (the command line reads the defaults while it builds its parser).

This is also the one module that reads fastgen's environment variables (``FASTGEN_*``), each in a function below,
when it is called, never at import: ``FASTGEN_KERNELS`` (the kernel setting's default, for A/B runs),
``FASTGEN_CACHE``, ``FASTGEN_API_KEY`` and the plugin filters.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import ConfigError
from .ops import parse_setting

KERNELS_ENV = "FASTGEN_KERNELS"
KERNELS_HELP = ("which kernels may run: auto, reference (every operation's pure-torch version) or op=kernel pairs "
                "separated by commas, e.g. decode_attention=paged_decode (default: $FASTGEN_KERNELS, else auto; "
                "`fastgen plan` lists the operations and kernels)")


def kernels_from_env() -> str | dict[str, str]:
    """The kernel setting ``FASTGEN_KERNELS`` gives ("auto" when unset): "auto", "reference" or
    ``op=kernel,op=kernel`` (ops/plan.py)."""
    raw = os.environ.get(KERNELS_ENV)
    return "auto" if raw is None else parse_setting(raw, KERNELS_ENV)


def cache_dir() -> Path:
    """Where fastgen keeps what it makes once (the default model, compiler wheels, bench results, deployment
    records): ``FASTGEN_CACHE``, default ``~/.cache/fastgen``."""
    return Path(os.environ.get("FASTGEN_CACHE", Path.home() / ".cache" / "fastgen"))


def api_key_from_env() -> str | None:
    """``FASTGEN_API_KEY``: the server's and the client's API key when none is given."""
    return os.environ.get("FASTGEN_API_KEY")


@dataclass(frozen=True)
class PluginFilters:
    """Which entry-point plugins to load: ``FASTGEN_LOAD_PLUGINS=a,b`` (only these; None: all),
    ``FASTGEN_DISABLE_PLUGINS=a,b`` (not these), ``FASTGEN_STRICT_PLUGINS=1`` (re-raise a plugin's import error)."""

    allow: frozenset[str] | None
    deny: frozenset[str]
    strict: bool


def plugin_filters_from_env() -> PluginFilters:
    def names(var: str) -> frozenset[str] | None:
        raw = os.environ.get(var)
        return None if raw is None else frozenset(n.strip() for n in raw.split(",") if n.strip())
    return PluginFilters(names("FASTGEN_LOAD_PLUGINS"), names("FASTGEN_DISABLE_PLUGINS") or frozenset(),
                         os.environ.get("FASTGEN_STRICT_PLUGINS", "") not in ("", "0"))

DEFAULT_KV_BLOCK_SIZE = 32
LOAD_FORMATS = ("auto", "safetensors", "pt", "dummy", "snapshot")
# dtype names -> torch's attribute names
DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "half": "float16",
          "bfloat16": "bfloat16", "bf16": "bfloat16"}


def torch_dtype_named(name: str):
    """The torch dtype of one of DTYPES' names ("bf16": torch.bfloat16)."""
    import torch
    return getattr(torch, DTYPES[name])


@dataclass
class EngineConfig:
    """How to run one model.

    max_ragged_batch_size: tokens per forward pass (the SplitFuse budget).
    max_ragged_sequence_count: sequences per forward pass.
    kv_block_size: tokens per KV block (None: DEFAULT_KV_BLOCK_SIZE, 32). num_kv_blocks: None sizes the cache from free memory
    (``gpu_memory_fraction`` of the GPU, or ``cpu_kv_cache_bytes`` on CPU).
    cuda_graphs: on CUDA, serve decode-only steps of up to ``cuda_graph_max_batch`` sequences from CUDA
    graphs captured at start-up (False: always eager, like vLLM's ``enforce_eager``).
    enable_prefix_caching: keep the K/V of full blocks after their sequence ends, and start a new sequence
    whose tokens begin with cached blocks after them (shared system prompts, multi-turn chats, retries).
    tensor_parallel_size: shard every layer over this many GPUs (``device``'s index and the ones after
    it) or, on CPU, processes; rank 0 runs in this process, the others in child processes.
    tp_cuda_graphs: capture decode graphs under tensor parallelism too (off until measured on GPUs).
    async_scheduling: schedule and prepare step N+1 while the GPU runs step N (see engine.engine); the
    same outputs either way. None (the default): on for a CUDA engine without tensor parallelism, where
    it is faster (docs/performance.md), off on CPU, where the host is the device and there is nothing to overlap.
    kernels: which kernels may run (ops/plan.py): "auto" (default; ``FASTGEN_KERNELS`` changes the default),
    "reference" (every operation's pure-torch version), or {operation: kernel}. Planned once when the engine is
    built; ``fastgen plan`` prints the plan.
    """

    model: str
    device: str | None = None
    dtype: str | torch.dtype | None = None
    max_ragged_batch_size: int = 768
    max_ragged_sequence_count: int = 512
    kv_block_size: int | None = None
    num_kv_blocks: int | None = None
    load_format: str = "auto"
    family: str | None = None
    max_context: int | None = None
    gpu_memory_fraction: float = 0.9
    cpu_kv_cache_bytes: int = 1 << 30
    seed: int = 0
    cuda_graphs: bool = True
    cuda_graph_max_batch: int = 256
    enable_prefix_caching: bool = False
    tensor_parallel_size: int = 1
    tp_cuda_graphs: bool = False
    async_scheduling: bool | None = None
    kernels: str | dict = field(default_factory=kernels_from_env)

    def __post_init__(self):
        import torch
        self.kernels = parse_setting(self.kernels)
        for name in ("cuda_graphs", "enable_prefix_caching", "tp_cuda_graphs"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.async_scheduling is not None and not isinstance(self.async_scheduling, bool):
            raise ConfigError("async_scheduling must be true, false or null (automatic), "
                              f"got {self.async_scheduling!r}")
        for name in ("max_ragged_batch_size", "max_ragged_sequence_count", "cuda_graph_max_batch",
                     "tensor_parallel_size"):
            _positive_int(name, getattr(self, name))
        for name in ("kv_block_size", "num_kv_blocks", "max_context"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.load_format not in LOAD_FORMATS:
            raise ConfigError(f"load_format must be one of {list(LOAD_FORMATS)}, got {self.load_format!r}")
        if not 0 < self.gpu_memory_fraction <= 1:
            raise ConfigError(f"gpu_memory_fraction must be in (0, 1], got {self.gpu_memory_fraction}")
        if self.dtype is not None and not isinstance(self.dtype, torch.dtype) and self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {sorted(DTYPES)} or a torch.dtype, got {self.dtype!r}")
        if self.device is not None:
            try:
                dev = torch.device(self.device)
            except (RuntimeError, TypeError):
                raise ConfigError(f"device must be like 'cpu', 'cuda' or 'cuda:1', got {self.device!r}") from None
            if dev.type == "cuda" and not torch.cuda.is_available():
                raise ConfigError(f"device {self.device!r} requested but CUDA is not available here")
            if dev.type not in ("cpu", "cuda"):
                raise ConfigError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        dev = self.torch_device()
        if dev.type == "cuda" and self.tensor_parallel_size > 1:
            have = torch.cuda.device_count() - (dev.index or 0)
            if self.tensor_parallel_size > have:
                raise ConfigError(f"tensor_parallel_size={self.tensor_parallel_size} needs that many GPUs from "
                                  f"{dev} on, but {have} are there; allowed: 1..{have}")

    @classmethod
    def from_kwargs(cls, model: str, **kwargs) -> "EngineConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ConfigError(f"unknown engine option(s) {unknown}; allowed: {sorted(known - {'model'})}")
        return cls(model=model, **kwargs)

    def resolve_async_scheduling(self, tp_size: int) -> bool:
        if self.async_scheduling is None:             # automatic: where the GPU's work can hide the host's
            return tp_size == 1 and self.torch_device().type == "cuda"
        if self.async_scheduling and tp_size > 1:     # the workers would need each step's tokens from rank 0
            raise ConfigError("async_scheduling needs tensor_parallel_size=1")
        return self.async_scheduling

    def block_size(self) -> int:
        return self.kv_block_size or DEFAULT_KV_BLOCK_SIZE

    def torch_device(self):
        import torch
        if self.device is None:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def torch_dtype(self, checkpoint_dtype: str | None):
        import torch
        if isinstance(self.dtype, torch.dtype):
            return self.dtype
        if self.dtype is not None:
            return torch_dtype_named(self.dtype)
        if self.torch_device().type == "cuda" and checkpoint_dtype in DTYPES:
            return torch_dtype_named(checkpoint_dtype)
        return torch.float32

    def to_dict(self) -> dict:
        """Every field as JSON takes it, defaults already resolved (a torch.dtype by its name, "torch.bfloat16"):
        how ``fastgen serve``'s front door hands its validated config to each replica."""
        d = asdict(self)
        if d["dtype"] is not None and not isinstance(d["dtype"], str):
            d["dtype"] = str(d["dtype"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EngineConfig":
        """The config ``to_dict()`` gave, as it was: no default is derived again (``FASTGEN_KERNELS`` is not read)."""
        d = dict(d)
        if isinstance(d.get("dtype"), str) and d["dtype"].startswith("torch."):
            import torch
            d["dtype"] = getattr(torch, d["dtype"][len("torch."):])
        return cls.from_kwargs(**d)


def _positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"{name} must be a positive integer, got {v!r}")
