"""Helpers of the hostile-input tests (imported by their conftest and test modules)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
import struct
import zlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

PROFILE_FAST = [
    "--power",
    "none",
    "--warmup",
    "0",
    "--repeats",
    "2",
    "--idle-seconds",
    "0.1",
    "--energy-seconds",
    "0.1",
    "--energy-inferences",
    "2",
    "--overhead-pairs",
    "0",
    "--sweep-points",
    "3",
    "--no-progress",
]


def png_header_bomb(path: Path, side: int = 20000) -> Path:
    """A real, valid grayscale PNG of side x side pixels (all black): about 1 MB that decodes to side^2 bytes.

    Written with streaming compression, so making it never holds the pixels in memory.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + pixels
    parts = []
    for _ in range(side):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    with open(path, "wb") as handle:
        handle.write(
            b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
        )
    return path


def tree_snapshot(root: Path) -> Dict[str, Tuple[str, str]]:
    """Every entry under ``root`` (symlinks not followed): relative path -> (kind, content digest or target)."""
    out: Dict[str, Tuple[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(mode):
                out[rel] = ("dir", "")
            elif stat.S_ISREG(mode):
                size = os.lstat(path).st_size
                if size > (64 << 20):  # sparse giants: size only
                    out[rel] = ("file", f"size={size}")
                else:
                    out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                out[rel] = ("special", oct(mode))
    return out


@dataclasses.dataclass
class World:
    root: Path
    bundle: Path
    outside: Path

    @property
    def manifest_path(self) -> Path:
        return self.bundle / "manifest.json"

    def manifest(self) -> Dict[str, Any]:
        return json.loads(self.manifest_path.read_text())

    def write_manifest(self, manifest: Any) -> None:
        self.manifest_path.write_text(json.dumps(manifest, indent=1))

    def edit(self, change) -> None:  # type: ignore[no-untyped-def]
        manifest = self.manifest()
        change(manifest)
        self.write_manifest(manifest)

    def snapshot(self) -> Dict[str, Tuple[str, str]]:
        return tree_snapshot(self.root)


@dataclasses.dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> List[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def assert_refused(result: Result, *needles: str, verb: Optional[str] = None) -> str:
    """Exit status 2, exactly one line on stderr, no traceback, each needle in the line."""
    assert result.code == 2, (result.code, result.out[-2000:], result.err[-2000:])
    assert "Traceback" not in result.err
    assert len(result.lines) == 1, result.err
    line = result.lines[0]
    assert line.startswith(f"hisd-edge {verb}: error: " if verb else "hisd-edge "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line
