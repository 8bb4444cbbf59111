"""Step 3: prove the split is faithful before anything is written.

On real samples, the chained stage graphs must reproduce the monolithic ONNX exits (max abs diff
≤ 1e-5) and the monolithic ONNX must reproduce torch (≤ 1e-4). A failure is a
:class:`~hisd_edge.errors.ConversionError` and no bundle is written.

ONNX Runtime sessions here use few intra-op threads with spinning off: several stage sessions in
one process otherwise keep their worker threads spinning after each run and fight over the cores
(measured 1.2–2.8× slower chains on 2 cores; see the facts sheet).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from hisd_edge.errors import ConversionError, DependencyError

CHAIN_TOLERANCE = 1e-5
TORCH_TOLERANCE = 1e-4
DEFAULT_THREADS = 2


def make_session(model: Union[bytes, str], threads: int = DEFAULT_THREADS, qdq_as_written: bool = False) -> Any:
    """A CPU ONNX Runtime session that plays well next to other sessions in the same process.

    ``qdq_as_written`` keeps graph optimizations at the basic level so Q/DQ pairs run as the
    float arithmetic they define instead of being fused into ONNX Runtime's integer kernels
    (which saturate on x86 CPUs without VNNI; see :mod:`hisd_edge.convert.validate`).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise DependencyError("converting needs onnxruntime: pip install 'hisd-edge[workstation]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    if qdq_as_written:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def model_bytes(model: Any) -> bytes:
    return model.SerializeToString()


class Chain:
    """Stage sessions run one after another: ``input`` -> stage 0 -> ``feat0`` -> stage 1 ..."""

    def __init__(
        self,
        stage_models: Sequence[Union[bytes, str]],
        stage_outputs: Sequence[Sequence[str]],
        threads: int = DEFAULT_THREADS,
        batch_size: int = 256,
    ):
        self.sessions = [make_session(m, threads) for m in stage_models]
        self.stage_outputs = [list(o) for o in stage_outputs]
        self.batch_size = batch_size  # a model with a fixed batch dim must be fed exactly that many

    def run_stage(self, k: int, x: np.ndarray) -> Dict[str, np.ndarray]:
        session = self.sessions[k]
        feed = {session.get_inputs()[0].name: x}
        values = session.run(self.stage_outputs[k], feed)
        return dict(zip(self.stage_outputs[k], values))

    def run(
        self, x: np.ndarray, batch_size: Optional[int] = None, start: int = 0, stop: Optional[int] = None
    ) -> Dict[str, np.ndarray]:
        """Every output of stages ``start..stop-1`` for the whole of ``x`` (batched)."""
        stop = len(self.sessions) if stop is None else stop
        batch_size = batch_size or self.batch_size
        chunks: Dict[str, List[np.ndarray]] = {}
        for lo in range(0, len(x), batch_size):
            value = x[lo : lo + batch_size]
            for k in range(start, stop):
                outs = self.run_stage(k, value)
                for name, arr in outs.items():
                    chunks.setdefault(name, []).append(arr)
                value = outs.get(f"feat{k}", value)
        return {name: np.concatenate(parts) for name, parts in chunks.items()}


def run_full(session: Any, x: np.ndarray, names: Sequence[str], batch_size: int = 256) -> Dict[str, np.ndarray]:
    chunks: Dict[str, List[np.ndarray]] = {n: [] for n in names}
    input_name = session.get_inputs()[0].name
    for lo in range(0, len(x), batch_size):
        for name, arr in zip(names, session.run(list(names), {input_name: x[lo : lo + batch_size]})):
            chunks[name].append(arr)
    return {n: np.concatenate(parts) for n, parts in chunks.items()}


@dataclasses.dataclass
class VerifyReport:
    samples: int
    chain_max_abs_diff: List[float]  # per exit: chained stages vs monolithic ONNX
    torch_max_abs_diff: Optional[List[float]]  # per exit: monolithic ONNX vs torch (None without torch)
    chain_tolerance: float = CHAIN_TOLERANCE
    torch_tolerance: float = TORCH_TOLERANCE

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(np.nan_to_num(diff, nan=np.inf).max())


def verify(
    full_model: Union[bytes, str],
    chain: Chain,
    x: np.ndarray,
    num_exits: int,
    torch_model: Any = None,
    threads: int = DEFAULT_THREADS,
) -> VerifyReport:
    """Compare chain vs monolithic ONNX vs torch on ``x``; ConversionError if any exit is off.

    The fused confidence outputs are compared along with the exits they belong to.
    """
    names = [f"exit{k}" for k in range(num_exits)]
    session = make_session(full_model, threads)
    available = {o.name for o in session.get_outputs()}
    conf_names = [f"conf{k}" for k in range(num_exits) if f"conf{k}" in available]
    full = run_full(session, x, names + conf_names, batch_size=chain.batch_size)
    chained = chain.run(x)
    chain_diff = [
        max(
            [_max_abs(chained[n], full[n])]
            + ([_max_abs(chained[f"conf{k}"], full[f"conf{k}"])] if f"conf{k}" in conf_names else [])
        )
        for k, n in enumerate(names)
    ]
    torch_diff = None
    if torch_model is not None:
        import torch

        with torch.no_grad():
            outs = torch_model.eval()(torch.from_numpy(x))
        torch_diff = [_max_abs(full[n], o.detach().cpu().numpy()) for n, o in zip(names, outs)]
    report = VerifyReport(samples=len(x), chain_max_abs_diff=chain_diff, torch_max_abs_diff=torch_diff)
    bad = [k for k, d in enumerate(chain_diff) if not d <= CHAIN_TOLERANCE]
    if bad:
        k = bad[0]
        raise ConversionError(
            f"chained stages do not reproduce the monolithic ONNX at exit {k} (max abs diff {chain_diff[k]:.3g} > "
            f"{CHAIN_TOLERANCE:g} on {len(x)} samples); the split is unsafe, no bundle written"
        )
    if torch_diff is not None:
        bad = [k for k, d in enumerate(torch_diff) if not d <= TORCH_TOLERANCE]
        if bad:
            k = bad[0]
            raise ConversionError(
                f"the exported ONNX does not reproduce torch at exit {k} (max abs diff {torch_diff[k]:.3g} > {TORCH_TOLERANCE:g} "
                f"on {len(x)} samples); try another --opset; no bundle written"
            )
    return report
