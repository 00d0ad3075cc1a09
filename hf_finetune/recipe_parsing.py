"""Reading recipes: YAML loaded as plain data, then parsed into one dataclass per block.

A recipe is a YAML file with a ``method`` and one block per dataclass::

    method: supervised
    model: {model_name_or_path: sentence-transformers/all-MiniLM-L6-v2}
    data: {dataset: bbc_news, text_column: text}
    lora: {lora_r: 8}                # optional: the block's presence turns LoRA on
    training: {output_dir: outputs/run, num_train_epochs: 1}

Each block's values go to its dataclass field by field, converted by the same ``HfArgumentParser``
actions as ``--key value`` on the command line (which overrides the YAML), so both get the same type
checks and ``--help`` lists every field with its help text. The YAML is never re-joined into a
command line: a value cannot turn into an option. :func:`load_yaml` reads plain data only (no
tags, no duplicate keys, bounded aliases) and :func:`~hf_finetune.config.check_ranges` refuses
numbers no run can mean. The blocks themselves live in :mod:`hf_finetune.config`.

Example:
    >>> from hf_finetune.config import ModelArguments
    >>> recipe = parse_recipe({"method": "demo", "model": {"model_name_or_path": "m"}}, {"model": ModelArguments})
    >>> recipe.model.model_name_or_path
    'm'
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from .config import Recipe, check_ranges


def recipe_fields(cls: type) -> dict[str, dataclasses.Field]:
    """The fields of a block's dataclass that a recipe may set.

    A config class lists in ``recipe_shared_fields`` (a ``ClassVar``) the fields another block of the
    same recipe already states (SFT's ``max_length`` is ``data.max_length``; ``trust_remote_code``
    belongs to the ``model`` block): the Python API takes them as usual, recipes state each once.
    """
    shared = set(getattr(cls, "recipe_shared_fields", ()))
    return {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in shared}


class _RecipeParser(HfArgumentParser):
    """Raises ``ValueError`` instead of exiting, so the Python API reports bad recipes as errors."""

    def error(self, message):  # noqa: D102 - argparse hook
        raise ValueError(f"recipe: {message}")

    def _add_dataclass_arguments(self, dtype):
        # As HfArgumentParser's, minus the fields another block owns (see recipe_fields): flattened
        # --key names stay unique without making those fields init=False for Python users.
        if not getattr(dtype, "recipe_shared_fields", ()):
            return super()._add_dataclass_arguments(dtype)
        from typing import get_type_hints

        hints = get_type_hints(dtype)
        for f in recipe_fields(dtype).values():
            f.type = hints[f.name]
            self._parse_dataclass_field(self, f)


def build_parser(blocks: dict[str, type]) -> HfArgumentParser:
    """One parser over every block's dataclass (field names are unique across blocks)."""
    return _RecipeParser(list(blocks.values()))


# --- YAML ---------------------------------------------------------------------------------------

MAX_RECIPE_BYTES = 1_000_000  # recipes are a few KB; a bigger file is a mistake (or an attack)
MAX_RECIPE_VALUES = 100_000  # values after alias expansion: bounds "billion laughs" documents


class _RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also refuses duplicate keys (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # unhashable key: the parent reports it
                    continue
                if first != key_node.start_mark.line + 1:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first given on line {first})", key_node.start_mark
                    )
        return super().construct_mapping(node, deep)


def _count_values(data: Any, limit: int) -> int:
    """Values in ``data`` with every alias expanded, counting at most to ``limit + 1`` (cycles stop there)."""
    count, stack = 0, [data]
    while stack:
        item = stack.pop()
        count += 1
        if count > limit:
            return count
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set)):
            stack.extend(item)
    return count


def _yaml_error(path: Path, err: yaml.YAMLError) -> ValueError:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if "python/" in problem:
        return ValueError(
            f"{where}: {problem.split(' for the tag ', 1)[-1].strip() or 'a !!python tag'} is a Python tag, which "
            "recipes do not accept (loading it would run code): write plain values instead."
        )
    if "duplicate key" in problem:
        return ValueError(f"{where}: {problem}: keep one of them.")
    if "could not determine a constructor" in problem:
        return ValueError(f"{where}: {problem}: recipes take plain YAML values only (no custom tags).")
    return ValueError(f"{where}: invalid YAML: {problem}. Fix the syntax (indentation, quotes, colons) there.")


