"""Reading the small files stages leave for each other (JSON, JSON lines), checked against a typed model.

One function turns a file into a checked document or one ShardFormatError sentence naming the file and the
field: only regular files (files.read_regular_bytes), strict UTF-8, JSON without NaN/Infinity or a key given
twice, then a pydantic model (`Strict`: no coercion, no unknown keys, finite numbers) declared by the module
that owns the file (shards/manifest.py, stats/readers.py, train/runlog.py, train/checkpoint.py). So a
hand-edited or damaged file never surfaces as a TypeError or KeyError three calls later.
"""
from __future__ import annotations

import difflib
import json
import typing
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from alexnet_pipe.core.errors import ShardFormatError
from alexnet_pipe.core.files import UnreadableFile, read_regular_bytes


class Strict(BaseModel):
    """A file's format: exact JSON types (1 is not true, "3" is not 3), no unknown key, finite numbers."""
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


def _no_constants(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _unique_keys(pairs: list) -> dict:
    seen = {}
    for key, value in pairs:
        if key in seen:  # json keeps the last silently: a hand edit that left both would hide one
            raise ValueError(f"the key {key!r} appears twice in one object")
        seen[key] = value
    return seen


def parse_json(text: str):
    return json.loads(text, parse_constant=_no_constants, object_pairs_hook=_unique_keys)


def read_text(path: Path, what: str, hint: str, missing: str | None = None) -> str:
    """A regular file as strict UTF-8 text; ShardFormatError naming it otherwise."""
    try:
        data = read_regular_bytes(path)
    except FileNotFoundError:
        raise ShardFormatError(missing or f"{path} is missing: {hint}") from None
    except UnreadableFile as exc:
        raise ShardFormatError(f"{path} cannot be read as {what} ({exc.reason}): {hint}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ShardFormatError(f"{path} is not UTF-8 text (byte {exc.start}) and so not {what}: {hint}") from None


def _models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model whose object holds the last key of `loc` (list indexes and mapping keys are stepped over)."""
    for part in loc[:-1]:
        if isinstance(part, str) and part in model.model_fields:
            inner = _models_in(model.model_fields[part].annotation)
            if not inner:
                return None
            model = inner[0]
    return model


def field_name(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "the top level"


def _near_miss(error: dict, model: type[BaseModel]) -> str | None:
    """The field an unknown key was probably meant to be (a renamed or misspelt key), or None."""
    if error["type"] != "extra_forbidden":
        return None
    holder = _model_at(model, tuple(error["loc"]))
    close = difflib.get_close_matches(str(error["loc"][-1]), list(holder.model_fields) if holder else [], n=1)
    return close[0] if close else None


def explain(exc: ValidationError, model: type[BaseModel]) -> str:
    """The first problem of a validation as 'field X: what'; a misspelt key (which also leaves its field
    missing) first, with a 'did you mean'."""
    errors = exc.errors(include_url=False)
    error = next((e for e in errors if _near_miss(e, model)), errors[0])
    loc, kind = tuple(error["loc"]), error["type"]
    name = field_name(loc)
    if kind == "missing":
        return f"field {name} is missing"
    if kind == "extra_forbidden":
        meant = _near_miss(error, model)
        return f"field {name} is not one this file has" + (f" (did you mean {meant!r}?)" if meant else "")
    shown = repr(error.get("input"))
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return f"field {name}: {error['msg'][0].lower()}{error['msg'][1:]}, found {shown}"


def check_model(doc, model: type[BaseModel], path: Path, what: str, hint: str):
    """doc, validated by model (the document itself is returned: readers index it as JSON)."""
    try:
        model.model_validate(doc)
    except ValidationError as exc:
        raise ShardFormatError(f"{path} is not {what} ({explain(exc, model)}): {hint}") from None
    return doc


def read_model(path: Path, model: type[BaseModel], what: str, hint: str, missing: str | None = None):
    """The checked document of a JSON file: what = 'a manifest written by ...', hint = what to do."""
    text = read_text(path, what, hint, missing)
    try:
        doc = parse_json(text)
    except ValueError as exc:  # JSONDecodeError is a ValueError, as is a NaN or a repeated key
        raise ShardFormatError(f"{path} is not {what} (invalid JSON: {exc}): {hint}") from None
    return check_model(doc, model, path, what, hint)


def read_model_lines(path: Path, model: type[BaseModel], what: str, hint: str) -> list:
    """Every non-blank line of a JSON-lines file, each checked; an error names the line."""
    rows = []
    for n, line in enumerate(read_text(path, what, hint).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(check_model(parse_json(line), model, path, what, hint))
        except ValueError as exc:
            raise ShardFormatError(f"{path} line {n} is not {what} (invalid JSON: {exc}): {hint}") from None
        except ShardFormatError as exc:
            raise ShardFormatError(str(exc).replace(f"{path} is", f"{path} line {n} is", 1)) from None
    return rows
