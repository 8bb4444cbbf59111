"""hisd-edge: multi-exit (HiSD) networks from training to early-exit inference on NVIDIA Jetson.

The package is split by the step of the data flow each module serves (see README):
``models``/``train``/``checkpoint`` (workstation, torch), ``convert`` (workstation, onnx),
``runtime``/``build``/``profile`` (target; these never import torch or onnx-graphsurgeon).
Importing ``hisd_edge`` itself is cheap and imports neither torch nor onnx.
"""

__version__ = "0.1.0"

from hisd_edge.errors import HisdError

__all__ = ["HisdError", "__version__"]
