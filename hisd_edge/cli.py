"""``hisd-edge``: one verb per step of the flow.

Each verb lives in ``hisd_edge.commands.<verb>`` with ``register(subparsers)`` (pure argparse,
cheap) and ``run(args) -> int`` (imports what it needs). A :class:`~hisd_edge.errors.HisdError`
is the user's to fix: one line on stderr, exit status 2; so is an environment failure while
writing (no space left, a read-only or forbidden directory). Anything else is a bug and keeps
its traceback. Ctrl-C exits with status 130 and one line that says what had been written
(nothing, or the artifacts already published: every write is atomic). Libraries' warnings
(Python warnings, OpenCV's log) are shown only with ``-v``.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
import warnings
from typing import List, Optional

from hisd_edge import __version__, atomic
from hisd_edge.errors import HisdError

# Write failures that are the environment's, not a bug: reported as one line, exit status 2.
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left on the device; free some space or write elsewhere",
    errno.EDQUOT: "disk quota exceeded; free some space or write elsewhere",
    errno.EROFS: "the filesystem is read-only; write elsewhere",
    errno.EACCES: "permission denied; write elsewhere or fix the permissions",
    errno.EPERM: "operation not permitted; write elsewhere or fix the permissions",
}


def _interrupted(exc: BaseException) -> bool:
    """True when a Ctrl-C is behind ``exc`` (some libraries turn a KeyboardInterrupt during their import into
    an ImportError, which we would then report as a missing dependency)."""
    seen = exc.__context__
    for _ in range(16):
        if seen is None:
            return False
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__context__
    return False


def _interrupt_message(verb: str) -> str:
    done = atomic.published()
    what = "wrote " + ", ".join(done) + " before that" if done else "nothing was written, everything is as it was"
    return f"hisd-edge {verb}: interrupted; {what}"


def _written() -> str:
    done = atomic.published()
    return "; already written: " + ", ".join(done) if done else ""


LOG = logging.getLogger("hisd_edge.cli")


def _options(args: argparse.Namespace) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sorted(vars(args).items()) if k not in ("func", "verb"))


# Order shown in --help: the data flow.
VERBS = ["train", "convert", "inspect", "check", "build", "run", "thresholds", "bench", "profile", "report", "demo"]


def _available_verbs() -> List[str]:
    found = []
    for verb in VERBS:
        try:
            importlib.import_module(f"hisd_edge.commands.{verb}")
        except ModuleNotFoundError as exc:
            if exc.name == f"hisd_edge.commands.{verb}":
                continue  # verb not implemented in this version
            raise
        found.append(verb)
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hisd-edge",
        description="Multi-exit (HiSD) networks from training to early-exit inference on NVIDIA Jetson.",
    )
    parser.add_argument("--version", action="version", version=f"hisd-edge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    from hisd_edge.commands import add_verbose_argument

    for verb in _available_verbs():
        importlib.import_module(f"hisd_edge.commands.{verb}").register(sub)
    for verb_parser in sub.choices.values():  # `hisd-edge run -v ...` as well as `hisd-edge -v run ...`
        add_verbose_argument(verb_parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    try:
        parser = build_parser()  # imports every verb's module
    except KeyboardInterrupt:
        print("hisd-edge: interrupted; nothing was written, everything is as it was", file=sys.stderr)
        return 130
    args = parser.parse_args(argv)
    # -v shows the toolkit's own debug log; other libraries stay at warnings (matplotlib, PIL and
    # onnx log a lot at debug level, none of it about the user's job).
    logging.basicConfig(level=logging.WARNING, format="hisd-edge: %(levelname)s: %(message)s")
    logging.getLogger("hisd_edge").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    LOG.debug("hisd-edge %s %s: %s", __version__, args.verb, _options(args))
    atomic.reset_published()
    try:
        with warnings.catch_warnings():
            if args.verbose:
                logging.captureWarnings(True)
            else:
                warnings.simplefilter("ignore")  # numpy/torch/ORT warnings would print ahead of our one line
            return int(args.func(args) or 0)
    except HisdError as exc:
        if _interrupted(exc):
            print(_interrupt_message(args.verb), file=sys.stderr)
            return 130
        message = " ".join(str(exc).split())
        print(f"hisd-edge {args.verb}: error: {message}{_written()}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (e.g. `hisd-edge inspect ... | head`): stop quietly, like other CLI tools.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else "while writing: "
        print(f"hisd-edge {args.verb}: error: {where}{_ENVIRONMENT_ERRNOS[exc.errno]}{_written()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupt_message(args.verb), file=sys.stderr)
        return 130
    finally:
        logging.captureWarnings(False)


if __name__ == "__main__":
    raise SystemExit(main())
