"""A failed run never harms a finished one: staging folders, overwrite rules, complete checkpoints, no pickles."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from conftest import run_dict, tiny_recipe
from safetensors.torch import load_file

from hf_finetune.runs import latest_checkpoint, staging_dir


def snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tiny_bert_dir, topic_csv, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finished")
    out = tmp / "run"
    run_dict(tiny_recipe(tiny_bert_dir, topic_csv, out, max_steps=2), tmp)
    return out


def test_rerun_into_a_finished_run_needs_overwrite(finished, tiny_bert_dir, topic_csv, tmp_path):
    before = snapshot(finished)
    with pytest.raises(ValueError, match=r"already holds a run: add --overwrite_output_dir true.*--resume_from_checkpoint"):
        run_dict(tiny_recipe(tiny_bert_dir, topic_csv, finished, max_steps=2), tmp_path)
    assert snapshot(finished) == before


def test_failed_rerun_with_overwrite_leaves_the_finished_run(finished, tiny_bert_dir, topic_csv, tmp_path):
    before = snapshot(finished)
    bad = tiny_recipe(tiny_bert_dir, topic_csv, finished, max_steps=2, overwrite_output_dir=True)
    bad["data"]["text_column"] = "no_such_column"  # fails after the run started (data are read inside it)
    with pytest.raises(ValueError, match="no_such_column"):
        run_dict(bad, tmp_path)
    assert snapshot(finished) == before
    assert yaml_output_dir(finished) == str(finished)


def yaml_output_dir(run) -> str:
    import yaml

    return yaml.safe_load((run / "recipe.yaml").read_text())["training"]["output_dir"]


def test_overwrite_replaces_only_when_finished_and_drops_stale_files(tiny_bert_dir, topic_csv, tmp_path):
    out = tmp_path / "run"
    run_dict(tiny_recipe(tiny_bert_dir, topic_csv, out, max_steps=2), tmp_path)
    (out / "stale.txt").write_text("from another run")
    run_dict(tiny_recipe(tiny_bert_dir, topic_csv, out, max_steps=3, overwrite_output_dir=True), tmp_path)
    assert not (out / "stale.txt").exists() and not staging_dir(out).exists()
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3
    assert yaml_output_dir(out) == str(out)


def test_output_dir_that_is_not_a_run_is_never_replaced(tiny_bert_dir, topic_csv, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match="holds files that are not an hf-finetune run"):
        run_dict(tiny_recipe(tiny_bert_dir, topic_csv, out, overwrite_output_dir=True), tmp_path)
    assert (out / "notes.txt").read_text() == "precious"
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        run_dict(tiny_recipe(tiny_bert_dir, topic_csv, afile), tmp_path)
    with pytest.raises(ValueError, match="is not a writable folder"):
        run_dict(tiny_recipe(tiny_bert_dir, topic_csv, afile / "run"), tmp_path)


def _interrupt_after_first_save():
    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise KeyboardInterrupt

    return Stop()


def test_interrupt_then_resume_last_is_bitwise_exact_and_pickle_free(tiny_bert_dir, topic_csv, tmp_path):
    common = dict(max_steps=6, save_strategy="steps", save_steps=3, full_determinism=True, learning_rate=1e-3)
    straight = tmp_path / "straight"
    run_dict(tiny_recipe(tiny_bert_dir, topic_csv, straight, **common), tmp_path)

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_dict(tiny_recipe(tiny_bert_dir, topic_csv, out, **common), tmp_path, callbacks=[_interrupt_after_first_save()])
    assert not out.exists()  # nothing is visible at output_dir until the run finished
    checkpoint = staging_dir(out) / "checkpoint-3"
    assert latest_checkpoint(staging_dir(out)) == checkpoint
    names = {p.name for p in checkpoint.iterdir()}
    assert {"optimizer.safetensors", "optimizer.json", "scheduler.json", "rng_state.safetensors"} <= names
    assert not [n for n in names if n.endswith((".pt", ".pth", ".bin"))], names

    with pytest.raises(ValueError, match=r"holds checkpoints of an unfinished run.*--resume_from_checkpoint last"):
        run_dict(tiny_recipe(tiny_bert_dir, topic_csv, out, **common), tmp_path)  # would discard them silently
    run_dict(tiny_recipe(tiny_bert_dir, topic_csv, out, resume_from_checkpoint="last", **common), tmp_path)
    a, b = load_file(straight / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not staging_dir(out).exists()


def test_a_cut_checkpoint_is_never_the_latest(tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-4").mkdir()  # killed while saving: no trainer_state.json
    (tmp_path / "checkpoint-4" / "model.safetensors").write_bytes(b"")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-2"


def test_resume_true_without_checkpoints_is_one_line(tiny_bert_dir, topic_csv, tmp_path):
    with pytest.raises(ValueError, match=r"resume_from_checkpoint=true: no complete checkpoint"):
        run_dict(tiny_recipe(tiny_bert_dir, topic_csv, tmp_path / "new", resume_from_checkpoint="true"), tmp_path)
    with pytest.raises(ValueError, match=r"resume_from_checkpoint=/no/such: no such checkpoint"):
        run_dict(tiny_recipe(tiny_bert_dir, topic_csv, tmp_path / "new", resume_from_checkpoint="/no/such"), tmp_path)
    assert not (tmp_path / "new").exists() and not staging_dir(tmp_path / "new").exists()  # nothing written


def test_guard_stops_on_overflowed_weights_before_they_are_saved():
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from hf_finetune.callbacks import NonFiniteGuardCallback, NonFiniteLossError

    model = torch.nn.Linear(3, 2)
    guard, state = NonFiniteGuardCallback(), TrainerState(global_step=5)
    args = TrainingArguments(output_dir="unused", report_to="none")
    saving = TrainerControl(should_save=True)  # a checkpoint follows this step
    guard.on_step_end(args, state, saving, model=model)  # finite: nothing happens
    with torch.no_grad():
        model.weight[0, 0] = 3e38  # finite, but its square overflows: still fine
    guard.on_step_end(args, state, saving, model=model)
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    guard.on_step_end(args, state, TrainerControl(), model=model)  # nothing saved after this step: not checked
    for control in (saving, TrainerControl(should_evaluate=True), TrainerControl(should_training_stop=True)):
        with pytest.raises(NonFiniteLossError, match="Non-finite weights after the update of step 5"):
            guard.on_step_end(args, state, control, model=model)
    with pytest.raises(NonFiniteLossError, match="step 5"):
        guard.on_epoch_end(args, state, TrainerControl(), model=model)
    model.weight.data[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="step 5"):
        guard.on_step_end(args, state, saving, model=model)


def test_guard_checks_the_gradient_norm_trainer_computed(tiny_bert_dir, topic_csv, tmp_path, monkeypatch):
    from hf_finetune.callbacks import NonFiniteGuardCallback

    seen, original = [], NonFiniteGuardCallback.on_pre_optimizer_step

    def spy(self, args, state, control, **kwargs):
        seen.append(self.checked_step == state.global_step)  # the trainer checked this update's norm already
        return original(self, args, state, control, **kwargs)

    monkeypatch.setattr(NonFiniteGuardCallback, "on_pre_optimizer_step", spy)
    run_dict(tiny_recipe(tiny_bert_dir, topic_csv, tmp_path / "run", max_steps=3), tmp_path)
    assert seen == [True] * 3, seen  # so the callback made no second pass over the gradients


def test_artefacts_are_written_before_the_run_returns_and_a_failed_one_only_warns(
        tiny_bert_dir, topic_csv, tmp_path, monkeypatch, caplog):
    import threading

    import hf_finetune.runs as runs

    def slow_plot(*args, **kwargs):
        import time

        time.sleep(0.5)  # still writing when the main thread reaches commit: commit must wait
        return real_plot(*args, **kwargs)

    real_plot = runs.plot_curves
    monkeypatch.setattr(runs, "plot_curves", slow_plot)
    out = tmp_path / "run"
    run_dict(tiny_recipe(tiny_bert_dir, topic_csv, out, max_steps=3, logging_steps=1), tmp_path)
    assert (out / "curves.png").stat().st_size > 1000 and (out / "confusion_matrix.png").is_file()
    assert "![training curves](curves.png)" in (out / "README.md").read_text()  # the card saw the curves
    assert not any(t.name.startswith("hf-finetune-writer") for t in threading.enumerate())

    def broken(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(runs, "plot_curves", broken)
    again = tmp_path / "again"
    with caplog.at_level("WARNING", logger="hf_finetune.runs"):
        metrics = run_dict(tiny_recipe(tiny_bert_dir, topic_csv, again, max_steps=2), tmp_path)
    assert "eval_accuracy" in metrics and (again / "README.md").is_file() and not (again / "curves.png").exists()
    assert "curves.png not written: no fonts" in caplog.text
