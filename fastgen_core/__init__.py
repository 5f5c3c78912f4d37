"""fastgen: a Dynamic SplitFuse inference engine whose model families are plugins."""
from .config import EngineConfig
from .engine.engine import LLMEngine, RequestOutput, Response
from .errors import (ConfigError, DuplicateFamilyError, FastgenError, InvalidRequestError, UnsupportedModelError,
                     WeightLoadError)
from .family import ModelFamily
from .hookspecs import hookimpl
from .model_config import DecoderConfig
from .pipeline import Pipeline, pipeline
from .registry import FamilyRegistry
from .sampling import SamplingParams
from .weights import Rule, WeightMap, fused

__version__ = "0.1.0"

__all__ = ["pipeline", "serve", "client", "Pipeline", "LLMEngine", "EngineConfig", "SamplingParams", "Response", "RequestOutput",
           "ModelFamily", "DecoderConfig", "FamilyRegistry", "hookimpl", "Rule", "WeightMap", "fused",
           "FastgenError", "InvalidRequestError", "ConfigError", "UnsupportedModelError", "DuplicateFamilyError",
           "WeightLoadError"]


def serve(*args, **kwargs):
    """Start a persistent deployment and return a client (see fastgen_core.server.deployment.serve)."""
    from .server.deployment import serve as _serve
    return _serve(*args, **kwargs)


def client(*args, **kwargs):
    """Connect to a running deployment by name or URL (see fastgen_core.server.deployment.client)."""
    from .server.deployment import client as _client
    return _client(*args, **kwargs)
