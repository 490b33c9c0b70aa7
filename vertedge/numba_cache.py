"""Numba's on-disk cache of the CPU kernels: where it lives, and one line while it is being filled.

The `cache=True` kernels (drr, peaks, fusion, phantom) compile on their first call, 10-30 s in
all, and are stored for later runs. By default Numba stores them beside their module, in the
installed package's `__pycache__`: pip does not know those files, so an uninstall leaves them
behind in a `vertedge/` folder without `__init__.py`, which then shadows a later editable install
as an empty namespace package. They go to the user's cache folder instead.
"""

from __future__ import annotations

import logging
import os
import sys
from functools import cache
from pathlib import Path
from typing import Any

import platformdirs

CACHE_ENV = "NUMBA_CACHE_DIR"
COMPILE_NOTE = "compiling the CPU kernels once (10-30 s; cached in {})..."

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """The folder Numba caches compiled kernels in: $NUMBA_CACHE_DIR if set, else the user's cache folder.

    The default is `vertedge/numba` under the platform's user cache folder (`$XDG_CACHE_HOME` or
    `~/.cache` on Linux, `~/Library/Caches` on macOS, `%LOCALAPPDATA%` on Windows).
    """
    user_set = os.environ.get(CACHE_ENV)  # empty counts as unset, as it does for Numba
    if user_set:
        return Path(user_set)
    return Path(platformdirs.user_cache_dir("vertedge", appauthor=False)) / "numba"


def use_user_cache() -> None:
    """Point Numba's cache at `cache_dir()` unless the user chose one; run before any kernel is defined.

    Numba picks a kernel's cache folder when the kernel is defined (when its module is imported),
    from the environment as it read it: when numba was imported first, it is told to read it again.
    The variable is process-wide, so other Numba code in this process caches there too (each
    source file in its own sub-folder).
    """
    os.environ[CACHE_ENV] = str(cache_dir())
    if "numba" in sys.modules:
        from numba.core.config import reload_config

        reload_config()


@cache
def announce_compilation() -> None:
    """From now on, log COMPILE_NOTE once when a vertedge kernel starts compiling; repeated calls do nothing.

    Numba compiles, and broadcasts "numba:compile", only when neither memory nor the disk cache has
    the kernel for these argument types, so a warm cache stays silent. The note is a warning so that
    it reaches stderr without any logging configuration (Python's last-resort handler); an
    application silences it through the `vertedge.numba_cache` logger.
    """
    from numba.core import event

    class FirstCompilation(event.Listener):
        def __init__(self) -> None:
            self.noted = False

        def on_start(self, ev: Any) -> None:
            module = getattr(ev.data["dispatcher"].py_func, "__module__", None) or ""
            if not self.noted and module.startswith("vertedge."):
                self.noted = True
                log.warning(COMPILE_NOTE.format(cache_dir()))

        def on_end(self, ev: Any) -> None:
            pass

    event.register("numba:compile", FirstCompilation())
