"""Errors meant for people: each says what was wrong, with the value, and what is allowed."""
import signal


class FastgenError(Exception):
    """Base class of every error fastgen raises on purpose."""


class InvalidRequestError(FastgenError, ValueError):
    """A generation request (prompt or sampling option) is not acceptable. ``param``: the request's field at
    fault, when one is (the server answers it as the OpenAI error's ``param``)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param

    def __reduce__(self):           # across processes (tensor-parallel workers) with its param
        return type(self), (str(self), self.param)


class ConfigError(FastgenError, ValueError):
    """An engine setting is not acceptable."""


class UnsupportedModelError(FastgenError, ValueError):
    """No installed family plugin can run this model, or the family refuses a variant."""


class DuplicateFamilyError(FastgenError, RuntimeError):
    """Two installed distributions claim the same architecture or model_type."""


class WeightLoadError(FastgenError, ValueError):
    """A checkpoint is missing tensors, has unexpected ones, or has tensors of the wrong shape."""


class ResourceError(FastgenError, RuntimeError):
    """The engine cannot start with the memory it may use (the KV cache does not fit, the GPU's share is taken)."""


class TensorParallelError(FastgenError):
    """A tensor-parallel worker failed or exited."""


def exit_reason(rc: int) -> str:
    """How a process ended, from its exit code (negative: the signal that ended it), for error messages."""
    if rc < 0:
        try:
            return f"killed by signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit code {rc}"
