"""Read SMPL `.pkl` files without a working chumpy.

The SMPL model files (https://smpl.is.tue.mpg.de/, "SMPL for Python") were pickled with
chumpy: some arrays (`v_template`, `shapedirs`, `posedirs`, `weights`, `J`) are `chumpy.ch.Ch`
objects. CoMotion's `comotion_demo.utils.smpl_kinematics` does `import chumpy` at import time and
`pickle.load`s the file. The PyPI chumpy (0.70) cannot be imported on Python >= 3.11
(`inspect.getargspec` was removed) or NumPy >= 1.24 (`np.bool` and friends were removed).

`ensure_chumpy()` keeps a chumpy that imports; otherwise it registers a minimal shim under the
names `chumpy` and `chumpy.ch` (and the other chumpy submodules pickles can name) whose only
class, `Ch`, restores a pickled object's state and behaves as its array (`np.array(ch)` returns
`ch.x`). That is all CoMotion needs: it converts every `Ch` to an array right after loading.
The shim only *reads*; it cannot evaluate chumpy expressions, and says so.
"""

from __future__ import annotations

import logging
import sys
import types
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SHIM_MARKER = "__stream_pose_chumpy_shim__"
# Submodules a chumpy pickle can name (chumpy/__init__.py imports these).
_SUBMODULES = ("ch", "ch_ops", "reordering", "logic", "linalg", "utils", "optimization")


class Ch:
    """Stand-in for any pickled chumpy object: its state, and its `x` as an array.

    Unpickling calls `__setstate__` with the object's `__dict__` (chumpy's `__getstate__` drops
    only its caches), so a plain `Ch` keeps its value in `x`.
    """

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @property
    def r(self) -> np.ndarray:
        """The value, as chumpy's `Ch.r`.

        Raises:
            TypeError: for a derived chumpy expression (no stored `x`), which the shim cannot
                evaluate; install a chumpy that imports, or use a model file without expressions.
        """
        if "x" not in self.__dict__:
            raise TypeError(
                f"the chumpy shim can only read stored arrays, not a derived chumpy expression "
                f"(state keys: {sorted(self.__dict__)}); install a working chumpy to load this file"
            )
        return np.asarray(self.__dict__["x"])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.r if dtype is None else self.r.astype(dtype)


def _any_class(attr: str) -> type:
    """Every public name of a shim module is `Ch`; dunders stay missing (inspect reads them)."""
    if attr.startswith("__"):
        raise AttributeError(attr)
    return Ch


def _module(name: str) -> types.ModuleType:
    """A shim module whose every attribute is `Ch`, so any pickled chumpy class resolves."""
    module = types.ModuleType(name, "stream-pose's read-only chumpy shim (labeler.chumpy_compat)")
    module.Ch = Ch
    module.__getattr__ = _any_class  # PEP 562: e.g. chumpy.reordering.Select
    setattr(module, SHIM_MARKER, True)
    return module


def install_shim() -> None:
    """Register the shim as `chumpy` and its submodules in `sys.modules` (idempotent)."""
    for name in [n for n in sys.modules if n == "chumpy" or n.startswith("chumpy.")]:
        del sys.modules[name]  # a half-imported real chumpy must not shadow the shim
    root = _module("chumpy")
    root.__path__ = []  # a package, so "import chumpy.ch" resolves from sys.modules
    sys.modules["chumpy"] = root
    for sub in _SUBMODULES:
        module = _module(f"chumpy.{sub}")
        sys.modules[module.__name__] = module
        setattr(root, sub, module)


def ensure_chumpy() -> str:
    """Make `import chumpy` work: the real package if it imports, else the shim.

    Returns:
        "chumpy" when the real package imported, "shim" when the shim was installed.
    """
    existing = sys.modules.get("chumpy")
    if existing is not None:
        return "shim" if getattr(existing, SHIM_MARKER, False) else "chumpy"
    try:
        import chumpy  # noqa: F401
    except Exception as exc:  # ImportError, or AttributeError from removed numpy/inspect names
        log.info("chumpy does not import (%s: %s); reading SMPL files with stream-pose's shim",
                 type(exc).__name__, exc)
        install_shim()
        return "shim"
    return "chumpy"
