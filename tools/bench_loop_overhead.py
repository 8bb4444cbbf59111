"""Python per stage above a bare loop, with ONNX Runtime taken out of the timing (issue 17).

Every stage session's ``run`` is replaced by returning the outputs of one real run, so what is
timed is only the Python around the calls: the runtime's batch-1 chain (``run_early_exit`` with
thresholds that are never met, so every stage runs) against a bare loop over the same stage
objects. Paired repetitions in a shuffled order; prints the median and the 10th percentile.

    python tools/bench_loop_overhead.py BUNDLE [REPS]
"""

from __future__ import annotations

import sys
import time

import numpy as np

from hisd_edge.bundle import Bundle
from hisd_edge.data import load_samples
from hisd_edge.runtime.backend import create_backend
from hisd_edge.runtime.early_exit import run_early_exit
from hisd_edge.runtime.policies import make_policy


def main(path: str, reps: int = 60) -> None:
    bundle = Bundle.open(path)
    x = load_samples("default:test", count=100).tensors(bundle.preprocessing)
    rows = [np.ascontiguousarray(x[i : i + 1]) for i in range(len(x))]
    num = bundle.num_stages
    never = make_policy("max_prob", [None] * num, num)
    backend = create_backend("onnxruntime", bundle, intra_op_threads=1).activate()
    stages = backend._stages  # type: ignore[attr-defined]
    value = rows[0]
    for stage in stages:  # one real run, then the outputs are frozen
        frozen = [o.copy() for o in stage.run(value)]
        stage.run = lambda _value, frozen=frozen: frozen
        if stage.feat_index >= 0:
            value = frozen[stage.feat_index]

    def bare(row: np.ndarray) -> None:
        value = row
        for stage in stages:
            outs = stage.run(value)
            if stage.feat_index >= 0:
                value = outs[stage.feat_index]

    variants = {"loop": lambda row: run_early_exit(backend, never, row), "bare": bare}
    times: dict = {name: [] for name in variants}
    rng = np.random.default_rng(0)
    for _ in range(reps):
        names = list(variants)
        rng.shuffle(names)
        for name in names:
            run = variants[name]
            begin = time.perf_counter()
            for row in rows:
                run(row)
            times[name].append((time.perf_counter() - begin) / len(rows) * 1e6)
    per_stage = (np.array(times["loop"]) - np.array(times["bare"])) / num
    print(
        f"Python us per stage above the bare loop: median {np.median(per_stage):.2f}, p10 "
        f"{np.percentile(per_stage, 10):.2f} (target <= 2); us per frame ({num} stages), p10: loop "
        f"{np.percentile(times['loop'], 10):.2f}, bare {np.percentile(times['bare'], 10):.2f}; {reps} paired reps"
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 60)
