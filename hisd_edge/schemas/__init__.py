"""The published, versioned schemas of hisd-edge's formats, and strict JSON reading.

The JSON Schema documents next to this module (draft 2020-12, shipped in the package) are the one
source of truth for what a valid file looks like; other tools can validate against them too:

=======================================  ===========================================================
``manifest-v1.schema.json``              a bundle's ``manifest.json`` (:mod:`hisd_edge.bundle`)
``checkpoint-metadata-v1.schema.json``   the metadata record inside a checkpoint (:mod:`hisd_edge.checkpoint`)
``preprocessing-v1.schema.json``         the preprocessing record (in both of the above)
``profile-v1.schema.json``               ``profile.json`` of a profile report, version 1 (still read)
``profile-v2.schema.json``               ``profile.json`` of a profile report, version 2 (:mod:`hisd_edge.profile.schema`)
``costs-v1.schema.json``                 what ``hisd-edge thresholds --costs`` reads (any profile.json)
=======================================  ===========================================================

Known fields are checked for type and range; unknown fields are allowed where the format is
additive. :func:`validate` turns the validator's most relevant complaint into one line that
names the field (``stages[0].files.fp32.bytes``), what is wrong, and the fix. :func:`read_json`
reads a file as untrusted input: a regular file, bounded in size, strict JSON (no NaN,
Infinity or overflowing numbers), bounded nesting.

jsonschema is imported only when something is validated (it costs ~0.1 s to import).
"""

from __future__ import annotations

import functools
import json
import math
import os
import stat
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Type

from hisd_edge.errors import DependencyError, HisdError, InputError

MANIFEST = "manifest-v1"
CHECKPOINT_METADATA = "checkpoint-metadata-v1"
PREPROCESSING = "preprocessing-v1"
PROFILE_V1 = "profile-v1"
PROFILE = "profile-v2"  # what hisd-edge profile writes now
COSTS = "costs-v1"
NAMES = (MANIFEST, CHECKPOINT_METADATA, PREPROCESSING, PROFILE_V1, PROFILE, COSTS)
MAX_DEPTH = 64  # nesting of JSON documents; the formats need fewer than 10 levels
MAX_REPORT_BYTES = 256 << 20  # a profile.json (its power trace grows with the run; an hour at 20 ms is ~10 MiB)

_DIR = Path(__file__).resolve().parent


def schema_path(name: str) -> Path:
    """Where the schema document ``name`` (one of :data:`NAMES`) is installed."""
    if name not in NAMES:
        raise KeyError(f"no schema {name!r}; known: {', '.join(NAMES)}")
    return _DIR / f"{name}.schema.json"


@functools.lru_cache(maxsize=None)
def load_schema(name: str) -> Dict[str, Any]:
    """The schema document ``name`` as a dict (cached; do not modify it)."""
    result: Dict[str, Any] = json.loads(schema_path(name).read_text(encoding="utf-8"))
    return result


@functools.lru_cache(maxsize=None)
def _validator(name: str, fragment: str = "") -> Any:
    try:
        from jsonschema import Draft202012Validator
        from referencing import Registry, Resource
    except ImportError:
        raise DependencyError(
            "checking hisd-edge's file formats needs jsonschema: pip install 'jsonschema>=4.18'"
        ) from None
    documents = [load_schema(n) for n in NAMES]
    registry = Registry().with_resources([(doc["$id"], Resource.from_contents(doc)) for doc in documents])
    schema = load_schema(name)
    if fragment:
        schema = {"$ref": f"{schema['$id']}#{fragment}"}
    return Draft202012Validator(schema, registry=registry)


