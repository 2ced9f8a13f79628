"""Numba kernels (CPU, parallel=True, cache=True): the same op names and signatures as the
reference (docs/KERNELS.md). Imported only when the numba backend is used, so `import fasttrain`
never imports numba. Threads follow the package's single setting."""
import os
import re
import warnings
from pathlib import Path

import numba

from ... import settings

_HELPER_IMPORT = re.compile(r"^from \.(_\w+) import ", re.M)


def refresh_cache_stamps(folder: Path) -> list[str]:
    """Numba's on-disk cache keys a function on its own file's (mtime, size) only, so a kernel
    module would keep running the old code of a helper it inlines (`_vmath`) after the helper was
    edited. Give every module that imports a newer helper that helper's mtime: Numba then sees a
    changed source and recompiles it once. Returns the modules touched."""
    touched = []
    helper_mtimes = [h.stat().st_mtime for h in folder.glob("_[!_]*.py")]
    newest_helper = max(helper_mtimes, default=0.0)
    for module in sorted(folder.glob("[!_]*.py")):
        stat = module.stat()
        if stat.st_mtime >= newest_helper:  # newer than every helper: nothing to read (the usual case)
            continue
        helpers = _HELPER_IMPORT.findall(module.read_text())
        newest = max((folder.joinpath(h + ".py").stat().st_mtime for h in helpers
                      if folder.joinpath(h + ".py").exists()), default=0.0)
        if newest > stat.st_mtime:
            try:
                os.utime(module, (stat.st_atime, newest))
                touched.append(module.name)
            except OSError as e:
                warnings.warn(f"numba kernels: {module} is older than a helper it inlines and cannot be "
                              f"touched ({e}); its cached machine code may be stale: clear the Numba cache",
                              RuntimeWarning, stacklevel=2)
    return touched


refresh_cache_stamps(Path(__file__).parent)
numba.set_num_threads(min(settings.num_threads, numba.config.NUMBA_NUM_THREADS))
