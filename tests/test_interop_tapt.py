"""Command-line values of a TAPT recipe reach its chained fine-tune (a smoke run is short end to end)."""

from __future__ import annotations

import json

import pytest
from conftest import make_topic_rows, write_recipe

from hf_finetune.recipe import load_recipe, run_recipe
from hf_finetune.self_supervised.train import command_line_overrides


@pytest.fixture
def tapt(tmp_path, tiny_bert_dir, topic_csv):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(r["text"] for r in make_topic_rows(30, seed=2, length=10)))
    finetune = write_recipe(tmp_path / "cls.yaml", {
        "method": "supervised",
        "model": {"model_name_or_path": "replaced-by-the-chain"},
        "data": {"dataset": topic_csv, "max_length": 32},
        "training": {"output_dir": str(tmp_path / "unused"), "max_steps": 40, "learning_rate": 5e-3,
                     "report_to": "none", "save_strategy": "no", "disable_tqdm": True},
    })
    return write_recipe(tmp_path / "tapt.yaml", {
        "method": "self_supervised",
        "model": {"model_name_or_path": tiny_bert_dir},
        "data": {"dataset": str(corpus), "max_length": 32},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 30, "learning_rate": 5e-3,
                     "per_device_train_batch_size": 8, "save_strategy": "no",
                     "disable_tqdm": True, "finetune": finetune},
    })


def test_command_line_values_are_found_and_phase_values_stay(tapt):
    recipe = load_recipe(tapt, ["--max_steps", "3", "--max_train_samples", "40", "--learning_rate", "1e-3",
                                "--eval_strategy", "steps", "--eval_steps", "2", "--report_to", "none"])
    # do_eval follows from eval_strategy (TrainingArguments sets it): forwarded alike, harmless.
    # report_to none reads back as [] (TrainingArguments): forwarded as the word the recipe takes.
    assert command_line_overrides(recipe) == {"max_steps": 3, "max_train_samples": 40, "eval_strategy": "steps",
                                              "eval_steps": 2, "do_eval": True, "report_to": "none"}
    assert command_line_overrides(load_recipe(tapt)) == {}


def test_smoke_run_of_a_tapt_recipe_is_short_in_both_phases(tapt, tmp_path):
    metrics = run_recipe(load_recipe(tapt, ["--max_steps", "2", "--learning_rate", "1e-3", "--report_to", "none"]))
    pretrain = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    finetune = json.loads((tmp_path / "run" / "finetune" / "trainer_state.json").read_text())
    assert pretrain["global_step"] == 2 and finetune["global_step"] == 2  # the fine-tune's YAML says 40
    args = json.loads((tmp_path / "run" / "finetune" / "training_args.json").read_text())
    assert args["learning_rate"] == 5e-3  # optimizer settings stay each phase's own
    assert "finetune_eval_accuracy" in metrics
