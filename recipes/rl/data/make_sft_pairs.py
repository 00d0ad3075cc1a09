"""Write short_answers_sft.jsonl: SFT warm-start pairs the untrained policy already knows the answer to.

    OMP_NUM_THREADS=1 python recipes/rl/data/make_sft_pairs.py     # ~1 min on 2 CPU cores

SmolLM2-135M-Instruct answers "What is the capital of Spain?" with "The capital of Spain is Madrid." and rarely
adds the "Answer: <word>" line the prompts ask for. It finds facts through that sentence: fine-tuned to answer
with the bare word it guesses instead (measured: "Italy" -> "Italia", "Austria" -> "Austria"; held-out
exact_match 0.03, contains_answer 0.35), and on facts it does not know it learns to guess too. So the pairs are
the questions of short_answers_sft_pool.jsonl (none of them an RL or held-out question) whose greedy sentence
already contains a right answer, each paired with THAT sentence followed by "Answer: <answer>": the warm start
adds the format and leaves the facts alone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_finetune.models import resolve_model_path
from hf_finetune.rl.rewards import exact_match
from hf_finetune.rl.sampling import exact_sampling

HERE = Path(__file__).parent


def _sentence(text: str) -> str:
    """The policy's own first line, without an answer line it may have started."""
    line = text.strip().splitlines()[0]
    return re.split(r"\s*answer\s*(?:is|:)", line, flags=re.IGNORECASE)[0].strip() or line.strip()


def main() -> None:
    path, _ = resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct")
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    rows = [json.loads(line) for line in (HERE / "short_answers_sft_pool.jsonl").open()]
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                           add_generation_prompt=True) for r in rows]
    completions = []
    for start in range(0, len(texts), 20):
        batch = tokenizer(texts[start : start + 20], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad(), exact_sampling(model):
            out = model.generate(**batch, do_sample=False, max_new_tokens=24, pad_token_id=tokenizer.pad_token_id)
        completions += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    knows = exact_match(mode="contains")(texts, completions, answer=[r["answer"] for r in rows])
    pairs = [{"prompt": [{"role": "user", "content": r["prompt"]}],
              "completion": [{"role": "assistant", "content": f"{_sentence(text)}\nAnswer: {r['answer'][0]}"}]}
             for r, text, hit in zip(rows, completions, knows) if hit]
    (HERE / "short_answers_sft.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    print(f"short_answers_sft.jsonl: {len(pairs)} of {len(rows)} pool questions answered right by the untrained policy")


if __name__ == "__main__":
    main()