def load_yaml(path: str | Path, what: str = "recipe") -> Any:
    """Parse a YAML file as plain data: no tags that run code, no duplicate keys, bounded alias expansion.

    Every problem becomes a ``ValueError`` that names the file (and the line when YAML knows it).

    Example:
        >>> load_yaml("recipes/quickstart.yaml")["method"]  # doctest: +SKIP
        'supervised'
    """
    path = Path(path)
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not found"
        raise ValueError(f"{what.capitalize()} file {kind}: {path}. Give the path of a .yaml file.")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ValueError(f"Cannot read {what} {path}: {err.strerror or err}. Check its permissions.") from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise ValueError(f"{path} is {len(raw):,} bytes; a {what} is a few KB of YAML (limit {MAX_RECIPE_BYTES:,}).")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}): save the {what} as UTF-8.") from None
    try:
        loader = _RecipeLoader(text)  # a yaml.SafeLoader: builds plain data only, never Python objects
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        raise _yaml_error(path, err) from None
    except RecursionError:
        raise ValueError(f"{path}: the YAML nests too deeply: a {what} is a few levels of mappings.") from None
    if _count_values(data, MAX_RECIPE_VALUES) > MAX_RECIPE_VALUES:
        raise ValueError(
            f"{path}: its anchors and aliases (&name / *name) expand to more than {MAX_RECIPE_VALUES:,} values: "
            "write the values out instead."
        )
    return data


def read_recipe_yaml(path: str | Path) -> dict[str, Any]:
    """Read a recipe as plain data (see :func:`load_yaml`) and check its shape."""
    path = Path(path)
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a recipe is a YAML mapping with 'method' and blocks such as 'model', 'data'.")
    if "method" not in data:
        raise ValueError(f"{path}: missing 'method' (for example `method: supervised`).")
    if not isinstance(data["method"], str) or not data["method"]:
        raise ValueError(f"{path}: method={data['method']!r}: give one name, for example `method: supervised`.")
    for key in data:
        if not isinstance(key, str):
            raise ValueError(f"{path}: top-level key {key!r} is not a name: use block names such as 'model', 'data'.")
    return data


# --- recipe data -> dataclasses -----------------------------------------------------------------


def _field_actions(parser: HfArgumentParser, blocks: dict[str, type]) -> dict[str, tuple[str, Any]]:
    """Field name -> (block name, the argparse action that converts and checks its values)."""
    actions = {}
    for name, cls in blocks.items():
        for f in recipe_fields(cls).values():
            actions[f.name] = (name, parser._option_string_actions[f"--{f.name}"])
    return actions


def _convert(block: str, key: str, value: Any, action: Any) -> Any:
    """One recipe value converted as ``--key value`` would be, without ever building a command line.

    A list goes element by element into a list field and is refused by a scalar one, so no value can
    become an option of its own (``[a, --trust_remote_code, "true"]`` is three class names).
    """
    def one(item: Any) -> Any:
        if isinstance(item, (dict, list)):
            item = json.dumps(item)  # structured values (stages, kwargs) reach the field as JSON text
        elif isinstance(item, bool):
            item = str(item).lower()
        else:
            item = str(item)
        try:
            converted = action.type(item) if action.type is not None else item
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            name = getattr(action.type, "__name__", "value")
            kind = {"string_to_bool": "boolean", "<lambda>": "value"}.get(name, name)
            example = {"float": "a number such as 0.001", "int": "a whole number", "boolean": "true or false"}
            raise ValueError(
                f"{block}.{key}={value!r}: invalid {kind} value; write {example.get(kind, 'a ' + kind)}."
            ) from None
        if action.choices is not None and converted not in action.choices:
            raise ValueError(f"{block}.{key}={value!r}: use one of {list(action.choices)}.")
        return converted

    takes_list = action.nargs in ("+", "*")
    nested = isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value)
    if isinstance(value, list) and not nested:
        if not takes_list:
            if len(value) != 1:
                raise ValueError(f"{block}.{key} takes one value, got the list {value!r}.")
            return one(value[0])
        return [one(v) for v in value]
    return [one(value)] if takes_list else one(value)


def _unknown_key(key: str, block: str | None, known: Any) -> ValueError:
    hint = difflib.get_close_matches(key, list(known), n=1)
    fix = f" Did you mean '{hint[0]}'?" if hint else ""
    where = f" in block '{block}'" if block else ""
    return ValueError(f"Unknown key '{key}'{where}.{fix} Run `hf-finetune train --help` to list the fields.")


