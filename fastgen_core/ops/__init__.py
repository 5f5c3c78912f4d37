"""Operations and their kernels: the table of candidates and the plan that picks among them once per engine
(``plan.py``). Importing this package imports no torch."""
from .plan import MANY_PROGRAMS, OPS, REFERENCE, Kernel, KernelPlan, ModelFacts, parse_setting

__all__ = ["MANY_PROGRAMS", "OPS", "REFERENCE", "Kernel", "KernelPlan", "ModelFacts", "parse_setting"]
