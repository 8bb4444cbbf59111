"""Benchmark (prints figures, not a test): how much power sampling slows inference, thread vs process.

Runs a bundle forced to its last exit in interleaved blocks, in a seeded random order per round:
no sampling, sampling from a thread of this process, sampling from its own process (what
``hisd-edge profile`` does for sysfs monitors). Each round gives one ratio of block medians per
sampler against the round's no-sampling block, so slow drifts cancel. It reads a real INA3221 layout:
the live board's sysfs, or by default a recorded Orin Nano tree written to a temporary directory (same
files, same syscalls; on a board the reads also wait on I2C inside the kernel).

    .venv/bin/python tests/profile/bench_sampler_overhead.py BUNDLE [--rounds 30] [--per-block 200]
        [--period-ms 20] [--batch 1] [--sysfs-root DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path

import numpy as np


def _recorded_orin_tree(directory: Path) -> Path:
    spec = importlib.util.spec_from_file_location("profile_conftest", Path(__file__).with_name("conftest.py"))
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module.write_tree(directory / "orin_nano_jp6", module.board_files("orin_nano_jp6"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--per-block", type=int, default=200)
    parser.add_argument("--period-ms", type=float, default=20.0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--sysfs-root", default=None)
    args = parser.parse_args()

    from hisd_edge.bundle import Bundle
    from hisd_edge.data import load_samples
    from hisd_edge.profile.power.ina3221 import Ina3221Source
    from hisd_edge.profile.runner import open_backend, run_to_exit
    from hisd_edge.profile.sampler import PowerSampler, ProcessSampler

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.sysfs_root or str(_recorded_orin_tree(Path(tmp)))
        source = Ina3221Source.discover(root)
        assert source is not None, f"no INA3221 under {root}"
        bundle = Bundle.open(args.bundle)
        x = load_samples("default:test", count=args.batch).tensors(bundle.preprocessing)
        last = bundle.num_stages - 1
        period = args.period_ms / 1000.0
        samplers = {"thread": PowerSampler(source.open(), period_s=period), "process": ProcessSampler(source, period)}
        ratios = {name: [] for name in samplers}
        taken = dict.fromkeys(samplers, 0)
        with open_backend(bundle, "onnxruntime", "fp32", {}) as backend:
            for _ in range(50):
                run_to_exit(backend, x, last)
            samplers["process"].start()
            samplers["process"].pause()
            for _ in range(args.rounds):
                medians = {}
                for condition in rng.permutation(["none", "thread", "process"]):
                    if condition == "thread":
                        samplers["thread"].start()
                    elif condition == "process":
                        samplers["process"].resume()
                    block = [run_to_exit(backend, x, last)[0] for _ in range(args.per_block)]
                    if condition == "thread":
                        samplers["thread"].stop()
                    elif condition == "process":
                        samplers["process"].pause()
                    medians[str(condition)] = float(np.median(block))
                for name in samplers:
                    ratios[name].append(medians[name] / medians["none"])
            for name, sampler in samplers.items():
                taken[name] = len(sampler.stop().samples)
        source.close()
    print(
        f"bundle {bundle.name}, batch {args.batch}, last exit {last}, sysfs {root if args.sysfs_root else 'recorded Orin Nano tree'}, "
        f"{len(source.rails)} rails, period {args.period_ms:g} ms, {args.rounds} rounds x {args.per_block} runs per block"
    )
    for name in samplers:
        pct = 100.0 * (np.asarray(ratios[name]) - 1.0)
        q1, med, q3 = np.percentile(pct, [25, 50, 75])
        print(f"{name:>8} sampler: overhead median {med:+.2f}% (IQR {q1:+.2f}% .. {q3:+.2f}%), {taken[name]} samples")


if __name__ == "__main__":
    main()