def _parse_cli(parser: HfArgumentParser, argv: list[str], actions: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    """Values given on the command line (only those), converted by their fields' argparse actions."""
    parser.allow_abbrev = False  # `--learning 1` must not quietly mean --learning_rate
    for action in parser._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    namespace, rest = parser.parse_known_args(argv)
    if rest:
        flag = next((a for a in rest if a.startswith("-")), None)
        if flag is None:
            raise ValueError(f"recipe: unexpected value(s) {rest} on the command line: use --key value.")
        name = flag.lstrip("-").split("=", 1)[0].replace("-", "_")
        err = _unknown_key(name, None, actions)
        raise ValueError(f"Unknown option {flag}.{str(err).split('.', 1)[1]}")
    return vars(namespace)


DATA_PATH_FIELDS = ("dataset", "eval_dataset", "test_dataset")


def resolve_data_path(value: Any, source: str | None) -> Any:
    """A relative data path of the recipe ``source``, found from the current folder first, else beside the recipe.

    Recipes name their data relative to the checkout (``recipes/rl/data/...``), which only works from its root.
    When ``value`` does not exist from the current folder, the recipe's folder and then each folder above it
    are tried, and the first place where it exists is returned (absolute); otherwise ``value`` is returned
    unchanged (a Hub id, a bundled name, or a path that the data loader then reports as missing).

    Example:
        >>> resolve_data_path("bbc_news", "recipes/quickstart.yaml")
        'bbc_news'
    """
    if not source or not isinstance(value, str) or not value or Path(value).is_absolute() or Path(value).exists():
        return value
    folder = Path(source).resolve().parent
    for base in (folder, *folder.parents):
        candidate = base / value
        if candidate.exists():
            return str(candidate)
    return value


def parse_recipe(
    data: dict[str, Any],
    blocks: dict[str, type],
    overrides: list[str] | dict[str, Any] | None = None,
    source: str | None = None,
) -> Recipe:
    """Turn recipe data (from YAML) plus overrides into a :class:`Recipe`.

    Each block's values go to its dataclass field by field, converted and checked by the same
    ``HfArgumentParser`` actions as the command line, so YAML and ``--key value`` agree on types
    while no YAML value is ever re-read as an option. ``overrides`` is a command line
    (``["--num_train_epochs", "1"]``) or a mapping of field name to value (``{"num_train_epochs": 1}``);
    either replaces the YAML's values. Blocks missing from the YAML get their defaults. The ``lora``
    block, when present, sets ``use_lora: true`` unless it says otherwise. Every block's numbers are
    range-checked (:func:`check_ranges`) before anything loads. Relative data paths of the YAML that do not
    exist from the current folder are looked up beside the recipe ``source`` (:func:`resolve_data_path`).
    """
    data = dict(data)
    method = data.pop("method")
    unknown = set(data) - set(blocks)
    if unknown:
        raise ValueError(
            f"Unknown block(s) {sorted(map(str, unknown))} for method '{method}': "
            f"this method takes {sorted(blocks)}."
        )
    parser = build_parser(blocks)
    actions = _field_actions(parser, blocks)
    values: dict[str, dict[str, Any]] = {name: {} for name in blocks}
    for name, cls in blocks.items():
        given = data.get(name)
        given = {} if given is None else given
        if not isinstance(given, dict):
            raise ValueError(f"Block '{name}' must be a mapping of key: value, got {type(given).__name__}.")
        if name == "lora" and name in data:
            given = {"use_lora": True, **given}
        known = recipe_fields(cls)
        for key, value in given.items():
            if key not in known:
                raise _unknown_key(str(key), name, known)
            if value is None or value == []:
                continue  # the field's default
            if name == "data" and key in DATA_PATH_FIELDS:  # not overrides: those are typed relative to the shell
                value = resolve_data_path(value, source)
            values[name][key] = _convert(name, key, value, actions[key][1])
    if isinstance(overrides, dict):
        for key, value in overrides.items():
            if key not in actions:
                raise _unknown_key(str(key), None, actions)
            block, action = actions[key]
            if value is None:
                values[block].pop(key, None)
            else:
                values[block][key] = _convert(block, key, value, action)
    elif overrides:
        for key, value in _parse_cli(build_parser(blocks), list(overrides), actions).items():
            values[actions[key][0]][key] = value
    instances = {}
    for name, cls in blocks.items():
        missing = [
            f.name for f in recipe_fields(cls).values()
            if f.name not in values[name]
            and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ValueError(
                f"recipe: {name}.{missing[0]} is required: give it in the '{name}' block or with --{missing[0]} value."
            )
        try:
            instances[name] = cls(**values[name])
        except TypeError as err:
            raise ValueError(f"recipe: block '{name}': {err}. Fix the value in the recipe.") from None
        check_ranges(instances[name], name)
    return Recipe(method=method, blocks=instances, source=source)
