"""Reading the small files stages leave for each other (JSON, JSON lines), checked against their shape.

One function turns a file into a checked document or one ShardFormatError sentence naming the file:
only regular files (files.read_regular_bytes), strict UTF-8, JSON without NaN/Infinity, and a shape
written as a few combinators (`record`, `list_of`, `integer`, ...), so a hand-edited or damaged file
never surfaces as a TypeError or KeyError three calls later. The formats themselves are declared
where they are written (shards.py, stats.py).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Callable

from alexnet_pipe.core.files import UnreadableFile, read_regular_bytes
from alexnet_pipe.core.errors import ShardFormatError

Check = Callable[[object, str], None]  # raises Mismatch(where, what) where the value does not fit


class Mismatch(Exception):
    def __init__(self, where: str, what: str):
        super().__init__(f"{where or 'the top level'}: {what}")


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__.replace("str", "string").replace("dict", "object")


def integer(low: int | None = 0, high: int | None = None) -> Check:
    def check(value, where):
        if isinstance(value, bool) or not isinstance(value, int):
            raise Mismatch(where, f"expected an integer, found {_kind(value)}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise Mismatch(where, f"{value} is outside {low}..{'' if high is None else high}")
    return check


def number(positive: bool = False) -> Check:
    def check(value, where):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Mismatch(where, f"expected a number, found {_kind(value)}")
        if not math.isfinite(value) or (positive and value <= 0):
            raise Mismatch(where, f"{value} is not a {'positive ' if positive else ''}finite number")
    return check


def string(pattern: str | None = None) -> Check:
    def check(value, where):
        if not isinstance(value, str):
            raise Mismatch(where, f"expected a string, found {_kind(value)}")
        if pattern and not re.fullmatch(pattern, value):
            raise Mismatch(where, f"{value[:40]!r} is not of the form {pattern}")
    return check


def boolean(value, where) -> None:
    if not isinstance(value, bool):
        raise Mismatch(where, f"expected true or false, found {_kind(value)}")


def anything(value, where) -> None:
    return None


def optional(check: Check) -> Check:
    def either(value, where):
        if value is not None:
            check(value, where)
    return either


def list_of(item: Check, length: int | None = None) -> Check:
    def check(value, where):
        if not isinstance(value, list):
            raise Mismatch(where, f"expected a list, found {_kind(value)}")
        if length is not None and len(value) != length:
            raise Mismatch(where, f"expected {length} items, found {len(value)}")
        for i, v in enumerate(value):
            item(v, f"{where}[{i}]")
    return check


def matrix(rows: int, cols: int) -> Check:
    return list_of(list_of(number(), cols), rows)


def record(fields: dict[str, Check], optional_keys: dict[str, Check] | None = None) -> Check:
    """An object with these keys (others are allowed: a newer writer may add some)."""
    def check(value, where):
        if not isinstance(value, dict):
            raise Mismatch(where, f"expected an object, found {_kind(value)}")
        for key, sub in fields.items():
            if key not in value:
                raise Mismatch(where, f"no {key!r}")
            sub(value[key], f"{where}.{key}" if where else key)
        for key, sub in (optional_keys or {}).items():
            if key in value:
                sub(value[key], f"{where}.{key}" if where else key)
    return check


def mapping_of(item: Check) -> Check:
    def check(value, where):
        if not isinstance(value, dict):
            raise Mismatch(where, f"expected an object, found {_kind(value)}")
        for key, v in value.items():
            item(v, f"{where}.{key}" if where else key)
    return check


def _no_constants(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(text: str):
    return json.loads(text, parse_constant=_no_constants)


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


def check_document(doc, shape: Check, path: Path, what: str, hint: str):
    try:
        shape(doc, "")
    except Mismatch as exc:
        raise ShardFormatError(f"{path} is not {what} ({exc}): {hint}") from None
    return doc


def read_json(path: Path, shape: Check, what: str, hint: str, missing: str | None = None):
    """The checked document of a JSON file: what = 'a manifest written by ...', hint = what to do."""
    text = read_text(path, what, hint, missing)
    try:
        doc = parse_json(text)
    except ValueError as exc:  # JSONDecodeError is a ValueError, as is a NaN
        raise ShardFormatError(f"{path} is not {what} (invalid JSON: {exc}): {hint}") from None
    return check_document(doc, shape, path, what, hint)


def read_json_lines(path: Path, row: Check, what: str, hint: str) -> list:
    """Every non-blank line of a JSON-lines file, each checked; an error names the line."""
    rows = []
    for n, line in enumerate(read_text(path, what, hint).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(check_document(parse_json(line), row, path, what, hint))
        except ValueError as exc:
            raise ShardFormatError(f"{path} line {n} is not {what} (invalid JSON: {exc}): {hint}") from None
        except ShardFormatError as exc:
            raise ShardFormatError(str(exc).replace(f"{path} is", f"{path} line {n} is", 1)) from None
    return rows
