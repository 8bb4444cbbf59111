"""CUDA memory, streams, events and graphs behind one small interface (:class:`CudaBackend`).

``open_cuda()`` picks a binding lazily: pycuda where it is installed (the usual JetPack setup),
otherwise cuda-python's ``cuda.bindings``. Importing this package imports neither; without both,
``open_cuda`` raises a one-line :class:`~hisd_edge.errors.DependencyError` saying how to get one.
"""

from __future__ import annotations

import importlib.util
from typing import List

from hisd_edge.cuda.api import CudaBackend, DeviceBuffer, DeviceInfo, Event, Graph, HostBuffer, Stream
from hisd_edge.errors import DependencyError, InputError

#: Bindings in the order ``open_cuda("auto")`` tries them.
BINDINGS = ("pycuda", "cuda-python")

INSTALL_HINT = (
    "install a CUDA Python binding: pip install pycuda (builds against the CUDA toolkit: nvcc on PATH; "
    "on JetPack inside a venv made with --system-site-packages) or pip install cuda-python"
)


def _module_for(binding: str) -> str:
    return {"pycuda": "pycuda", "cuda-python": "cuda.bindings"}[binding]


def available_bindings() -> List[str]:
    """Bindings whose Python package is importable here (cheap: nothing is imported)."""
    found = []
    for binding in BINDINGS:
        try:
            if importlib.util.find_spec(_module_for(binding)) is not None:
                found.append(binding)
        except (ImportError, ValueError):  # a parent package missing or half-installed
            continue
    return found


def open_cuda(binding: str = "auto", device: int = 0, spin_wait: bool = False) -> CudaBackend:
    """Open ``device`` through ``binding`` ("auto", "pycuda" or "cuda-python")."""
    if binding not in ("auto", *BINDINGS):
        raise InputError(f"unknown CUDA binding {binding!r}; choose auto, {' or '.join(BINDINGS)}")
    candidates = available_bindings() if binding == "auto" else [binding]
    if not candidates:
        raise DependencyError(f"no CUDA Python binding found (tried {', '.join(BINDINGS)}); {INSTALL_HINT}")
    failures = []
    for name in candidates:
        try:
            if name == "pycuda":
                from hisd_edge.cuda.pycuda_backend import PyCudaBackend

                return PyCudaBackend(device, spin_wait=spin_wait)
            from hisd_edge.cuda.cudart_backend import CudaPythonBackend

            return CudaPythonBackend(device, spin_wait=spin_wait)
        except ImportError as exc:  # missing package, or a binding that cannot load libcuda
            failures.append(f"{name}: {exc}")
    raise DependencyError(f"cannot import a CUDA Python binding ({'; '.join(failures)}); {INSTALL_HINT}")


__all__ = [
    "BINDINGS",
    "INSTALL_HINT",
    "CudaBackend",
    "DeviceBuffer",
    "DeviceInfo",
    "Event",
    "Graph",
    "HostBuffer",
    "Stream",
    "available_bindings",
    "open_cuda",
]
