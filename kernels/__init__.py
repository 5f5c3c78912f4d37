"""The core's CUDA sources (*.cu), compiled at run time by CuPy (see fastgen_core/kernels.py).

This folder is installed as the package ``fastgen_core._kernels`` (pyproject.toml maps it), so a wheel of
fastgen-core carries the sources and ``fastgen_core.kernels.core_source(name)`` finds them through
importlib.resources whether fastgen is installed from a wheel or editable from a checkout.
"""
