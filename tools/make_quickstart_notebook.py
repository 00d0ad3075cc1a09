"""Writes notebooks/quickstart.ipynb; with --execute, runs it for real first so it is committed with outputs.

    .venv/bin/python tools/make_quickstart_notebook.py             # cells only
    .venv/bin/python tools/make_quickstart_notebook.py --execute   # the real quickstart (minutes), outputs saved
    .venv/bin/python tools/make_quickstart_notebook.py --execute-existing notebooks/supervised.ipynb  # any notebook

The test suite executes the notebook tiny (HF_FINETUNE_NOTEBOOK_TINY=1) in memory and never writes it back.
"""

import argparse
import os
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = Path(__file__).resolve().parents[1]

cells = [
    new_markdown_cell(
        "# hf-finetune quickstart\n\n"
        "Fine-tune **all-MiniLM-L6-v2** on **BBC News** topics (5 classes) from Python, offline, on CPU.\n"
        "The same job as `hf-finetune train recipes/quickstart.yaml`; the outputs below are from a real run.\n\n"
        "Set `HF_FINETUNE_NOTEBOOK_TINY=1` to run a cut-down version (the same model and data, a few steps on a\n"
        "sample), as the test suite does."
    ),
    new_code_cell(
        "import os\n"
        "from pathlib import Path\n\n"
        "import hf_finetune\n"
        "from hf_finetune import load_recipe, run_recipe\n\n"
        "TINY = os.environ.get('HF_FINETUNE_NOTEBOOK_TINY') == '1'\n"
        "# The checkout holding recipes/: the folder Jupyter started in or one above it, else the package's own.\n"
        "here = Path.cwd().resolve()\n"
        "repo = next((p for p in (here, *here.parents) if (p / 'recipes' / 'quickstart.yaml').is_file()),\n"
        "            Path(hf_finetune.__file__).resolve().parents[1])\n"
        "overrides = ['--output_dir', str(repo / 'outputs' / 'quickstart-notebook'), '--overwrite_output_dir', 'true',\n"
        "             '--disable_tqdm', 'true']\n"
        "if TINY:\n"
        "    overrides += ['--max_steps', '3', '--max_train_samples', '48', '--max_eval_samples', '40',\n"
        "                  '--max_length', '32', '--report_to', 'none', '--logging_steps', '1']"
    ),
    new_markdown_cell("Load the recipe (YAML + overrides, validated field by field), then train and evaluate."),
    new_code_cell(
        "recipe = load_recipe(str(repo / 'recipes' / 'quickstart.yaml'), overrides)\n"
        "print(recipe.model.model_name_or_path, '|', recipe.data.dataset, '|', recipe.training.learning_rate)\n"
        "metrics = run_recipe(recipe)\n"
        "print({k: round(metrics[k], 4) for k in ('eval_accuracy', 'eval_f1_macro', 'train_runtime_s')})"
    ),
    new_markdown_cell(
        "The run directory holds the model, tokenizer, resolved recipe, metrics (also as `all_results.json`,\n"
        "`eval_results.json`, `train_results.json`), a model card and plots."
    ),
    new_code_cell(
        "from IPython.display import Image, display\n\n"
        "run_dir = Path(recipe.training.output_dir)\n"
        "print(sorted(p.name for p in run_dir.iterdir()))\n"
        "for plot in ('curves.png', 'confusion_matrix.png'):\n"
        "    if (run_dir / plot).is_file():  # curves need logged steps: a tiny run may have none\n"
        "        display(Image(filename=str(run_dir / plot)))"
    ),
    new_markdown_cell(
        "The run is an ordinary transformers model: `pipeline` reloads it with its label names.\n"
        "(`hf-finetune predict RUN_DIR --data new.csv` does the same for a whole file.)"
    ),
    new_code_cell(
        "from transformers import pipeline\n\n"
        "classify = pipeline('text-classification', model=str(run_dir), device='cpu')\n"
        "classify(['The striker scored twice as the club won the cup final.',\n"
        "          'Shares fell after the bank reported lower quarterly profits.'])"
    ),
]


def execute(nb) -> None:
    """Run a notebook for real (not tiny), from notebooks/ as Jupyter would, keeping its outputs."""
    import nbclient

    os.environ.pop("HF_FINETUNE_NOTEBOOK_TINY", None)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    nbclient.NotebookClient(nb, timeout=3600, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--execute", action="store_true", help="run the real quickstart and save its outputs")
    parser.add_argument("--execute-existing", nargs="+", metavar="NOTEBOOK",
                        help="instead: run these existing notebooks for real and save their outputs in place")
    args = parser.parse_args()
    if args.execute_existing:
        for path in args.execute_existing:
            nb = nbformat.read(path, as_version=4)
            execute(nb)
            nbformat.write(nb, path)
        return
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    if args.execute:
        execute(nb)
    nbformat.write(nb, str(REPO / "notebooks" / "quickstart.ipynb"))


if __name__ == "__main__":
    main()
