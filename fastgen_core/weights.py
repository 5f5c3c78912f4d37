"""Declarative weight maps: HF tensor-name patterns -> engine parameters, with named transforms.

Patterns use ``{i}`` for the layer index and ``{e}`` for an expert index, e.g.
``Rule("model.layers.{i}.self_attn.q_proj.weight", "layers.{i}.self_attn.qkv_proj.weight", shard=0, num_shards=3)``.
Shards of one target are concatenated along ``dim`` in shard order (fused QKV, fused gate/up); a rule's
``transform`` is applied to the whole (fused) tensor before it is copied (and, under tensor parallelism,
before it is cut to the rank's slice).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch


@dataclass(frozen=True)
class Rule:
    source: str
    target: str
    shard: int = 0
    num_shards: int = 1
    dim: int = 0
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None   # applied to the (fused) tensor

    def regex(self) -> re.Pattern:
        pat = re.escape(self.source).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{e\}", r"(?P<e>\d+)")
        return re.compile(pat + "$")


@dataclass
class WeightMap:
    rules: list[Rule]
    ignore: list[str] = field(default_factory=list)     # regexes of checkpoint tensors we do not need
    family: str = ""        # set by the core when it loads a family's map: loading errors name the family

    def __post_init__(self):
        self._compiled = [(r, r.regex()) for r in self.rules]
        self._ignore = [re.compile(p) for p in self.ignore]

    def match(self, name: str) -> tuple[Rule, str] | None:
        for rule, rx in self._compiled:
            m = rx.match(name)
            if m:
                return rule, rule.target.format(**m.groupdict())
        return None

    def ignored(self, name: str) -> bool:
        return any(p.search(name) for p in self._ignore)

    def sources_for(self, target: str) -> list[str]:
        """HF names that would fill ``target`` (for error messages)."""
        out = []
        for rule in self.rules:
            rx = re.escape(rule.target).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{e\}", r"(?P<e>\d+)")
            m = re.match(rx + "$", target)
            if m:
                out.append(rule.source.format(**m.groupdict()))
        return out


def fused(sources: Iterable[str], target: str, dim: int = 0, transform=None) -> list[Rule]:
    """Rules that concatenate several HF tensors into one engine parameter, in the given order."""
    sources = list(sources)
    return [Rule(s, target, k, len(sources), dim, transform) for k, s in enumerate(sources)]
