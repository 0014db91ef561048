"""Reading a job spec: TOML, --set overrides, and strict typing of every key (exit 2 naming it)."""
from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

from recall.errors import SpecError
from recall.spec.check import check_spec
from recall.spec.sections import JobSpec


def resolve_job_path(job: str, root: Path) -> Path:
    """JOB is a path to a TOML file or the name of a file in jobs/."""
    candidate = Path(job)
    if candidate.suffix == ".toml" or "/" in job:
        path = candidate if candidate.is_absolute() else (Path.cwd() / candidate)
        if not path.exists() and not candidate.is_absolute():
            path = root / candidate
    else:
        path = root / "jobs" / f"{job}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in (root / "jobs").glob("*.toml"))
        raise SpecError(f"job spec not found: {path} (jobs in {root / 'jobs'}: {', '.join(known) or 'none'})")
    return path


def load_spec(path: Path, overrides: list[str] | None = None) -> JobSpec:
    """Read, override and validate a job spec; raises SpecError naming the bad key."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read job spec: {exc}") from None
    for item in overrides or []:
        apply_override(raw, item)
    spec = build_section(JobSpec, raw, where="", source=str(path))
    spec.source = str(path)
    spec.explicit = frozenset(explicit_keys(JobSpec, raw))
    if not spec.job.name:
        spec.job.name = path.stem
    check_spec(spec, str(path))
    return spec


def parse_override(item: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (["section", "key"], value); value read as TOML, else a string."""
    if "=" not in item:
        raise SpecError(f"--set {item!r}: expected section.key=value")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise SpecError(f"--set {item!r}: the key must name a section and a key, e.g. model.factors=64")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return parts, value


def apply_override(raw: dict[str, Any], item: str) -> None:
    parts, value = parse_override(item)
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SpecError(f"--set {item!r}: {part} is not a section")
    node[parts[-1]] = value


def explicit_keys(cls: type, raw: dict, prefix: str = "") -> list[str]:
    """The dotted keys a spec's TOML (with its overrides) sets, e.g. "model.factors"."""
    hints = typing.get_type_hints(cls)
    out = []
    for name, value in raw.items():
        kind = hints.get(name)
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            out += explicit_keys(kind, value, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def build_section(cls: type, raw: Any, where: str, source: str) -> Any:
    """Build dataclass `cls` from a TOML table, refusing unknown keys and wrong types."""
    label = f"[{where}]" if where else "the top level"
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: {label} must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(fields), n=1)
        tip = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(fields)})"
        raise SpecError(f"{source}: unknown key {key!r} in {label}{tip}")
    values = {}
    for name, value in raw.items():
        kind = hints[name]
        path = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(kind):
            values[name] = build_section(kind, value, path, source)
            continue
        if not type_ok(value, kind):
            raise SpecError(
                f"{source}: [{where}] {name} must be {describe(kind)}, got {type(value).__name__} {value!r}"
                if where
                else f"{source}: {name} must be a table, got {type(value).__name__}"
            )
        values[name] = float(value) if kind is float else value
    return cls(**values)


def type_ok(value: Any, kind: Any) -> bool:
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    if origin is Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(type_ok(value, a) for a in args if a is not type(None))
    if origin is list:
        return isinstance(value, list) and all(type_ok(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(type_ok(v, args[1]) for v in value.values())
    raise TypeError(f"unsupported spec type {kind}")


def describe(kind: Any) -> str:
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args if a is not type(None))
    if origin is list:
        return f"a list of {describe(args[0])}"
    if origin is dict:
        return f"a table of {describe(args[1])}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]


