"""The bad-input table: every input a hostile or hurried user might give, through the real command line.

Each case asserts the exit code, that the error is one line (``hf-finetune: error: ...``, no
traceback) saying what to fix, and that a finished run the command was pointed at did not change.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from conftest import tiny_recipe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_finetune.cli import main


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tiny_bert_dir, topic_csv, tmp_path_factory):
    """A finished run (through the CLI) plus the toy model and data every case starts from."""
    tmp = tmp_path_factory.mktemp("trust-cli")
    run = tmp / "finished"
    path = tmp / "good.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tiny_bert_dir, topic_csv, run, max_steps=2)))
    assert main(["train", str(path)]) == 0
    return {"tmp": tmp, "run": run, "model": tiny_bert_dir, "csv": topic_csv, "snapshot": snapshot(run)}


def _recipe(world, **blocks) -> dict:
    """The good recipe, aimed at the finished run with overwrite on, with ``blocks`` merged in."""
    recipe = tiny_recipe(world["model"], world["csv"], world["run"], max_steps=2, overwrite_output_dir=True)
    for name, values in blocks.items():
        if values is None:
            recipe.pop(name, None)
        elif isinstance(values, dict) and isinstance(recipe.get(name), dict):
            recipe[name] = {**recipe[name], **values}
        else:
            recipe[name] = values
    return recipe


def _file(world, name: str, content: str | bytes) -> str:
    path = world["tmp"] / "files" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def _data(world, name, content, **data):
    return _recipe(world, data={"dataset": _file(world, name, content), **data})


def _rows(labels):
    return "text,label\n" + "".join(f"the match {i},{lab}\n" for i, lab in enumerate(labels))


def _label_folder(world, empty: bool):
    root = world["tmp"] / "files" / ("classes_empty" if empty else "classes_nothing")
    for label in ("sport", "tech"):
        (root / label).mkdir(parents=True, exist_ok=True)
        if empty is not None:
            (root / label / "a.txt").write_text(f"{label} words")
    (root / "weather").mkdir(exist_ok=True)
    return str(root)


def _model_folder(world, kind: str) -> str:
    folder = world["tmp"] / "files" / f"model_{kind}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("garbage{" if kind == "garbage" else json.dumps({"model_type": "bert"}))
    return str(folder)


# name -> (builder(world) returning a recipe dict, raw YAML text/bytes or a full argv, extra argv, exit code, regex)
CASES = {
    # --- recipe files -----------------------------------------------------------------------------
    "yaml syntax": (lambda w: "method: supervised\ntraining:\n  seed: 1\n    lr: 2\n", [], 2, r"line 4, column \d+: invalid YAML"),
    "python tag": (lambda w: "method: !!python/object/apply:os.system ['true']\n", [], 2, r"Python tag.*run code"),
    "duplicate key": (lambda w: "method: supervised\nmethod: sft\n", [], 2, r"duplicate key 'method'"),
    "alias bomb": (lambda w: "method: supervised\na: &a [x, x, x, x, x, x, x, x, x]\n"
                   + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")),
                   [], 2, r"expand to more than"),
    "not utf-8": (lambda w: b"method: supervised\n# \xff\xfe\n", [], 2, r"not UTF-8 text"),
    "method list": (lambda w: "method: [supervised]\n", [], 2, r"give one name"),
    "empty recipe": (lambda w: "", [], 2, r"a recipe is a YAML mapping"),
    "no method": (lambda w: "model: {model_name_or_path: x}\n", [], 2, r"missing 'method'"),
    "unknown method": (lambda w: {**_recipe(w), "method": "supervized"}, [], 2, r"Did you mean 'supervised'"),
    "unknown block": (lambda w: _recipe(w, lorra={}), [], 2, r"Unknown block\(s\) \['lorra'\]"),
    "block not a mapping": (lambda w: _recipe(w, data=["a"]), [], 2, r"Block 'data' must be a mapping"),
    "key typo": (lambda w: _recipe(w, training={"learning_rte": 0.1}), [], 2, r"Did you mean 'learning_rate'"),
    "wrong type": (lambda w: _recipe(w, training={"learning_rate": "fast"}), [], 2, r"invalid float value"),
    "negative epochs": (lambda w: _recipe(w, training={"num_train_epochs": -3, "max_steps": -1}), [], 2,
                        r"num_train_epochs=-3.0: use a number > 0"),
    "negative max_steps": (lambda w: _recipe(w, training={"max_steps": -5}), [], 2, r"max_steps=-5"),
    "infinite lr": (lambda w: _recipe(w, training={"learning_rate": float("inf")}), [], 2, r"learning_rate=inf: use a finite"),
    "nan lr": (lambda w: _recipe(w, training={"learning_rate": float("nan")}), [], 2, r"learning_rate=nan"),
    "zero batch": (lambda w: _recipe(w, training={"per_device_train_batch_size": 0}), [], 2, r"per_device_train_batch_size=0"),
    "bad fraction": (lambda w: _recipe(w, data={"validation_size": 1.5}), [], 2, r"validation_size=1.5"),
    "lora rank 0": (lambda w: _recipe(w, lora={"lora_r": 0}), [], 2, r"lora_r=0"),
    "lora dropout 1": (lambda w: _recipe(w, lora={"lora_dropout": 1.0}), [], 2, r"lora_dropout=1.0"),
    "bad dtype": (lambda w: _recipe(w, model={"dtype": "float8"}), [], 2, r"model.dtype='float8'"),
    "token in recipe": (lambda w: _recipe(w, training={"hub_token": "hf_secret"}), [], 2, r"tokens do not belong"),
    "list into scalar": (lambda w: _recipe(w, data={"text_column": ["text", "--trust_remote_code", "true"]}), [], 2,
                         r"data.text_column takes one value"),
    "cli typo": (lambda w: _recipe(w), ["--lerning_rate", "0.1"], 2, r"Did you mean 'learning_rate'"),
    "cli prefix": (lambda w: _recipe(w), ["--learning", "0.1"], 2, r"Unknown option --learning"),
    "cli bad value": (lambda w: _recipe(w), ["--seed", "abc"], 2, r"invalid int value"),
    "cli stray value": (lambda w: _recipe(w), ["0.1"], 2, r"unexpected value"),
    "recipe not found": (lambda w: ["train", str(w["tmp"] / "nope.yaml")], [], 2, r"not found"),
    "recipe is a folder": (lambda w: ["train", str(w["tmp"])], [], 2, r"a folder"),
    "no recipe": (lambda w: ["train"], [], 2, r"train needs a recipe"),
    "command typo": (lambda w: ["trian", "x.yaml"], [], 2, r"did you mean 'train'"),
    # --- data -------------------------------------------------------------------------------------
    "0-byte csv": (lambda w: _data(w, "empty.csv", b""), [], 2, r"empty.csv is empty \(0 bytes\)"),
    "header-only csv": (lambda w: _data(w, "header.csv", "text,label\n"), [], 2, r"header.csv is empty"),
    "garbage csv": (lambda w: _data(w, "garbage.csv", bytes(range(128, 256))), [], 2, r"garbage.csv is not UTF-8"),
    "ragged csv": (lambda w: _data(w, "ragged.csv", _rows("ab" * 10) + "x,y,z,w\n"), [], 2, r"ragged.csv.*line 22: 4 fields"),
    "blank txt": (lambda w: _data(w, "blank.txt", "\n \n"), [], 2, r"blank.txt holds only blank lines"),
    "garbage txt": (lambda w: _data(w, "garbage.txt", b"ok\n\xff\x00"), [], 2, r"garbage.txt is not UTF-8"),
    "bad jsonl line": (lambda w: _data(w, "bad.jsonl", '{"text": "a", "label": "x"}\n{"text": \n'), [], 2,
                       r"bad.jsonl.*line 2: Expecting value"),
    "bad json": (lambda w: _data(w, "bad.json", '{"text": "a"'), [], 2, r"bad.json could not be read as json"),
    "garbage parquet": (lambda w: _data(w, "bad.parquet", b"PAR1nope"), [], 2, r"bad.parquet could not be read"),
    "xlsx": (lambda w: _data(w, "data.xlsx", b"PK"), [], 2, r"unsupported extension"),
    "missing folder": (lambda w: _recipe(w, data={"dataset": str(w["tmp"] / "files" / "nope" / "train")}), [], 2,
                       r"no such file or folder"),
    "offline hub dataset": (lambda w: _recipe(w, data={"dataset": "someorg/somedata"}), [], 2, r"offline"),
    "empty class folder": (lambda w: _recipe(w, data={"dataset": _label_folder(w, True)}), [], 2,
                           r"\['weather'\] hold no .txt files"),
    "empty data folder": (lambda w: _recipe(w, data={"dataset": str(Path(_file(w, "void/.keep", "")).parent)}), [], 2,
                          r"is empty: add data files"),
    "missing column": (lambda w: _recipe(w, data={"text_column": "body"}), [], 2, r"Column 'body' not found"),
    "single class": (lambda w: _data(w, "one.csv", _rows(["sport"] * 12)), [], 2, r"single class"),
    "lonely class": (lambda w: _data(w, "lonely.csv", _rows(["a"] * 10 + ["b"] * 10 + ["c"])), [], 2,
                     r"Class 'c' has a single example"),
    "unknown eval label": (lambda w: _recipe(w, data={"eval_dataset": _file(w, "e.csv", _rows(["weather"]))}), [], 2,
                           r"Unknown label"),
    "missing eval file": (lambda w: _recipe(w, data={"eval_dataset": str(w["tmp"] / "nope.csv")}), [], 2,
                          r"data.eval_dataset='.*nope.csv': no such file or folder"),
    "bad conll": (lambda w: _recipe(w, data={"dataset": _file(w, "ner.conll", "EU\tB-ORG\nrejects\n")},
                                    training={"task": "token_classification"}), [], 2, r"line 2: expected 'token<TAB>tag'"),
    # --- models -----------------------------------------------------------------------------------
    "missing model path": (lambda w: _recipe(w, model={"model_name_or_path": str(w["tmp"] / "no-model")}), [], 2,
                           r"no such local folder, and not a valid Hub id"),
    "garbage model config": (lambda w: _recipe(w, model={"model_name_or_path": _model_folder(w, "garbage")}), [], 2,
                             r"config.json.*not a valid JSON"),
    "offline hub model": (lambda w: _recipe(w, model={"model_name_or_path": "someorg/some-model"}), [], 2,
                          r"couldn't connect|offline|cached"),
    # --- run directories --------------------------------------------------------------------------
    "finished run, no overwrite": (lambda w: _recipe(w, training={"overwrite_output_dir": False}), [], 2,
                                   r"already holds a run: add --overwrite_output_dir true"),
    "output_dir is a file": (lambda w: _recipe(w, training={"output_dir": _file(w, "afile", "x")}), [], 2,
                             r"is a file, not a folder"),
    "output_dir under a file": (lambda w: _recipe(w, training={"output_dir": _file(w, "bfile", "x") + "/run"}), [], 2,
                                r"is not a writable folder"),
    "output_dir not a run": (lambda w: _recipe(w, training={"output_dir": str(Path(_file(w, "mine/notes.txt", "x")).parent)}),
                             [], 2, r"holds files that are not an hf-finetune run"),
    "resume without checkpoints": (lambda w: _recipe(w, training={"resume_from_checkpoint": "true"}), [], 2,
                                   r"resume_from_checkpoint=true: no complete checkpoint"),
    "resume missing path": (lambda w: _recipe(w, training={"resume_from_checkpoint": "/no/such/checkpoint-3"}), [], 2,
                            r"no such checkpoint"),
    # --- eval and push ----------------------------------------------------------------------------
    "eval no run": (lambda w: ["eval", str(w["tmp"] / "files")], [], 2, r"has no recipe.yaml"),
    "eval option typo": (lambda w: ["eval", str(w["run"]), "--dat", "x.csv"], [], 2, r"did you mean --data"),
    "eval missing data": (lambda w: ["eval", str(w["run"]), "--data", str(w["tmp"] / "none.csv")], [], 2,
                          r"no such file or folder"),
    "push no repo": (lambda w: ["push", str(w["run"])], [], 2, r"the following arguments are required: --repo-id"),
    "push missing run": (lambda w: ["push", str(w["tmp"] / "nope"), "--repo-id", "me/x"], [], 2, r"not found"),
    "push bad repo id": (lambda w: ["push", str(w["run"]), "--repo-id", "a/b/c"], [], 2, r"repo"),
    "missing weights": (lambda w: _recipe(w, model={"model_name_or_path": _no_weights(w)}), [], 2,
                        r"model.safetensors|pytorch_model.bin|weights"),
}


def _no_weights(world) -> str:
    import shutil

    folder = world["tmp"] / "files" / "no_weights"
    if not folder.exists():
        shutil.copytree(world["model"], folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return str(folder)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_harms_nothing(case, world, capsys, monkeypatch):
    monkeypatch.delenv("HF_FINETUNE_DEBUG", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    build, extra, code, message = CASES[case]
    made = build(world)
    if isinstance(made, list):
        argv = made
    else:
        path = world["tmp"] / "cases" / f"{case.replace(' ', '_')}.yaml"
        path.parent.mkdir(exist_ok=True)
        if isinstance(made, dict):
            path.write_text(yaml.safe_dump(made))
        else:
            path.write_bytes(made if isinstance(made, bytes) else made.encode())
        argv = ["train", str(path), *extra]
    capsys.readouterr()
    assert main(argv) == code
    err = capsys.readouterr().err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert "Traceback" not in err
    assert last.startswith("hf-finetune: error: "), err[-2000:]
    assert __import__("re").search(message, last), last
    assert snapshot(world["run"]) == world["snapshot"]


def test_interrupt_exits_130_and_keeps_the_finished_run(world, capsys, monkeypatch):
    import hf_finetune.supervised.train as sup

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sup.SupervisedTrainer, "train", interrupted)
    path = world["tmp"] / "interrupt.yaml"
    path.write_text(yaml.safe_dump(_recipe(world)))
    assert main(["train", str(path)]) == 130
    assert "interrupted" in capsys.readouterr().err.splitlines()[-1]
    assert snapshot(world["run"]) == world["snapshot"]


def test_non_finite_and_unexpected_errors_are_one_line(world, capsys, monkeypatch):
    import hf_finetune.supervised.train as sup
    from hf_finetune.callbacks import NonFiniteLossError

    path = world["tmp"] / "boom.yaml"
    path.write_text(yaml.safe_dump(_recipe(world)))
    for error, code, text in ((NonFiniteLossError("Non-finite loss at step 1"), 2, "Non-finite loss"),
                              (RuntimeError("boom"), 1, "HF_FINETUNE_DEBUG=1")):
        def fail(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(sup.SupervisedTrainer, "train", fail)
        capsys.readouterr()
        assert main(["train", str(path)]) == code
        assert text in capsys.readouterr().err.splitlines()[-1]
        assert snapshot(world["run"]) == world["snapshot"]
    monkeypatch.setenv("HF_FINETUNE_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        main(["train", str(path)])


def test_push_to_an_unreachable_endpoint_is_one_line(world, capsys, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 30)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    code = main(["push", str(world["run"]), "--repo-id", "me/model"])
    last = capsys.readouterr().err.splitlines()[-1]
    assert code in (1, 2) and last.startswith("hf-finetune: error: ") and "Traceback" not in last
    assert snapshot(world["run"]) == world["snapshot"]


def test_the_table_is_big_enough():
    assert len(CASES) >= 60


def test_list_values_do_not_turn_on_remote_code_end_to_end(world, capsys):
    recipe = _recipe(world, data={"class_names": ["business", "sport", "tech", "--trust_remote_code", "true"]},
                     training={"output_dir": str(world["tmp"] / "inject")})
    path = world["tmp"] / "inject.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["train", str(path)]) == 0
    written = yaml.safe_load((world["tmp"] / "inject" / "recipe.yaml").read_text())
    assert written["model"]["trust_remote_code"] is False
    assert written["data"]["class_names"][-2:] == ["--trust_remote_code", "true"]




_TEXT_EDITS = ["", ":", "- ", "&a ", "*a", "!!python/name:os.system ", "\t", "{", "]", "'", '"', "\n  ", "\xff", "~",
               "!!binary ", "<<: ", "? ", "%YAML 1.1\n", "---\n", "...\n"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(_TEXT_EDITS), st.integers(0, 3)),
                      min_size=1, max_size=4),
       argv=st.lists(st.sampled_from(["--seed", "x", "--max_steps", "-1", "0", "--lora_r", "--class_names", "a",
                                      "--trust_remote_code", "--no_stratify", "--", "-", "--learning_rate", "inf"]),
                     max_size=4))
def test_random_recipe_text_never_tracebacks(tmp_path_factory, monkeypatch, edits, argv):
    """Property: any mangled recipe text and command line ends in exit 0 (recipe fine) or 2 with one line."""
    import contextlib
    import io

    import hf_finetune.cli as cli

    monkeypatch.delenv("HF_FINETUNE_DEBUG", raising=False)
    monkeypatch.setattr(cli, "run_recipe", lambda recipe, callbacks=None: {})  # parsing is the subject here
    tmp = tmp_path_factory.mktemp("mangled")
    text = yaml.safe_dump(tiny_recipe("some/model", str(tmp / "d.csv"), tmp / "out"))
    for position, insert, delete in edits:
        at = position % (len(text) + 1)
        text = text[:at] + insert + text[at + delete:]
    path = tmp / "r.yaml"
    path.write_bytes(text.encode("utf-8", "surrogateescape") if "\xff" not in text else text.encode("latin-1", "replace"))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["train", str(path), *argv])
    assert code in (0, 2), err.getvalue()
    if code == 2:
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        assert lines[-1].startswith("hf-finetune: error: ") and "Traceback" not in err.getvalue()
