"""Atomic writes: artifacts appear complete or not at all, and replacing one has no window.

Everything hisd-edge writes (checkpoints, bundles, manifests, reports) is assembled under a
temporary name next to its target and then switched into place:

- a **file** by one ``rename`` over the target (POSIX makes it atomic);
- a **directory** (a bundle, a report) by an atomic *exchange* of the new and the old directory
  (Linux ``renameat2(RENAME_EXCHANGE)``, through ctypes), so there is no instant at which the
  target is missing or mixed, and it stays a plain directory that can be copied to a board. Where
  the kernel or the filesystem refuses the exchange (an old kernel, some network filesystems),
  it falls back to two renames (old away, new in); a kill between those two is repaired by the
  next run, which puts the old directory back.

A process killed at any point leaves the old or the new artifact, complete, plus temporary
leftovers (``.NAME.*.tmp`` / ``.NAME.*.old`` next to the target, ``hisd-*`` scratch directories in
the temp folder). Each temporary holds an ``flock`` while its writer lives, so the next write of
the same target recognises the leftovers of dead writers and removes them, without touching those
of a writer still running. Everything published is recorded (:func:`published`), so an
interrupted command can say exactly what it had already written.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import logging
import os
import platform
import shutil
import signal
import stat
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator, List, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]
LOG = logging.getLogger("hisd_edge.atomic")

_published: List[str] = []


def published() -> List[str]:
    """Paths published (created or replaced) by this process since :func:`reset_published`."""
    return list(_published)


def reset_published() -> None:
    del _published[:]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path: Path, directory: bool) -> None:
    """Give a temp file/dir the permissions a plain open()/mkdir() would have had.

    mkstemp/mkdtemp create 0600/0700 entries; artifacts (bundles copied to a board, shipped
    checkpoints) must honour the user's umask like any other file they write.
    """
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold back SIGINT/SIGTERM for a few instructions (a rename and its record).

    Ctrl-C then lands after the publication is recorded, never between the two, so the message
    of an interrupted command lists exactly what was written. Outside the main thread (where
    Python never runs signal handlers) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# -- locks and leftovers ----------------------------------------------------------------------------
def _lock(path: Path) -> int:
    """An open descriptor holding an exclusive flock on ``path`` (file or directory)."""
    fd = os.open(str(path), os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: a FIFO planted there cannot hang us
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def _is_abandoned(path: Path) -> bool:
    """True when no living writer holds ``path``'s lock (its writer died, or predates the locks)."""
    try:
        fd = _lock(path)
    except OSError:
        return False
    os.close(fd)
    return True


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except OSError:
        pass


def _leftovers(target: Path) -> List[Path]:
    prefix = f".{target.name}."
    try:
        names = os.listdir(target.parent)
    except OSError:
        return []
    return [target.parent / name for name in names if name.startswith(prefix) and name.endswith((".tmp", ".old"))]


def remove_leftovers(target: PathLike) -> List[Path]:
    """Clean up after writers of ``target`` that died (killed, crashed, powered off).

    If ``target`` is missing and an abandoned ``.old`` copy of it exists, the run that died was
    between the two renames of a fallback replace: the old one is put back. Every other
    abandoned temporary is removed. Returns what was removed or restored.
    """
    target = Path(target)
    done: List[Path] = []
    abandoned = [p for p in _leftovers(target) if _is_abandoned(p)]
    if not os.path.lexists(target):
        olds = sorted((p for p in abandoned if p.name.endswith(".old") and p.is_dir()), key=lambda p: p.stat().st_mtime)
        if olds:
            os.rename(olds[-1], target)
            LOG.warning("restored %s from %s (a run replacing it was killed half-way)", target, olds[-1].name)
            done.append(olds[-1])
            abandoned.remove(olds[-1])
    for path in abandoned:
        _remove(path)
        LOG.info("removed %s, left behind by a killed or failed run", path)
        done.append(path)
    return done


# -- renames ---------------------------------------------------------------------------------------
_AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
# renameat2 system call numbers, for a libc without the wrapper (glibc < 2.28).
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276, "armv7l": 382, "armv6l": 382, "ppc64le": 357, "i686": 353}


@functools.lru_cache(maxsize=None)
def _c_library() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; False where the kernel, libc or filesystem cannot do it.

    Real failures (a missing path, no space, permissions) raise OSError.
    """
    libc = _c_library() if sys.platform.startswith("linux") else None
    if libc is None:
        return False
    args = (os.fsencode(str(src)), os.fsencode(str(dst)))
    function = getattr(libc, "renameat2", None)
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        function.restype = ctypes.c_int
        result = function(_AT_FDCWD, args[0], _AT_FDCWD, args[1], flags)
    else:
        number = _SYS_RENAMEAT2.get(platform.machine())
        if number is None:
            return False
        libc.syscall.restype = ctypes.c_long
        result = libc.syscall(
            ctypes.c_long(number),
            ctypes.c_int(_AT_FDCWD),
            ctypes.c_char_p(args[0]),
            ctypes.c_int(_AT_FDCWD),
            ctypes.c_char_p(args[1]),
            ctypes.c_uint(flags),
        )
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def exchange(a: PathLike, b: PathLike) -> bool:
    """Atomically swap two existing paths; False where the system cannot (then nothing changed)."""
    return _renameat2(Path(a), Path(b), RENAME_EXCHANGE)


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, failing with FileExistsError if ``dst`` exists (even an empty directory)."""
    if _renameat2(src, dst, RENAME_NOREPLACE):
        return
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "exists", str(dst))
    os.rename(src, dst)


