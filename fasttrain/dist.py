"""`fasttrain.dist`: the earlier name of `fasttrain.parallel`, kept so user code keeps working.

`import fasttrain.dist` and `import fasttrain.dist.ring` give the very same module objects as
`fasttrain.parallel` and `fasttrain.parallel.ring` (one copy of each module's state), through a
small import hook rather than a second copy of the package. The layer was renamed because `dist/`
is the conventional name of build output, which packaging and code-structure tools skip.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

_OLD, _NEW = __name__, __name__.rsplit(".", 1)[0] + ".parallel"


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, real_name: str):
        self.real_name = real_name

    def create_module(self, spec):
        return importlib.import_module(self.real_name)

    def exec_module(self, module):
        pass  # already executed under its real name


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(_OLD + "."):
            return importlib.util.spec_from_loader(fullname, _AliasLoader(_NEW + fullname[len(_OLD):]))
        return None


if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _AliasFinder())
sys.modules[_OLD] = importlib.import_module(_NEW)
