"""Entry point of the ``self_supervised`` recipe method: MLM / whole-word / span / CLM / FIM training.

Optionally chained into a supervised recipe (``training.finetune``) that starts from the adapted
encoder with a fresh task head: domain- or task-adaptive pretraining followed by fine-tuning.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from transformers import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    MODEL_FOR_MASKED_LM_MAPPING,
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    DataCollatorWithFlattening,
)

from ..config import DataArguments, LoraArguments, MethodEntry, ModelArguments, Recipe
from ..models import (
    apply_lora,
    check_model_fits,
    export_model,
    load_model,
    load_tokenizer,
    load_trained,
    model_source,
)
from ..recipe_parsing import parse_recipe, read_recipe_yaml
from ..runs import TrainingRun
from ..supervised import train as supervised_entry
from .collators import FIM_TOKENS, _require_mask_token, add_fim_tokens
from .config import MASKED_OBJECTIVES, SelfSupervisedConfig, TextArguments
from .text import split_corpus, tokenize_corpus
from .trainer import SET_BY_TRAINER, SelfSupervisedTrainer, make_collator

logger = logging.getLogger(__name__)

BLOCKS = {
    "model": ModelArguments,
    "data": DataArguments,
    "text": TextArguments,
    "lora": LoraArguments,
    "training": SelfSupervisedConfig,
}


@torch.no_grad()
def supports_padding_free(model) -> bool:
    """Whether ``model`` keeps two sequences packed in one row apart given only ``position_ids``.

    Checked by running it: the logits of the second sequence packed after a first one must equal
    its logits alone. Models whose attention masks come from ``transformers.masking_utils`` pass
    (Llama, SmolLM2) - without a KV cache only, which is why training sets ``use_cache=False``;
    others would silently attend across documents.
    """
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (7,), generator=torch.Generator().manual_seed(0))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        positions = torch.tensor([[0, 1, 2, 0, 1, 2, 3]], device=device)
        packed = model(input_ids=ids[None].to(device), position_ids=positions, use_cache=False)
        alone = model(input_ids=ids[None, 3:].to(device), use_cache=False)
    finally:
        model.train(was_training)
    return bool(torch.allclose(packed.logits[0, 3:].float(), alone.logits[0].float(), atol=1e-4))


def _check_model_kind(model_args: ModelArguments, objective: str) -> None:
    config = AutoConfig.from_pretrained(
        model_source(model_args), revision=model_args.revision, trust_remote_code=model_args.trust_remote_code
    )
    if objective in MASKED_OBJECTIVES and (type(config) not in MODEL_FOR_MASKED_LM_MAPPING or config.is_decoder):
        raise ValueError(
            f"{model_args.model_name_or_path} is a causal (decoder-only) model ({config.model_type}) and has no "
            f"masked-LM head, so objective '{objective}' cannot train it: use objective 'clm' or 'fim'."
        )
    if objective not in MASKED_OBJECTIVES and type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ValueError(
            f"{model_args.model_name_or_path} ({config.model_type}) is not a causal LM: objective '{objective}' "
            "needs one; use objective 'mlm', 'whole_word' or 'span' for encoders."
        )


def _block_size(data: DataArguments, model) -> int:
    return data.max_length or getattr(model.config, "max_position_embeddings", None) or 512


def _tokenize(recipe: Recipe, texts, tokenizer, block_size: int, split: str):
    return tokenize_corpus(
        texts,
        tokenizer,
        block_size,
        packing=recipe.text.packing,
        with_offsets=recipe.training.objective == "whole_word",
        num_proc=recipe.data.preprocessing_num_workers,
        split=split,
    )


def build(recipe: Recipe):
    """Tokenizer, model (LoRA-wrapped when asked), collator and tokenized splits, all validated."""
    args: SelfSupervisedConfig = recipe.training
    model_args, data, text, lora = recipe.model, recipe.data, recipe.text, recipe.lora
    masked = args.objective in MASKED_OBJECTIVES
    _check_model_kind(model_args, args.objective)
    tokenizer = load_tokenizer(model_args, require_pad=True)
    if masked:
        _require_mask_token(tokenizer, f"objective '{args.objective}'")
    model = load_model(model_args, AutoModelForMaskedLM if masked else AutoModelForCausalLM)
    sentinels = None
    if args.objective == "fim":
        add_fim_tokens(tokenizer, model)
        # Under LoRA the embedding is frozen: the sentinel rows (new, or never used in pretraining)
        # would stay as initialised, so they train beside the adapters.
        sentinels = tokenizer.convert_tokens_to_ids(list(FIM_TOKENS))
    block_size = _block_size(data, model)
    check_model_fits(model, tokenizer, block_size + (3 if args.objective == "fim" else 0))
    collator = make_collator(args, tokenizer)
    splits = split_corpus(data, text)
    tokenized = {split: _tokenize(recipe, ds, tokenizer, block_size, split) for split, ds in splits.items()}
    if args.padding_free:
        if not supports_padding_free(model):
            raise ValueError(
                f"{model_args.model_name_or_path} ({model.config.model_type}) does not separate packed sequences "
                "by position_ids: set training.padding_free false."
            )
        collator = DataCollatorWithFlattening()
        # transformers only reads packed position_ids when no KV cache is built (masking_utils).
        model.config.use_cache = False
    if lora.use_lora:
        model = apply_lora(model, lora, task_type=None if masked else "CAUSAL_LM", trainable_tokens=sentinels)
    return tokenizer, model, collator, tokenized


def carries_adapter(recipe: Recipe) -> bool:
    """Whether the supervised phase trains this run's LoRA adapter further (``finetune_lora: carry``)."""
    return bool(recipe.training.finetune and recipe.lora.use_lora and recipe.training.finetune_lora == "carry")


