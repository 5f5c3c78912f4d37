"""How the front door starts Python processes (replicas, a background deployment): ``python -m module`` would put
the current directory first on the child's ``sys.path``, so a folder there named like an installed package (a
checkout's ``kernels/`` beside Hugging Face's ``kernels``, a user's ``tokenizers/``) would be imported instead.
The child starts from ``-c`` code that drops that entry first, whatever directory ``fastgen serve`` runs in
(``python -P`` does the same from Python 3.11 on)."""
from __future__ import annotations

import sys

_RUN_MODULE = ("import runpy, sys; del sys.path[0]; sys.argv[0] = {module!r}; "
               "runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")


def module_command(module: str, *args: str) -> list[str]:
    """The argv that runs ``module`` as ``__main__`` (as ``python -m`` does) without the current directory on
    ``sys.path``."""
    return [sys.executable, "-c", _RUN_MODULE.format(module=module), *args]
