"""Writes notebooks/quickstart.ipynb (run: python tools/make_quickstart_notebook.py)."""

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = [
    new_markdown_cell(
        "# hf-finetune quickstart\n\n"
        "Fine-tune **all-MiniLM-L6-v2** on **BBC News** topics (5 classes) from Python, offline, on CPU.\n"
        "The same job as `hf-finetune train recipes/quickstart.yaml`.\n\n"
        "Set `HF_FINETUNE_NOTEBOOK_TINY=1` to run a cut-down version (a few steps on a sample), as the test suite does."
    ),
    new_code_cell(
        "import os\n"
        "from pathlib import Path\n\n"
        "from hf_finetune import load_recipe, run_recipe\n\n"
        "TINY = os.environ.get('HF_FINETUNE_NOTEBOOK_TINY') == '1'\n"
        "repo = Path.cwd() if (Path.cwd() / 'recipes').is_dir() else Path.cwd().parent\n"
        "overrides = ['--output_dir', str(repo / 'outputs' / 'quickstart-notebook')]\n"
        "if TINY:\n"
        "    overrides += ['--max_steps', '3', '--max_train_samples', '48', '--max_eval_samples', '40',\n"
        "                  '--max_length', '32', '--report_to', 'none']"
    ),
    new_markdown_cell("Load the recipe (YAML + overrides, validated field by field), then train and evaluate."),
    new_code_cell(
        "recipe = load_recipe(str(repo / 'recipes' / 'quickstart.yaml'), overrides)\n"
        "print(recipe.model.model_name_or_path, '|', recipe.data.dataset, '|', recipe.training.learning_rate)\n"
        "metrics = run_recipe(recipe)\n"
        "print({k: metrics[k] for k in ('eval_accuracy', 'eval_f1_macro')})"
    ),
    new_markdown_cell("The run directory holds the model, tokenizer, resolved recipe, metrics and plots."),
    new_code_cell(
        "run_dir = Path(recipe.training.output_dir)\n"
        "sorted(p.name for p in run_dir.iterdir())"
    ),
    new_markdown_cell("Reload the fine-tuned classifier and predict."),
    new_code_cell(
        "from transformers import pipeline\n\n"
        "classify = pipeline('text-classification', model=str(run_dir), device='cpu')\n"
        "classify(['The striker scored twice as the club won the cup final.',\n"
        "          'Shares fell after the bank reported lower quarterly profits.'])"
    ),
]
nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
nbformat.write(nb, "notebooks/quickstart.ipynb")
