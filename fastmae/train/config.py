"""Run configurations as files: ``--config FILE`` in, ``OUTPUT_DIR/config.yaml`` (or ``.json``) out.

A config file is a mapping of flag names (the argparse ``dest``: ``batch_size``, ``pin_mem``, ...) to
values. Its values become the parser's defaults, so any flag given on the command line overrides
them. Every key and value is checked against the ``fastmae pretrain`` parser, the one place the
flags, their types, choices and defaults are defined. The file a run writes has the same keys plus
a ``resolved`` section (device, precision, lr, ... as the run worked them out) that is for the
reader and ignored on input. YAML needs PyYAML; without it the run writes JSON.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

RESOLVED_KEY = "resolved"  # written for the reader, ignored when read back
NOT_SAVED = ("config",)  # flags that make no sense inside a config file


def yaml_available() -> bool:
    return importlib.util.find_spec("yaml") is not None


def read_config_file(path: str | os.PathLike) -> dict[str, object]:
    """The mapping in a ``.yaml``/``.yml`` or ``.json`` file (ValueError naming the file otherwise)."""
    path = Path(path)
    where = f"--config {path}"
    if not path.is_file():
        raise ValueError(f"{where}: no such file")
    suffix = path.suffix.lower()
    text = path.read_text()
    if suffix in (".yaml", ".yml"):
        if not yaml_available():
            raise ValueError(f"{where}: reading YAML needs PyYAML (pip install pyyaml); or give the config as .json")
        import yaml

        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f"{where}: not valid YAML: {error}") from error
    elif suffix == ".json":
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not valid JSON: {error}") from error
    else:
        raise ValueError(f"{where}: expected a .yaml, .yml or .json file")
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{where}: expected a mapping of flag names to values, got {type(loaded).__name__}")
    return loaded


def _actions_by_dest(parser: argparse.ArgumentParser) -> dict[str, list[argparse.Action]]:
    actions: dict[str, list[argparse.Action]] = {}
    for action in parser._actions:
        if action.dest != "help" and action.option_strings:
            actions.setdefault(action.dest, []).append(action)
    return actions


def _checked_value(name: str, value: object, actions: list[argparse.Action], where: str) -> object:
    """``value`` for flag ``name``, converted like argparse would; ValueError naming both otherwise."""
    action = actions[0]
    flag = f"{where}: {name}"
    if value is None:
        if action.default is None:
            return None
        raise ValueError(f"{flag}: null is not allowed (default {action.default!r})")
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):  # switches
        if not isinstance(value, bool):
            raise ValueError(f"{flag}: expected true or false, got {value!r}")
        return value
    kind = action.type or str
    if isinstance(value, str) and kind is not str:
        try:
            value = kind(value)
        except ValueError as error:
            raise ValueError(f"{flag}: expected {kind.__name__}, got {value!r}") from error
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{flag}: expected {kind.__name__}, got {value!r}")
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{flag}: expected one of {', '.join(map(str, action.choices))}, got {value!r}")
    return value


def flag_values(parser: argparse.ArgumentParser, values: Mapping[str, object], where: str) -> dict[str, object]:
    """Check a mapping of flag names to values against ``parser``; the ``resolved`` section is dropped."""
    actions = _actions_by_dest(parser)
    checked: dict[str, object] = {}
    for name, value in values.items():
        if name == RESOLVED_KEY:
            continue
        if name not in actions or name in NOT_SAVED:
            close = difflib.get_close_matches(str(name), list(actions), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{where}: unknown key {name!r}: not a flag of 'fastmae pretrain'{hint}")
        checked[name] = _checked_value(name, value, actions[name], where)
    return checked


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; the values of its ``--config FILE`` (if any) stand in for the parser's defaults."""
    first = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    first.add_argument("--config", default=None)
    known, _ = first.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**flag_values(parser, read_config_file(known.config), f"--config {known.config}"))
    return parser.parse_args(argv)


def namespace_from(parser: argparse.ArgumentParser, values: Mapping[str, object], where: str) -> argparse.Namespace:
    """The parser's defaults with ``values`` (flag name -> value, checked) applied: what the Python API runs."""
    parser.set_defaults(**flag_values(parser, values, where))
    return parser.parse_args([])


def saved_flags(args: argparse.Namespace) -> dict[str, object]:
    """The flags of a run as a config file holds them."""
    return {k: v for k, v in vars(args).items() if k not in NOT_SAVED}


def save_config(args: argparse.Namespace, resolved: Mapping[str, object], output_dir: str | os.PathLike) -> Path:
    """Write ``output_dir/config.yaml`` (``config.json`` without PyYAML): the flags, then ``resolved``."""
    content = {**saved_flags(args), RESOLVED_KEY: dict(resolved)}
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if yaml_available():
        import yaml

        path, text = folder / "config.yaml", yaml.safe_dump(content, sort_keys=False)
    else:
        path, text = folder / "config.json", json.dumps(content, indent=1) + "\n"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
