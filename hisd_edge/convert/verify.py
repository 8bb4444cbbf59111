"""Step 3: prove the split is faithful before anything is written.

On real samples, the chained stage graphs must reproduce the monolithic ONNX exits (max abs diff
≤ 1e-5) and the monolithic ONNX must reproduce torch (≤ 1e-4). A failure is a
:class:`~hisd_edge.errors.ConversionError` and no bundle is written.

Sessions and the chain runner are the runtime's (:mod:`hisd_edge.runtime.ort_session`), so the
chain verified here runs under the same session rules as the chain a board runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Union

import numpy as np

from hisd_edge.errors import ConversionError
from hisd_edge.runtime.ort_session import StageChain, open_session, run_batched

CHAIN_TOLERANCE = 1e-5
TORCH_TOLERANCE = 1e-4
DEFAULT_THREADS = 2

# The names the converter used before the session factory and the chain runner moved to the
# runtime side; kept so existing callers (tests, tools) read the same.
make_session = open_session
Chain = StageChain
run_full = run_batched


def model_bytes(model: Any) -> bytes:
    return model.SerializeToString()


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
    chain: StageChain,
    x: np.ndarray,
    num_exits: int,
    torch_model: Any = None,
    threads: int = DEFAULT_THREADS,
) -> VerifyReport:
    """Compare chain vs monolithic ONNX vs torch on ``x``; ConversionError if any exit is off.

    The fused confidence outputs are compared along with the exits they belong to.
    """
    names = [f"exit{k}" for k in range(num_exits)]
    session = open_session(full_model, threads)
    available = {o.name for o in session.get_outputs()}
    conf_names = [f"conf{k}" for k in range(num_exits) if f"conf{k}" in available]
    full = run_batched(session, x, names + conf_names, batch_size=chain.batch_size)
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
