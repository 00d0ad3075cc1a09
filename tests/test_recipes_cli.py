"""Recipes and the command line: parsing, overrides, help, bad recipes failing before step 1, method entries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_recipe, write_csv, write_recipe

from hf_finetune.cli import main
from hf_finetune.recipe import load_recipe, run_recipe

REPO = Path(__file__).resolve().parents[1]


def _bad_inputs(tmp: Path, model_dir: str, topic_csv: str):
    """(recipe changes, expected message) pairs; each must fail before step 1 with a ValueError."""
    good = [{"text": f"the match goal {i}", "label": "sport"} for i in range(6)]
    good += [{"text": f"market bank shares {i}", "label": "business"} for i in range(6)]
    nopad = tmp / "nopad"
    if not nopad.exists():
        from transformers import AutoTokenizer, BertForSequenceClassification

        tok = AutoTokenizer.from_pretrained(model_dir)
        tok.pad_token = None
        tok.save_pretrained(nopad)
        BertForSequenceClassification.from_pretrained(model_dir, num_labels=2).save_pretrained(nopad)
    config_only = tmp / "config-only"
    if not config_only.exists():
        config_only.mkdir()
        (config_only / "config.json").write_text((Path(model_dir) / "config.json").read_text())
    return {
        "empty dataset": ({"data": {"dataset": write_csv(tmp / "empty.csv", [])}}, "is empty"),
        "missing column": ({"data": {"dataset": topic_csv, "text_column": "body"}}, "Column 'body' not found"),
        "unknown eval label": (
            {"data": {"dataset": write_csv(tmp / "g.csv", good), "eval_dataset": write_csv(tmp / "e.csv", [{"text": "x y", "label": "tech"}])}},
            r"Unknown label\(s\) \['tech'\]",
        ),
        "label out of range": (
            {"data": {"dataset": write_csv(tmp / "ints.csv", [{"text": f"w {i}", "label": i % 3} for i in range(12)]), "class_names": ["a", "b"]}},
            r"out of range for 2 labels",
        ),
        "single class": (
            {"data": {"dataset": write_csv(tmp / "one.csv", [{"text": f"the {i}", "label": "sport"} for i in range(8)])}},
            "single class",
        ),
        "empty after tokenization": (
            {"data": {"dataset": write_csv(tmp / "blank.csv", [*good, {"text": "", "label": "sport"}]),
                      "validation_size": 0.01, "stratify": False}},
            "empty after tokenization",
        ),
        "tokenizer without pad": ({"model": {"model_name_or_path": str(nopad)}}, "neither a pad token nor an EOS"),
        "too long": ({"data": {"dataset": topic_csv, "max_length": 512}}, "longer than the model allows"),
        "unknown key": ({"data": {"dataset": topic_csv, "text_colum": "text"}}, "Unknown key 'text_colum'.*text_column"),
        "wrong type": ({"training": {"learning_rate": "fast"}}, "learning_rate.*invalid float value"),
        "bad fraction": ({"data": {"dataset": topic_csv, "validation_size": 1.5}}, r"validation_size=1.5: use a fraction"),
        "unknown block": ({"lorra": {}}, r"Unknown block\(s\) \['lorra'\]"),
        "missing file": ({"data": {"dataset": str(tmp / "nope.csv")}}, "no such file"),
        "model folder without tokenizer": ({"model": {"model_name_or_path": str(config_only)}}, "holds no tokenizer files"),
    }


BAD_CASES = [
    "empty dataset", "missing column", "unknown eval label", "label out of range", "single class",
    "empty after tokenization", "tokenizer without pad", "too long", "unknown key", "wrong type",
    "bad fraction", "unknown block", "missing file", "model folder without tokenizer",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_fails_before_training(case, tiny_bert_dir, topic_csv, tmp_path_factory, monkeypatch):
    import hf_finetune.supervised.train as sup

    tmp = tmp_path_factory.getbasetemp() / "bad-inputs"
    tmp.mkdir(exist_ok=True)
    changes, message = _bad_inputs(tmp, tiny_bert_dir, topic_csv)[case]
    recipe = tiny_recipe(tiny_bert_dir, topic_csv, tmp / f"out-{case}")
    for block, values in changes.items():
        recipe[block] = {**recipe.get(block, {}), **values}
    monkeypatch.setattr(sup.SupervisedTrainer, "train", lambda *a, **k: pytest.fail("training started"))
    path = write_recipe(tmp / f"{case}.yaml", recipe)
    with pytest.raises(ValueError, match=message):
        run_recipe(load_recipe(path))


def test_cli_overrides_yaml_and_help_lists_fields(tmp_path, capsys):
    recipe = load_recipe(str(REPO / "recipes/quickstart.yaml"), ["--learning_rate", "0.5", "--max_length", "16"])
    assert recipe.training.learning_rate == 0.5 and recipe.data.max_length == 16
    assert recipe.model.trust_remote_code is False
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    for field_name in ("--model_name_or_path", "--text_column", "--lora_r", "--learning_rate", "--validation_size"):
        assert field_name in text
    assert "Fraction of train held out" in text
    assert main(["--help"]) == 0
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "Recipe file not found" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "hf_finetune", "--help"], capture_output=True, text=True, check=True)
    assert "hf-finetune train RECIPE.yaml" in out.stdout


def test_every_recipe_parses():
    recipes = [p for p in (REPO / "recipes").rglob("*.yaml") if "accelerate" not in p.parts]
    assert recipes
    for path in recipes:
        text = path.read_text()
        assert text.lstrip().startswith("#") and "hf-finetune" in text.split("\n", 3)[0] + text.split("\n", 3)[1], (
            f"{path} must start with a comment giving its launch command"
        )
        load_recipe(str(path))


def test_cli_closes_the_process_group_it_ran_in(tmp_path, capsys):
    # An `accelerate launch` run that exits with its gloo group open can abort in interpreter
    # teardown (SIGABRT) after the run was saved; the CLI closes the group on every exit path.
    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert main(["--help"]) == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
