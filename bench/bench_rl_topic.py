"""Topic steering with a reward model, judged outside the reward (issue 11).

Scores policies on the held-out prompts of ``recipes/rl/ppo_topic_reward_model.yaml`` (its
``data.eval_dataset``): the untrained SmolLM2-135M-Instruct and each trained run directory given,
with the same prompts, the same sampling settings and the same seeds. Per policy and decoding mode
(greedy, and ``--samples`` completions per prompt at the recipe's temperature):

- ``words``: share of completions in which the recipe's sports word list (its ``eval_metrics`` regex)
  matches. The word list never enters the reward.
- ``broad``: the same with the looser word list ``BROAD_WORDS``.
- ``judge``: share classified as the target label by a second classifier (``--judge-model``, e.g. the
  quickstart recipe trained with another seed and split), when given.
- ``P(target)``: mean probability of the label under the reward model itself (what PPO maximises).
- ``KL``: per-sequence KL to the untrained policy, ``mean sum_t log pi(y_t) - log pi_ref(y_t)`` over the
  sampled completions (a Monte Carlo estimate; a greedy completion has no KL estimate).
- ``ppl_ref``: perplexity of the completions under the untrained policy (fluency; a degenerate list of
  sports words scores high here), ``len`` tokens without EOS, ``eos`` share that ended, ``distinct``
  share of different completions.

Every figure comes from this script's own generations, not from the run's logs.

Usage:
    OMP_NUM_THREADS=1 python bench/bench_rl_topic.py --runs outputs/rl/ppo_topic_reward_model \\
        --judge-model /tmp/judge --samples 4 --seeds 0 1
    python bench/bench_rl_topic.py --split train --samples 4 --show 10   # the untrained policy on train prompts
    python bench/bench_rl_topic.py --runs /tmp/m/ppo_seed42 /tmp/m/grpo_seed42 --judge-model /tmp/judge --modes greedy \
        --json /tmp/m/judge.json   # the method comparison's runs (bench_rl_methods.py --task topic), greedy only
    python bench/bench_rl_topic.py --runs /tmp/r/seed2 --judge-model /tmp/judge --base-json /tmp/m/judge.json
        # reuse the untrained rows of an earlier pass with the same judge, samples and seeds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import time

import torch

RECIPE = "recipes/rl/ppo_topic_reward_model.yaml"
# The looser list of the recipe's first version (before issue 11b), fixed before any run was looked at: it also
# counts "team", "season", "win", "match", "cup", which business and TV stories use too (more false positives).
BROAD_WORDS = re.compile(r"(?i)\b(sports?|match|team|cup|league|goals?|win|season|players?|coach|football|tennis)\b")


def load_recipe_bits(path: str):
    from hf_finetune.cli import load_recipe

    recipe = load_recipe(path, [])
    patterns = [m[len("regex:"):] for m in recipe.reward.eval_metrics or [] if m.startswith("regex:")]
    if not patterns:
        raise SystemExit(f"{path} has no regex: eval metric to use as the word-list judge.")
    return recipe, re.compile(patterns[0])


def load_policy(spec: str, base_source: str):
    from transformers import AutoModelForCausalLM

    from hf_finetune.models import load_trained

    model = (AutoModelForCausalLM.from_pretrained(base_source) if spec == "base"
             else load_trained(spec, AutoModelForCausalLM))
    return model.eval().requires_grad_(False)


@torch.no_grad()
def generate(policy, tok, prompts: list[str], eos_ids: list[int], max_new: int, temperature: float | None,
             batch_size: int) -> list[tuple[list[int], list[int], bool]]:
    """(prompt ids, response ids without padding and with the EOS if any, ended) per prompt."""
    from hf_finetune.rl.sampling import exact_sampling, response_ends, rollout_generation_config

    config = rollout_generation_config(max_new, temperature or 1.0, eos_ids, tok.pad_token_id)
    if temperature is None:
        config.do_sample, config.temperature = False, None
    out = []
    for start in range(0, len(prompts), batch_size):
        enc = tok(prompts[start:start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        with exact_sampling(policy):
            seqs = policy.generate(**enc, generation_config=config)
        width = enc["input_ids"].shape[1]
        responses = seqs[:, width:]
        last, ended = response_ends(responses, eos_ids)
        for i in range(len(responses)):
            prompt_ids = enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist()
            out.append((prompt_ids, responses[i, : int(last[i]) + 1].tolist(), bool(ended[i])))
    return out


@torch.no_grad()
def response_logprobs(model, rows, pad_id: int, batch_size: int) -> list[torch.Tensor]:
    """Log-probs (temperature 1) of each response token given its prompt."""
    out = []
    for start in range(0, len(rows), batch_size):
        part = rows[start:start + batch_size]
        seqs = [p + r for p, r, _ in part]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):  # left padding, as in the rollouts
            ids[i, width - len(s):], mask[i, width - len(s):] = torch.tensor(s), 1
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float()
        logp = logits.log_softmax(-1)
        for i, (_p, r, _e) in enumerate(part):
            n = len(r)
            idx = torch.arange(width - n - 1, width - 1)
            out.append(logp[i, idx, torch.tensor(r)])
    return out


def label_probs(scorer_model, scorer_tok, texts: list[str], label_id: int) -> torch.Tensor:
    probs = []
    with torch.no_grad():
        for start in range(0, len(texts), 32):
            enc = scorer_tok(texts[start:start + 32], padding=True, truncation=True, max_length=256, return_tensors="pt")
            probs.append(scorer_model(**enc).logits.float().softmax(-1))
    return torch.cat(probs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument("--runs", nargs="*", default=[], help="trained run directories (full weights or LoRA adapter)")
    parser.add_argument("--reward-model", default=None, help="default: the recipe's reward.reward_model")
    parser.add_argument("--judge-model", default=None, help="a second classifier with the same label (not the reward)")
    parser.add_argument("--split", default="validation", choices=["validation", "train"])
    parser.add_argument("--samples", type=int, default=4, help="sampled completions per prompt and seed")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--show", type=int, default=4, help="completions printed per policy")
    parser.add_argument("--modes", nargs="+", default=["greedy", "sampled"], choices=["greedy", "sampled"],
                        help="greedy only is ~4x cheaper but gives no KL estimate")
    parser.add_argument("--json", default=None, help="also write the table here")
    parser.add_argument("--base-json", default=None,
                        help="take the untrained policy's rows from this earlier --json output instead of recomputing "
                             "them (~150 s per mode); only valid for the same recipe, judge, --samples and --seeds")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_finetune.models import ensure_pad_token, load_tokenizer, model_source
    from hf_finetune.rl.sampling import eos_token_ids
    from hf_finetune.rl.train import prepare_prompts

    recipe, words = load_recipe_bits(args.recipe)
    label = recipe.reward.reward_model_label
    tok = load_tokenizer(recipe.model, require_pad=True, padding_side="left")
    split = prepare_prompts(recipe, tok)[args.split]
    prompts = list(split[recipe.training.prompt_column])
    raw_prompts = list(split["raw_prompt"])
    max_new, temperature = recipe.training.max_completion_length, recipe.training.temperature
    base_source = model_source(recipe.model)

    def classifier(path):
        from hf_finetune.models import load_trained

        model = load_trained(path, AutoModelForSequenceClassification).eval()
        ctok = ensure_pad_token(AutoTokenizer.from_pretrained(path), path)
        return model, ctok, int(model.config.label2id[label])

    reward = classifier(args.reward_model or recipe.reward.reward_model)
    judge = classifier(args.judge_model) if args.judge_model else None
    reference = load_policy("base", base_source)
    eos_ids = eos_token_ids(reference, tok)
    print(f"threads={torch.get_num_threads()} cpus={os.cpu_count()} (machine shared unless said otherwise); "
          f"{len(prompts)} {args.split} prompts from {args.recipe}; max_new_tokens={max_new}; sampled at "
          f"T={temperature}, {args.samples} per prompt x seeds {args.seeds}; label {label!r}", flush=True)
    print(f"word list: {words.pattern}", flush=True)

    header = (f"{'policy':<42} {'mode':<8} {'n':>4} {'words':>6} {'broad':>6} {'judge':>6} {'P(tgt)':>7} {'KL':>6} "
              f"{'ppl_ref':>8} {'len':>5} {'eos':>5} {'distinct':>8}")
    results = []
    if args.base_json:
        with open(args.base_json) as f:
            saved = {row["mode"]: row for row in json.load(f) if row["policy"] == "base"}
        missing = [mode for mode in args.modes if mode not in saved]
        if missing:
            raise SystemExit(f"{args.base_json} has no untrained rows for mode(s) {missing}: run without --base-json.")
        for mode in args.modes:
            results.append(("base", mode, {k: v for k, v in saved[mode].items() if k not in ("policy", "mode")}))
        print(f"untrained policy's rows read from {args.base_json} (not recomputed)", flush=True)
    for spec in ([] if args.base_json else ["base"]) + list(args.runs):
        started = time.time()
        policy = reference if spec == "base" else load_policy(spec, base_source)
        for mode in args.modes:
            rows, prompt_of = [], []
            if mode == "greedy":
                rows = generate(policy, tok, prompts, eos_ids, max_new, None, args.batch_size)
                prompt_of = list(range(len(prompts)))
            else:
                for seed in args.seeds:
                    torch.manual_seed(seed)
                    many = [p for p in prompts for _ in range(args.samples)]
                    rows += generate(policy, tok, many, eos_ids, max_new, temperature, args.batch_size)
                    prompt_of += [i for i in range(len(prompts)) for _ in range(args.samples)]
            texts = [tok.decode(r[:-1] if e else r, skip_special_tokens=True) for _p, r, e in rows]
            ref_lp = response_logprobs(reference, rows, tok.pad_token_id, args.batch_size)
            nll = -torch.cat(ref_lp)
            fig = {
                "n": len(rows),
                "words": sum(bool(words.search(t)) for t in texts) / len(texts),
                "broad": sum(bool(BROAD_WORDS.search(t)) for t in texts) / len(texts),
                "P(tgt)": label_probs(reward[0], reward[1], texts, reward[2])[:, reward[2]].mean().item(),
                "judge": (label_probs(judge[0], judge[1], texts, judge[2]).argmax(-1) == judge[2]).float().mean().item()
                if judge else float("nan"),
                "ppl_ref": math.exp(nll.mean().item()),
                "len": sum(len(r) - e for _p, r, e in rows) / len(rows),
                "eos": sum(e for _p, _r, e in rows) / len(rows),
                "distinct": len(set(texts)) / len(texts),
                "KL": float("nan"),
            }
            if mode == "sampled" and spec != "base":
                pol_lp = response_logprobs(policy, rows, tok.pad_token_id, args.batch_size)
                fig["KL"] = sum((a - b).sum().item() for a, b in zip(pol_lp, ref_lp)) / len(rows)
            elif mode == "sampled":
                fig["KL"] = 0.0
            results.append((spec, mode, fig))
            print(f"\n{spec} [{mode}] e.g.:")
            for k in range(min(args.show, len(texts))):
                j = k * max(1, len(texts) // max(args.show, 1))
                print(f"  {raw_prompts[prompt_of[j]][:60]!r} -> {texts[j][:160]!r}")
        print(f"({spec}: {time.time() - started:.0f} s)", flush=True)

    print("\n" + header)
    for spec, mode, f in results:
        name = spec if len(spec) <= 42 else "..." + spec[-39:]
        print(f"{name:<42} {mode:<8} {f['n']:>4} {f['words']:>6.3f} {f['broad']:>6.3f} {f['judge']:>6.3f} {f['P(tgt)']:>7.3f} "
              f"{f['KL']:>6.2f} {f['ppl_ref']:>8.2f} {f['len']:>5.1f} {f['eos']:>5.2f} {f['distinct']:>8.2f}")
    base = {mode: f for spec, mode, f in results if spec == "base"}
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"policy": spec, "mode": mode, **fig} for spec, mode, fig in results], f, indent=1)
    for spec, mode, f in results:
        if spec != "base":
            print(f"change vs untrained, {spec} [{mode}]: words {100 * (f['words'] - base[mode]['words']):+.1f} "
                  f"points, broad words {100 * (f['broad'] - base[mode]['broad']):+.1f} points, judge {100 * (f['judge'] - base[mode]['judge']):+.1f} points, P(target) "
                  f"{base[mode]['P(tgt)']:.3f} -> {f['P(tgt)']:.3f}")


if __name__ == "__main__":
    main()
