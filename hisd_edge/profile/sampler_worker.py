"""The sampling process: read power-monitor files at a fixed period, append one line per reading.

Run as a plain script by :class:`hisd_edge.profile.sampler.ProcessSampler` (standard library only, so
it starts fast and imports nothing of the package)::

    python sampler_worker.py SPEC_JSON OUT_FILE

SPEC_JSON: ``{"period_s": 0.1, "rails": [{"rail": "VDD_IN", "files": [mV, mA], "scale": 0.001}, ...],
"total_rails": ["VDD_IN"], "what": "..."}``: a rail's mW is the product of its files' first numbers
times ``scale``. Lines written (tab-separated, flushed at once)::

    S  <monotonic s>  <total mW>  <rail mW>...      a reading, stamped at the middle of its reads
    E  <monotonic s>  <message>                     a failed reading (the file could not be read)

Commands on stdin, one per line: ``pause`` (no reads until ``resume``), ``resume``, ``stop``.
Timestamps are ``time.monotonic()``: CLOCK_MONOTONIC, the same clock the measuring process uses.
"""

import json
import select
import sys
import time


def _number(path):
    with open(path, encoding="ascii", errors="replace") as handle:
        text = handle.read().strip()
    return float(text.split(" ")[0])


def _read(spec):
    begin = time.monotonic()
    rails = []
    for rail in spec["rails"]:
        value = float(rail["scale"])
        for path in rail["files"]:
            value *= _number(path)
        rails.append(value)
    end = time.monotonic()
    return 0.5 * (begin + end), rails


def main(argv):
    spec = json.loads(argv[1])
    names = [r["rail"] for r in spec["rails"]]
    in_total = [name in spec["total_rails"] for name in names]
    period = float(spec["period_s"])
    what = spec.get("what", "power monitor")
    paused = False
    stdin = sys.stdin
    next_s = time.monotonic()
    with open(argv[2], "a", encoding="utf-8", buffering=1) as out:
        while True:
            if not paused:
                try:
                    when, rails = _read(spec)
                    total = sum(v for v, counted in zip(rails, in_total) if counted)
                    values = "\t".join(f"{v:.6f}" for v in rails)
                    out.write(f"S\t{when:.9f}\t{total:.6f}\t{values}\n")
                except (OSError, ValueError) as exc:
                    message = " ".join(str(exc).split()) or exc.__class__.__name__
                    out.write(f"E\t{time.monotonic():.9f}\t{what} cannot be read ({message})\n")
                next_s += period
            else:
                next_s = time.monotonic() + period
            delay = max(0.0, next_s - time.monotonic())
            if delay == 0.0:
                next_s = time.monotonic()  # fell behind: re-anchor instead of bursting
            ready, _, _ = select.select([stdin], [], [], delay if not paused else None)
            if ready:
                line = stdin.readline()
                if not line or line.strip() == "stop":
                    break
                if line.strip() == "pause":
                    paused = True
                elif line.strip() == "resume":
                    paused = False
                    next_s = time.monotonic()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except KeyboardInterrupt:
        sys.exit(0)
