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
        folder = root / "jobs"
        known = sorted(p.stem for p in folder.glob("*.toml"))
        there = (f"jobs in {folder}: {', '.join(known) or 'none'}" if folder.is_dir()
                 else f"{root} has no jobs/ folder: it is not a recall project folder")
        raise SpecError(f"job spec not found: {path} ({there})", hint=ROOT_HINT)
    return path


ROOT_HINT = ("run recall from the project folder, or name it with --root DIR or the environment variable "
             "RECALL_ROOT=DIR")


def load_spec(path: Path, overrides: list[str] | None = None) -> JobSpec:
    """Read, override and validate a job spec; raises SpecError naming the bad key, and blaming
    the `--set` that brought it in, else the spec file."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read job spec: {exc}") from None
    origins = Origins(str(path))
    for item in overrides or []:
        origins.add(apply_override(raw, item), item)
    spec = build_section(JobSpec, raw, where="", source=origins)
    spec.source = str(path)
    spec.explicit = frozenset(explicit_keys(JobSpec, raw))
    if not spec.job.name:
        spec.job.name = path.stem
    check_spec(spec, str(path), origins)
    return spec


class Origins:
    """Where each key of a spec came from: a `--set` on the command line, else the spec file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.overrides: list[tuple[tuple[str, ...], str]] = []

    def add(self, parts: list[str], item: str) -> None:
        self.overrides.append((tuple(parts), item))

    def of(self, key: tuple[str, ...]) -> str:
        """The `--set` that set `key` (or a table holding it, or a key inside it), else the file."""
        for parts, item in reversed(self.overrides):
            n = min(len(parts), len(key))
            if parts[:n] == key[:n]:
                return f"--set {item}"
        return self.path

    def of_label(self, label: str) -> str:
        """As `of`, for a key as messages name it: `[recall.u2i] k`, `[output]`."""
        section, _, key = label.strip("[").partition("]")
        parts = [p for p in section.split(".") if p] + [p for p in key.strip().split(".") if p]
        return self.of(tuple(parts))

    def __str__(self) -> str:
        return self.path


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


def apply_override(raw: dict[str, Any], item: str) -> list[str]:
    parts, value = parse_override(item)
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SpecError(f"--set {item!r}: {part} is not a section")
    node[parts[-1]] = value
    return parts


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


def build_section(cls: type, raw: Any, where: str, source: Origins | str) -> Any:
    """Build dataclass `cls` from a TOML table, refusing unknown keys and wrong types."""
    origins = source if isinstance(source, Origins) else Origins(source)
    section = tuple(where.split(".")) if where else ()
    label = f"[{where}]" if where else "the top level"
    if not isinstance(raw, dict):
        raise SpecError(f"{origins.of(section)}: {label} must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(fields), n=1)
        tip = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(fields)})"
        raise SpecError(f"{origins.of((*section, key))}: unknown key {key!r} in {label}{tip}")
    values = {}
    for name, value in raw.items():
        kind = hints[name]
        path = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(kind):
            values[name] = build_section(kind, value, path, origins)
            continue
        if not type_ok(value, kind):
            blame = origins.of((*section, name))
            raise SpecError(
                f"{blame}: [{where}] {name} must be {describe(kind)}, got {type(value).__name__} {value!r}"
                if where
                else f"{blame}: {name} must be a table, got {type(value).__name__}"
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