# -- files -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(target: PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to ``target``; rename it over ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp_path = Path(tmp)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # marks the temp file as in use until we close it
        yield tmp_path
        _publish_mode(tmp_path, directory=False)
        with signals_deferred():
            os.replace(tmp_path, target)
            _published.append(str(target))
        LOG.debug("wrote %s", target)
    finally:
        os.close(fd)
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(target: PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(target: PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def json_text(obj: Any) -> str:
    """Strict JSON (no NaN or Infinity, which other tools cannot read), indented, with a final newline."""
    import json

    try:
        return json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    except ValueError as exc:  # a NaN/inf reached a file format: a bug upstream, never written
        raise ValueError(f"refusing to write non-finite numbers as JSON ({exc})") from None


def write_json(target: PathLike, obj: Any) -> None:
    write_text(target, json_text(obj))


# -- directories -----------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_dir(target: PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it becomes ``target``.

    If ``target`` exists and ``replace`` is true, the new directory is exchanged with the old one
    in one atomic step only after it is complete, then the old one is deleted; if anything fails
    before that, the old one is untouched. Without ``replace`` an existing ``target`` raises
    FileExistsError (also when it appears while the block runs).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    lock = _lock(tmp)
    old: Optional[Path] = None
    try:
        yield tmp
        _publish_mode(tmp, directory=True)
        with signals_deferred():
            old = _switch(tmp, target, replace)
            _published.append(str(target))
        LOG.debug("wrote %s/", target)
    finally:
        os.close(lock)
        for leftover in (tmp, old):
            if leftover is not None and os.path.lexists(leftover):
                _remove(leftover)


def _switch(new: Path, target: Path, replace: bool) -> Optional[Path]:
    """Put ``new`` at ``target``; returns where the old directory went (to delete), if anywhere."""
    if not os.path.lexists(target):
        _rename_noreplace(new, target)
        return None
    if not replace:
        raise FileExistsError(errno.EEXIST, "exists", str(target))
    if exchange(new, target):
        return new  # the old directory now sits at the temporary name
    LOG.debug("%s: the filesystem refuses an atomic exchange; replacing with two renames", target)
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.rmdir(old)
    os.rename(target, old)  # a kill right after this is repaired by remove_leftovers: old goes back
    os.rename(new, target)
    return old


@contextlib.contextmanager
def scratch_dir(prefix: str = "hisd-edge-") -> Iterator[Path]:
    """A private scratch directory in the temp folder, removed afterwards.

    Like :func:`tempfile.TemporaryDirectory`, but locked while in use, so the next run removes
    the scratch directories of runs that were killed (their ``finally`` never ran).
    """
    base = Path(tempfile.gettempdir())
    try:
        stale = [base / name for name in os.listdir(base) if name.startswith(prefix)]
    except OSError:
        stale = []
    for path in stale:
        if path.is_dir() and not path.is_symlink() and _is_abandoned(path):
            _remove(path)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    lock = _lock(path)
    try:
        yield path
    finally:
        os.close(lock)
        shutil.rmtree(path, ignore_errors=True)


def check_writable(target: PathLike, flag: str = "--out") -> None:
    """Refuse, before any work, an output whose directory cannot be written (read-only, no permission).

    Tries a real temporary file in the nearest existing ancestor of ``target`` (``os.access``
    does not see every read-only mount); creates nothing that stays.
    """
    from hisd_edge.errors import InputError

    target = Path(target)
    directory = target.parent
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    if not directory.is_dir():
        raise InputError(f"{flag} {target}: {directory} is a file, not a directory; choose another {flag}")
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise InputError(
            f"{flag} {target}: cannot write in {directory} ({exc.strerror}); choose a writable {flag}"
        ) from None


# -- reading ---------------------------------------------------------------------------------------
def sha256_file(path: PathLike, chunk_bytes: int = 1 << 20) -> str:
    with open(path, "rb") as handle:
        return sha256_handle(handle, chunk_bytes)


def sha256_handle(handle: Any, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(chunk_bytes), b""):
        digest.update(block)
    return digest.hexdigest()


def is_regular_file(path: PathLike) -> bool:
    """True for a regular file that is not a symbolic link."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
