"""fastgen's persistent deployment: an HTTP front door (OpenAI- and MII-compatible) routing to replica
processes, each with one engine loop thread. Entry points: ``fastgen serve``, ``fastgen_core.serve``,
``fastgen_core.client``; see docs/serving.md."""
