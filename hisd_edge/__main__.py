import sys

try:
    from hisd_edge.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python was still importing: nothing had been done
    print("hisd-edge: interrupted; nothing was written, everything is as it was", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
