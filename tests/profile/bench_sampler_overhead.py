"""Benchmark (prints figures, not a test): how much the power sampler slows inference.

Runs a bundle forced to its last exit in alternating blocks with the sampler stopped and running
(pairs of blocks, so slow drifts cancel), reading a real INA3221 layout: the live board's sysfs, or
by default a recorded Orin Nano tree written to a temporary directory (same files, same syscalls;
real hwmon reads also wait on I2C, inside the kernel, without holding the GIL).

    .venv/bin/python tests/profile/bench_sampler_overhead.py BUNDLE [--pairs 30] [--per-block 200]
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
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--per-block", type=int, default=200)
    parser.add_argument("--period-ms", type=float, default=20.0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--sysfs-root", default=None)
    args = parser.parse_args()

    from hisd_edge.bundle import Bundle
    from hisd_edge.data import load_samples
    from hisd_edge.profile.power.ina3221 import Ina3221Source
    from hisd_edge.profile.runner import open_backend, run_to_exit
    from hisd_edge.profile.sampler import PowerSampler

    with tempfile.TemporaryDirectory() as tmp:
        root = args.sysfs_root or str(_recorded_orin_tree(Path(tmp)))
        source = Ina3221Source.discover(root)
        assert source is not None, f"no INA3221 under {root}"
        bundle = Bundle.open(args.bundle)
        x = load_samples("default:test", count=args.batch).tensors(bundle.preprocessing)
        last = bundle.num_stages - 1
        with open_backend(bundle, "onnxruntime", "fp32", {}) as backend:
            for _ in range(50):
                run_to_exit(backend, x, last)
            sampler = PowerSampler(source.open(), period_s=args.period_ms / 1000.0)
            ratios, off_all, on_all = [], [], []
            for _ in range(args.pairs):
                block_off = [run_to_exit(backend, x, last)[0] for _ in range(args.per_block)]
                sampler.start()
                block_on = [run_to_exit(backend, x, last)[0] for _ in range(args.per_block)]
                sampler.stop()
                ratios.append(np.median(block_on) / np.median(block_off))
                off_all += block_off
                on_all += block_on
            trace = sampler.trace()
        source.close()
    ratios_pct = 100.0 * (np.asarray(ratios) - 1.0)
    q1, med, q3 = np.percentile(ratios_pct, [25, 50, 75])
    print(
        f"bundle {bundle.name}, batch {args.batch}, last exit {last}, sysfs {root if args.sysfs_root else 'recorded Orin Nano tree'}"
    )
    print(
        f"sampler period {sampler.period_s * 1e3:.1f} ms, {len(source.rails)} rails, {len(trace.samples)} samples taken"
    )
    print(
        f"median latency without sampler {np.median(off_all):.4f} ms, with {np.median(on_all):.4f} ms "
        f"({args.pairs} block pairs x {args.per_block} runs)"
    )
    print(
        f"overhead: median of per-pair ratios {med:+.2f}% (IQR {q1:+.2f}% .. {q3:+.2f}%); "
        f"mean-based {100.0 * (np.mean(on_all) / np.mean(off_all) - 1.0):+.2f}%"
    )


if __name__ == "__main__":
    main()