def load_finetune_recipe(recipe: Recipe):
    """The supervised recipe of ``training.finetune``, pointed at this run's output.

    Merged (or full) pretraining hands over ``<output_dir>/encoder``; a carried adapter hands over
    the unchanged base model plus the adapter in ``<output_dir>``.
    """
    args = recipe.training
    data = read_recipe_yaml(args.finetune)
    if data["method"] != "supervised":
        raise ValueError(f"training.finetune={args.finetune!r} must be a recipe with method: supervised.")
    run_dir = Path(args.output_dir)
    overrides = {"model_name_or_path": str(run_dir / "encoder"), "output_dir": str(run_dir / "finetune")}
    if carries_adapter(recipe):
        overrides.update(model_name_or_path=recipe.model.model_name_or_path, use_lora=True,
                         lora_adapter_path=str(run_dir))
        if recipe.model.gguf_file:
            overrides["gguf_file"] = recipe.model.gguf_file
    overrides.update(args.finetune_overrides or {})
    forwarded = command_line_overrides(recipe)
    if forwarded:
        logger.info("Command-line values also applied to the fine-tune: %s", forwarded)
    overrides.update(forwarded)
    return parse_recipe(data, supervised_entry.BLOCKS, overrides, source=str(args.finetune))


# Set on the command line of a TAPT recipe, these stay with the pretraining phase: the fine-tune has
# its own data, model, optimizer settings and place (and is never pushed under the TAPT run's name).
PHASE_OWN_FIELDS = frozenset({
    "output_dir", "model_name_or_path", "tokenizer_name_or_path", "revision", "gguf_file", "dataset",
    "dataset_config", "eval_dataset", "train_split", "eval_split", "test_dataset", "test_split", "text_column",
    "text_pair_column", "label_column", "class_names", "validation_size", "learning_rate", "weight_decay",
    "warmup_steps", "warmup_ratio", "lr_scheduler_type", "resume_from_checkpoint", "run_name", "logging_dir",
    "push_to_hub", "hub_model_id", "hub_revision", "hub_private_repo", "use_lora", "lora_adapter_path",
})


def command_line_overrides(recipe: Recipe) -> dict:
    """Values of a loaded recipe that differ from its YAML file alone: what the command line changed.

    A smoke run (``--max_steps 2 --max_train_samples 32``) of a TAPT recipe means the whole chain;
    these values go on to the fine-tune too (those the supervised recipe takes, except
    :data:`PHASE_OWN_FIELDS`). A recipe built in Python (no file) forwards nothing.
    """
    if not recipe.source or not Path(recipe.source).is_file():
        return {}
    baseline = parse_recipe(read_recipe_yaml(recipe.source), BLOCKS, None, source=recipe.source)
    accepted = {f.name for cls in supervised_entry.BLOCKS.values() for f in dataclasses.fields(cls)}
    changed = {}
    for name, block in recipe.blocks.items():
        for field in dataclasses.fields(block):
            key = field.name
            if key not in accepted or key in PHASE_OWN_FIELDS or key in SET_BY_TRAINER or not field.init:
                continue
            value, before = getattr(block, key, None), getattr(baseline.blocks[name], key, None)
            if value != before:
                value = getattr(value, "value", value)  # enums (eval_strategy, ...) as their words
                if key == "report_to" and isinstance(value, list):  # TrainingArguments turned "none" into []
                    value = ",".join(value) or "none"
                changed[key] = value
    return changed


