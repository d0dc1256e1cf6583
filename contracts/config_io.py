"""Config I/O shared by the pipeline's and the trainer's configs: dotted ``--set`` overrides and
errors that name the dotted key.

A wrong key or value must fail before any work, with the key's name (``depth.batch_size: Input
should be greater than or equal to 1 (got 0)``), not with a traceback from a worker an hour later.
"""

from __future__ import annotations

import argparse
from typing import Any

import yaml
from pydantic import ValidationError


class ConfigError(ValueError):
    """A config that cannot run; the message names the offending key."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"depth.batch_size=32"`` -> (["depth", "batch_size"], 32); values are parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. depth.batch_size=32")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {text!r}: empty key")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted key in a nested dict, creating sections as needed."""
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


def format_validation_error(error: ValidationError) -> str:
    """One line per problem, each starting with the dotted key."""
    lines = []
    for err in error.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = f" (got {err['input']!r})" if err["type"] != "extra_forbidden" and "input" in err else ""
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{key}: {msg}{got}")
    return "invalid config:\n  " + "\n  ".join(lines)


def add_set_option(parser: argparse.ArgumentParser, example: str) -> None:
    """The ``--set KEY=VALUE`` option of every config-driven command (collected in ``args.overrides``)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config key, e.g. --set {example} (repeatable; values are YAML)",
    )
