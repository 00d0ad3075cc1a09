"""Recipes mean exactly what they say: YAML is plain data, values never become options, numbers are checked.

Each test here failed (or passed silently with the wrong result) before ``parse_recipe`` built the
blocks from data instead of a re-joined command line and ``load_yaml`` replaced ``yaml.safe_load``.
"""

from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_finetune.config import DataArguments, LoraArguments, ModelArguments, check_ranges
from hf_finetune.recipe_parsing import load_yaml, parse_recipe, read_recipe_yaml
from hf_finetune.supervised.config import SupervisedConfig

BLOCKS = {"model": ModelArguments, "data": DataArguments, "lora": LoraArguments, "training": SupervisedConfig}


def base(tmp_path, **blocks):
    recipe = {
        "method": "supervised",
        "model": {"model_name_or_path": "some/model"},
        "data": {"dataset": "bbc_news"},
        "training": {"output_dir": str(tmp_path / "run"), "report_to": "none"},
    }
    for name, values in blocks.items():
        recipe[name] = {**recipe.get(name, {}), **values}
    return recipe


def test_list_values_never_become_options(tmp_path):
    recipe = parse_recipe(base(tmp_path, data={"class_names": ["business", "--trust_remote_code", "true"]}), BLOCKS)
    assert recipe.model.trust_remote_code is False
    assert recipe.data.class_names == ["business", "--trust_remote_code", "true"]
    token = parse_recipe(base(tmp_path, data={"class_names": ["a", "--hub_token", "secret"]}), BLOCKS)
    assert token.training.hub_token is None


def test_a_scalar_field_refuses_a_list(tmp_path):
    with pytest.raises(ValueError, match=r"data.text_column takes one value"):
        parse_recipe(base(tmp_path, data={"text_column": ["text", "--trust_remote_code", "true"]}), BLOCKS)


def test_string_values_that_look_like_options_stay_values(tmp_path):
    recipe = parse_recipe(base(tmp_path, data={"text_column": "--trust_remote_code"}), BLOCKS)
    assert recipe.data.text_column == "--trust_remote_code" and not recipe.model.trust_remote_code


def test_dict_overrides_are_data_too(tmp_path):
    recipe = parse_recipe(base(tmp_path), BLOCKS, {"class_names": ["a", "--trust_remote_code", "true"], "seed": 3})
    assert recipe.model.trust_remote_code is False and recipe.training.seed == 3


def test_cli_overrides_win_and_need_exact_names(tmp_path):
    recipe = parse_recipe(base(tmp_path, training={"seed": 1}), BLOCKS, ["--seed", "7", "--class_names", "x", "y"])
    assert recipe.training.seed == 7 and recipe.data.class_names == ["x", "y"]
    with pytest.raises(ValueError, match=r"Unknown option --lerning_rate.*Did you mean 'learning_rate'"):
        parse_recipe(base(tmp_path), BLOCKS, ["--lerning_rate", "0.1"])
    with pytest.raises(ValueError, match=r"Unknown option --learning"):  # no argparse prefix matching
        parse_recipe(base(tmp_path), BLOCKS, ["--learning", "0.1"])