# -- one-line messages -----------------------------------------------------------------------------
def field_name(parts: Sequence[Any]) -> str:
    """``["stages", 0, "files"]`` -> ``stages[0].files``."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return "an object"


def _shown(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return _json_type(value)
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe(error: Any) -> str:
    """A jsonschema ValidationError as one short phrase naming the field."""
    parts = list(error.absolute_path)
    where = field_name(parts)
    kind, expected, value = error.validator, error.validator_value, error.instance
    if kind == "required":
        missing = [key for key in expected if isinstance(value, dict) and key not in value]
        return f"field {field_name([*parts, missing[0] if missing else '?'])} is missing"
    head = f"field {where}" if where else "the document"
    hint = error.schema.get("description") if isinstance(error.schema, dict) else None
    if kind == "type":
        types = expected if isinstance(expected, list) else [expected]
        phrase = f"is {_json_type(value)}, must be {' or '.join(types)}"
    elif kind in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        relation = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[kind]
        phrase = f"is {_shown(value)}, must be {relation} {_number(expected)}"
    elif kind == "enum":
        phrase = f"is {_shown(value)}, must be one of {', '.join(json.dumps(v) for v in expected)}"
    elif kind == "const":
        phrase = f"is {_shown(value)}, must be {json.dumps(expected)}"
    elif kind in ("minItems", "maxItems"):
        phrase = f"has {len(value)} entries, must have at {'least' if kind == 'minItems' else 'most'} {expected}"
    elif kind in ("minLength", "maxLength"):
        phrase = f"has {len(value)} characters, must have at {'least' if kind == 'minLength' else 'most'} {expected}"
    elif kind in ("minProperties", "maxProperties"):
        phrase = f"has {len(value)} keys, must have at {'least' if kind == 'minProperties' else 'most'} {expected}"
    elif kind == "pattern":
        if hint:
            return f"{head} is {_shown(value)}: {hint}"
        phrase = f"is {_shown(value)}, which is not allowed"
    else:
        message = " ".join(str(error.message).split())
        phrase = message if len(message) <= 160 else message[:157] + "..."
    return f"{head} {phrase}" + (f" ({hint})" if hint else "")


def validate(
    instance: Any, name: str, *, what: str, fix: str, error: Type[HisdError] = InputError, fragment: str = ""
) -> None:
    """Raise ``error`` with one line (``what: field ...: problem; fix``) unless ``instance`` is valid.

    ``fragment`` validates against a part of the document, e.g. ``/$defs/policy``.
    """
    validator = _validator(name, fragment)
    from jsonschema.exceptions import best_match

    try:
        best = best_match(validator.iter_errors(instance))
    except RecursionError:
        raise error(f"{what}: nested too deeply; {fix}") from None
    if best is not None:
        raise error(f"{what}: {describe(best)}; {fix}")


def check_policy_thresholds(kind: str, thresholds: Sequence[Any], what: str = "policy") -> None:
    """Thresholds within the policy's score range (the manifest schema's ``threshold_range``).

    The one place the ranges live: bundle manifests and ``--thresholds`` on the command line are
    both checked here.
    """
    validate(
        {"kind": kind, "thresholds": list(thresholds)},
        MANIFEST,
        fragment="/$defs/policy",
        what=what,
        fix="give each exit a threshold in the policy's range, or none for 'never leave here'",
    )


# -- strict JSON -----------------------------------------------------------------------------------
def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} overflows a double")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 40:  # the formats' integers fit in 64 bits; a huge one is an attack on int()
        raise ValueError(f"integer of {len(text)} digits is out of range")
    return int(text)


def _depth(obj: Any) -> int:
    """Nesting depth of lists/dicts, without recursion."""
    deepest = 0
    stack: List[Any] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def loads(text: str) -> Any:
    """Parse strict JSON: ValueError (with a short reason) for NaN, Infinity, 1e999, deep nesting."""
    try:
        obj = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except RecursionError:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:
        raise ValueError(f"not strict JSON: {str(exc).splitlines()[0][:120]}") from None
    if _depth(obj) > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
    return obj


def read_json(
    path: Any,
    *,
    max_bytes: int,
    fix: str,
    error: Type[HisdError] = InputError,
    follow_symlinks: bool = True,
    what: Optional[str] = None,
) -> Any:
    """Read an untrusted JSON file: a regular file of at most ``max_bytes``, strict JSON.

    Every problem is ``error`` with one line: ``{what or path}: problem; fix``.
    """
    what = what or str(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(str(path), flags)
    except FileNotFoundError:
        raise error(f"{what}: no such file; {fix}") from None
    except OSError as exc:
        if not follow_symlinks and os.path.islink(str(path)):
            raise error(f"{what}: is a symbolic link, not a file; {fix}") from None
        raise error(f"{what}: cannot be read ({exc.strerror}); {fix}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        if stat.S_ISDIR(info.st_mode):
            raise error(f"{what}: is a directory, not a JSON file; {fix}")
        raise error(f"{what}: is not a regular file (a device, pipe or socket); {fix}")
    with os.fdopen(fd, "rb") as handle:
        if info.st_size > max_bytes:
            raise error(f"{what}: {info.st_size} bytes, more than the {max_bytes >> 20} MiB such a file can be; {fix}")
        try:
            raw = handle.read(max_bytes + 1)
        except OSError as exc:
            raise error(f"{what}: cannot be read ({exc.strerror}); {fix}") from None
    if len(raw) > max_bytes:
        raise error(f"{what}: grew past {max_bytes >> 20} MiB while being read; {fix}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{what}: not UTF-8 text, so not JSON; {fix}") from None
    try:
        return loads(text)
    except ValueError as exc:
        raise error(f"{what}: {exc}; {fix}") from None