def export_encoder(model, tokenizer, model_args: ModelArguments, directory: Path) -> None:
    """Save the adapted encoder as the pretrained model's base class (e.g. ``BertModel``).

    ``BertForMaskedLM`` has no pooler, so a classifier loaded from its checkpoint would get a
    random one; starting from the original base model and loading the adapted weights over it
    keeps the pretrained pooler (and anything else the LM head model lacks).
    """
    base = load_model(model_args, AutoModel)
    if len(tokenizer) != base.get_input_embeddings().num_embeddings:
        base.resize_token_embeddings(len(tokenizer))
    adapted = model.base_model.state_dict()
    result = base.load_state_dict(adapted, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"Cannot map the adapted weights onto {type(base).__name__}: {result.unexpected_keys[:3]}")
    export_model(base, tokenizer, directory)


def evaluate(recipe: Recipe, run_dir: str) -> dict:
    """Eval loss and perplexity of the model (or adapter) in ``run_dir`` on the recipe's held-out text.

    Masks are the fixed evaluation masks of training, so the result reproduces the run's
    ``metrics.json`` (or scores ``data.eval_dataset`` the same way).
    """
    args: SelfSupervisedConfig = recipe.training
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    model = load_trained(run_dir, AutoModelForMaskedLM if args.objective in MASKED_OBJECTIVES else AutoModelForCausalLM)
    texts = split_corpus(recipe.data, recipe.text)["validation"]
    trainer = SelfSupervisedTrainer(
        model=model,
        args=args,
        eval_dataset=_tokenize(recipe, texts, tokenizer, _block_size(recipe.data, model), "validation"),
        processing_class=tokenizer,
        data_collator=DataCollatorWithFlattening() if args.padding_free else make_collator(args, tokenizer),
    )
    return trainer.evaluate()


def run(recipe: Recipe, callbacks: list | None = None) -> dict:
    """Train as the recipe says; returns eval loss / perplexity (and ``finetune_*`` metrics when chained).

    ``callbacks`` are extra ``TrainerCallback`` instances for the self-supervised phase.
    """
    args: SelfSupervisedConfig = recipe.training
    if args.finetune:  # a bad second recipe fails now, not after pretraining
        load_finetune_recipe(recipe)
    if carries_adapter(recipe) and recipe.lora.lora_merge_on_export:
        raise ValueError(
            "training.finetune_lora: carry hands the adapter itself to the supervised phase, so "
            "lora.lora_merge_on_export must be false (or use finetune_lora: merge)."
        )
    if args.mlm_head_warmup_steps and recipe.lora.use_lora:
        raise ValueError("training.mlm_head_warmup_steps needs full training: remove the lora block or set it to 0.")
    with TrainingRun(recipe, callbacks) as run_:
        tokenizer, model, collator, tokenized = build(recipe)
        run_.log_trainable(model)
        trainer = SelfSupervisedTrainer(
            model=model,
            args=args,
            data_collator=collator,
            train_dataset=tokenized["train"],
            eval_dataset=tokenized["validation"],
            processing_class=tokenizer,
            callbacks=run_.callbacks(),
        )
        run_.train(trainer)
        metrics = trainer.evaluate()
        metrics["train_blocks"] = len(tokenized["train"])
        first_eval = next((e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e), None)
        if args.eval_on_start and first_eval is not None:
            metrics["eval_loss_at_start"] = first_eval
        run_dir = Path(args.output_dir)
        final = trainer.model
        if recipe.lora.use_lora and (recipe.lora.lora_merge_on_export or (args.finetune and not carries_adapter(recipe))):
            final = final.merge_and_unload()
        export_model(final, tokenizer, run_dir)
        trainer.log_metrics("eval", metrics)
        metrics = run_.finish(metrics, ("eval_loss", "eval_perplexity"), trainer=trainer)
    if args.finetune and trainer.is_world_process_zero():
        if not carries_adapter(recipe):  # a carried adapter keeps the base model unchanged
            export_encoder(final, tokenizer, recipe.model, Path(args.output_dir) / "encoder")  # the committed run
        finetuned = supervised_entry.run(load_finetune_recipe(recipe))
        metrics.update({f"finetune_{k}": v for k, v in finetuned.items()})
    return metrics


def card_details(recipe: dict, metrics: dict) -> dict:
    """Model-card fields of a self-supervised run: fill-mask for masked objectives, text-generation otherwise."""
    objective = (recipe.get("training") or {}).get("objective") or "mlm"
    return {"task_type": "fill-mask" if objective in MASKED_OBJECTIVES else "text-generation", "task": objective}


ENTRY = MethodEntry("self_supervised", blocks=lambda: BLOCKS, run=run, evaluate=evaluate, card_details=card_details)


def __getattr__(name: str):
    if name == "HeadWarmupCallback":  # lived here before 0.2 (the trainer and make_collator are imported above)
        import warnings

        from . import trainer

        warnings.warn(f"hf_finetune.self_supervised.train.{name} moved to hf_finetune.self_supervised.trainer; "
                      "the old path goes away in 0.3.", DeprecationWarning, stacklevel=2)
        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