def test_required_field_missing_names_block_and_option(tmp_path):
    recipe = base(tmp_path)
    del recipe["model"]
    with pytest.raises(ValueError, match=r"model.model_name_or_path is required.*--model_name_or_path"):
        parse_recipe(recipe, BLOCKS)
    assert parse_recipe(recipe, BLOCKS, ["--model_name_or_path", "m"]).model.model_name_or_path == "m"


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"num_train_epochs": -3}, r"training.num_train_epochs=-3.0: use a number > 0"),
        ({"num_train_epochs": 0}, r"num_train_epochs=0.0: use a number > 0"),
        ({"max_steps": -5}, r"max_steps=-5: use a positive number of steps, or -1"),
        ({"max_steps": 0}, r"max_steps=0"),
        ({"learning_rate": "inf"}, r"learning_rate=inf: use a finite number"),
        ({"learning_rate": float("nan")}, r"learning_rate=nan: use a finite number"),
        ({"learning_rate": 0}, r"learning_rate=0.0: use a number > 0"),
        ({"learning_rate": -1e-5}, r"learning_rate=-1e-05: use a number > 0"),
        ({"per_device_train_batch_size": 0}, r"per_device_train_batch_size=0: use a whole number >= 1"),
        ({"gradient_accumulation_steps": -1}, r"gradient_accumulation_steps=-1"),
        ({"weight_decay": -0.1}, r"weight_decay=-0.1: use a number >= 0"),
        ({"adam_beta2": 1.0}, r"adam_beta2=1.0: use a value in \[0, 1\)"),
        ({"logging_steps": 0}, r"logging_steps=0.0: use a number > 0"),
        ({"warmup_steps": -2}, r"warmup_steps=-2.0: use a number >= 0"),
        ({"max_grad_norm": "inf"}, r"max_grad_norm=inf: use a finite number"),
        ({"num_train_epochs": 2.5, "max_steps": 3}, None),
    ],
)
def test_numbers_are_range_checked_before_anything_loads(tmp_path, training, message):
    recipe = base(tmp_path, training=training)
    if message is None:
        assert parse_recipe(recipe, BLOCKS).training.max_steps == 3
        return
    with pytest.raises(ValueError, match=message):
        parse_recipe(recipe, BLOCKS)


def test_python_users_get_the_same_range_checks():
    with pytest.raises(ValueError, match="num_train_epochs=-3"):
        SupervisedConfig(output_dir="x", num_train_epochs=-3, report_to="none")
    with pytest.raises(ValueError, match="lora.lora_r=0"):
        parse_recipe({"method": "m", "model": {"model_name_or_path": "m"}, "lora": {"lora_r": 0}},
                     {"model": ModelArguments, "lora": LoraArguments})
    check_ranges(DataArguments(dataset="bbc_news"), "data")  # the defaults are fine


