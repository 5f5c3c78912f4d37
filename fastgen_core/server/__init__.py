"""fastgen's persistent deployment: an HTTP front door (OpenAI- and MII-compatible) routing to replica
processes, each with one engine loop thread. Entry points: ``fastgen serve``, ``fastgen_core.serve``,
``fastgen_core.client``; see docs/serving.md."""

import importlib

# the `server` extra of pyproject.toml: module -> distribution
EXTRAS = {"fastapi": "fastapi", "uvicorn": "uvicorn", "pydantic": "pydantic", "httpx": "httpx",
          "prometheus_client": "prometheus-client"}


def require_extras() -> None:
    """A ConfigError naming the install command when a package of the server extra is missing."""
    from ..errors import ConfigError
    missing = []
    for module, dist in EXTRAS.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(dist)
    if missing:
        raise ConfigError(f"serving needs the server extra, and {', '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} not installed: pip install -e '.[server]' (in the "
                          "fastgen repository)")