def write(tmp_path, text: str | bytes, name="r.yaml"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_duplicate_keys_are_refused_with_both_lines(tmp_path):
    path = write(tmp_path, "method: supervised\ntraining:\n  seed: 1\n  seed: 2\n")
    with pytest.raises(ValueError, match=r"r.yaml, line 4.*duplicate key 'seed' \(first given on line 3\)"):
        read_recipe_yaml(path)
    top = write(tmp_path, "method: supervised\nmethod: sft\n", "top.yaml")
    with pytest.raises(ValueError, match="duplicate key 'method'"):
        read_recipe_yaml(top)


def test_alias_bomb_is_refused_quickly(tmp_path):
    lines = ["method: supervised", 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    path = write(tmp_path, "\n".join(lines) + "\n")
    assert path.stat().st_size < 1000
    with pytest.raises(ValueError, match=r"anchors and aliases .* expand to more than 100,000 values"):
        read_recipe_yaml(path)


def test_small_anchors_still_work(tmp_path):
    path = write(tmp_path, "method: supervised\ncommon: &c {seed: 3}\ntraining: *c\n")
    assert read_recipe_yaml(path)["training"] == {"seed": 3}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("method: !!python/object/apply:os.system ['echo hi']\n", r"line 1.*Python tag.*would run code"),
        ("method: !!python/name:os.system\n", r"Python tag"),
        ("method: supervised\ntraining: !custom {a: 1}\n", r"line 2.*plain YAML values only"),
        ("method: supervised\ntraining:\n  seed: 1\n    lr: 2\n", r"r.yaml, line 4, column \d+: invalid YAML"),
        ("method: [supervised]\n", r"method=\['supervised'\]: give one name"),
        ("- method\n- supervised\n", r"a recipe is a YAML mapping"),
        ("", r"a recipe is a YAML mapping"),
        ("training: {}\n", r"missing 'method'"),
        (b"method: supervised\n# caf\xe9\n", r"r.yaml: not UTF-8 text \(byte \d+\): save the recipe as UTF-8"),
        ("method: supervised\n1: {}\n", r"top-level key 1 is not a name"),
        ("a: &a [*a]\nmethod: x\n", r"expand to more than"),
    ],
)
def test_bad_yaml_is_one_clear_line(tmp_path, text, message):
    with pytest.raises(ValueError, match=message) as info:
        read_recipe_yaml(write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_missing_and_folder_recipes(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_yaml(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="a folder"):
        load_yaml(tmp_path)


def test_shipped_recipes_still_parse_as_before():
    """Every recipe in recipes/ reads with the strict loader (no duplicate keys, no tags)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "recipes"
    paths = [p for p in root.rglob("*.yaml") if "accelerate" not in p.parts]
    assert len(paths) > 10
    for path in paths:
        assert read_recipe_yaml(path)["method"]


# --- property test: random mutations of a good recipe never escape as anything but ValueError ------

_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.text(max_size=6), max_size=4),
    st.sampled_from(["--trust_remote_code", "true", "-1", "1e-5", "inf", "nan", "", "[a, b]", "{a: 1}"]),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
_KEYS = st.sampled_from(
    ["learning_rate", "num_train_epochs", "max_steps", "seed", "per_device_train_batch_size", "class_names",
     "validation_size", "max_length", "lora_r", "lora_dropout", "trust_remote_code", "dtype", "stages",
     "schedule", "text_column", "report_to", "lr_scheduler_type", "warmup_steps", "bogus_key", "task",
     "hub_token", "model_name_or_path", "dataset", "save_strategy", "eval_strategy", "optim"]
)
_FIELD_BLOCK = {
    **{f: "training" for f in ["learning_rate", "num_train_epochs", "max_steps", "seed", "per_device_train_batch_size",
                               "stages", "schedule", "report_to", "lr_scheduler_type", "warmup_steps", "task",
                               "hub_token", "save_strategy", "eval_strategy", "optim", "bogus_key"]},
    **{f: "data" for f in ["class_names", "validation_size", "max_length", "text_column", "dataset"]},
    **{f: "lora" for f in ["lora_r", "lora_dropout"]},
    **{f: "model" for f in ["trust_remote_code", "dtype", "model_name_or_path"]},
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(st.tuples(_KEYS, _VALUES), min_size=1, max_size=4), as_yaml=st.booleans())
def test_random_recipe_mutations_never_traceback(tmp_path, mutations, as_yaml):
    recipe = base(tmp_path)
    for key, value in mutations:
        recipe.setdefault(_FIELD_BLOCK[key], {})[key] = value
    try:
        if as_yaml:
            path = tmp_path / "mutated.yaml"
            path.write_text(yaml.safe_dump(recipe))
            recipe = read_recipe_yaml(path)
        parsed = parse_recipe(recipe, BLOCKS)
    except ValueError as err:
        assert str(err) and "\n" not in str(err).strip()
        return
    # Whatever parsed, no value smuggled in an option of another field.
    if "trust_remote_code" not in recipe.get("model", {}):
        assert parsed.model.trust_remote_code is False
    assert parsed.training.hub_token is None or "hub_token" in recipe.get("training", {})


@pytest.mark.parametrize(
    ("config", "kwargs", "message"),
    [
        ("hf_finetune.rl.ppo_config:PPOConfig", {"num_ppo_epochs": 0}, r"num_ppo_epochs=0: use a whole number >= 1"),
        ("hf_finetune.rl.ppo_config:PPOConfig", {"gamma": 1.5}, r"gamma=1.5: use a value in \[0, 1\]"),
        ("hf_finetune.rl.ppo_config:PPOConfig", {"cliprange": 0.0}, r"cliprange=0.0: use a number > 0"),
        ("hf_finetune.rl.ppo_config:PPOConfig", {"kl_coef": -0.1}, r"kl_coef=-0.1: use a number >= 0"),
        ("hf_finetune.self_supervised.config:SelfSupervisedConfig", {"mlm_probability": 0.0}, r"mlm_probability=0.0"),
        ("hf_finetune.self_supervised.config:SelfSupervisedConfig", {"fim_rate": 2.0}, r"fim_rate=2.0"),
    ],
)
def test_method_numbers_are_range_checked(config, kwargs, message):
    import importlib

    module, name = config.split(":")
    cls = getattr(importlib.import_module(module), name)
    with pytest.raises(ValueError, match=message):
        cls(output_dir="x", report_to="none", **kwargs)
