"""Which loops a trained rl_env BabyAI agent's failed greedy episodes are caught in.

The env and a greedy policy are both deterministic, so once the agent is back in the same cell, facing
the same way, with the same observation, it repeats what it did from there until the time limit. For
each failed held-out episode (the run's own eval seed, as `hf-finetune eval RUN_DIR` plays them) this
finds the first such repeat and prints the action cycle that follows it ("turn left" x4: turning on
the spot; "go forward" x1: walking into something ahead), how many views the cycle goes through, and
a tally of the cycles over all failures. Runs trained with `env_kwargs: {last_action: true}` include the
previous action in the observation (`steps_here: true`, the steps spent in the current cell), so their
repeats must match it too; a count only repeats once it saturates.

For agents with ``sentence_pooling: attention`` it also prints, by mission, how much attention the
mission puts on the sentence naming its object ("go to the blue ball": "you see a blue ball ...") while
that sentence is in view, per head: a failed run whose attention never finds one goal's object, against
one that finds it and still loops.

Usage:
    python bench/bench_agents_loops.py RUN_DIR [RUN_DIR ...] --episodes 50 --show 3
"""

from __future__ import annotations

import argparse
import collections
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def kind(cycle: list[str], cells: int) -> str:
    """Name a loop: turning on the spot, walking into something ahead, a circuit over several cells, ..."""
    if not cycle:
        return "no repeat"
    if cells > 1:
        return "circuit over several cells"
    if set(cycle) <= {"turn left", "turn right"}:
        return "turning on the spot" if len(set(cycle)) == 1 else "left/right alternation"
    if cycle == ["go forward"]:
        return "walking into something ahead"
    return "other action on the spot"


def attention_on_goal(agent, obs, view: str, tally: dict) -> None:
    """Add this step's attention on the sentence naming the mission's object (if one is in view) to ``tally``
    (``mission -> [steps, per-head sums]``); nothing for agents without attention pooling."""
    import torch

    from hf_finetune.rl_env.extractor import lm_extractors

    extractor = lm_extractors(agent.policy)[0]
    if extractor.sentence_pooling != "attention":
        return
    sentences = [part.strip() for part in view.split(".") if part.strip()]
    mission = sentences[0].replace("mission : ", "")
    goal = " ".join(mission.split()[-2:])  # "go to the red ball" -> "red ball"
    columns = [1 + i for i, text in enumerate(sentences[extractor.sentence_slots:]) if goal in text]
    if not columns:
        return
    ids = obs[extractor.text_key] if extractor.text_key else obs
    weights = extractor.sentence_attention(torch.as_tensor(ids, dtype=torch.float32))[0]
    entry = tally.setdefault(mission, [0, 0.0])
    entry[0] += 1
    entry[1] = entry[1] + weights[columns].sum(0).numpy()


def play(agent, env, episodes: int, seed: int, deterministic: bool = True,
         missions: dict | None = None, attention: dict | None = None) -> tuple[int, list[dict]]:
    """Successes over ``episodes`` held-out episodes, and a record of each failed one's loop.

    ``deterministic=False`` samples the actions instead (bench_agents_greedy_gap.py compares the two). A
    recurrent policy gets its state back each step and a fresh one at each episode start. ``missions``,
    if given, is filled with ``mission -> [successes, episodes]``, and ``attention`` as :func:`attention_on_goal`.
    """
    import numpy as np

    from hf_finetune.rl_env.envs import ACTION_NAMES

    text_env = env.envs[0].unwrapped  # BabyAITextEnv: its .env is the minigrid level in play
    decode = env.envs[0].get_wrapper_attr("decode")
    env.seed(seed)
    obs = env.reset()
    successes, failures = 0, []
    actions, keys, views = [], [], []
    state, starts = None, np.ones(1, dtype=bool)
    while successes + len(failures) < episodes:
        action, state = agent.predict(obs, state=state, episode_start=starts, deterministic=deterministic)
        grid = text_env.env.unwrapped
        ids = obs["text"][0] if isinstance(obs, dict) else obs[0]
        memory = tuple(int(obs[k][0]) for k in sorted(obs) if k != "text") if isinstance(obs, dict) else ()
        keys.append((tuple(grid.agent_pos), int(grid.agent_dir), ids.tobytes(), memory))
        views.append(decode(ids))
        if attention is not None:
            attention_on_goal(agent, obs, views[-1], attention)
        actions.append(int(action[0]))
        obs, _, done, info = env.step(action)
        starts = done
        if not done[0]:
            continue
        if missions is not None:  # the view's first sentence is the mission
            tally = missions.setdefault(views[0].split(".")[0].replace("mission : ", ""), [0, 0])
            tally[0] += int(bool(info[0].get("is_success", False)))
            tally[1] += 1
        if info[0].get("is_success", False):
            successes += 1
        else:
            first: dict = {}
            start = end = None
            for t, key in enumerate(keys):
                if key in first:
                    start, end = first[key], t
                    break
                first[key] = t
            cycle = [ACTION_NAMES[a] for a in actions[start:end]] if start is not None else []
            cells_in_cycle = len({k[0] for k in keys[start:end]}) if cycle else 0
            failures.append({"length": len(actions), "loop_from": start, "cycle": cycle, "kind": kind(cycle, cells_in_cycle),
                             "views_in_cycle": len(set(views[start:end])) if cycle else 0,
                             "cells": len({k[0] for k in keys}), "view": views[start] if cycle else views[-1],
                             "actions": collections.Counter(ACTION_NAMES[a] for a in actions)})
        actions, keys, views = [], [], []
    return successes, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="rl_env BabyAI-Text run directories (recipe.yaml + policy.safetensors)")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--show", type=int, default=3, help="failed episodes to print per run")
    args = parser.parse_args()
    import torch
    import yaml

    from hf_finetune.rl_env.train import load_agent

    torch.set_num_threads(1)
    for run in args.runs:
        recipe = yaml.safe_load(open(os.path.join(run, "recipe.yaml")))
        seed = int((recipe["env"] or {}).get("eval_seed", 1_000_000))
        kwargs = recipe["env"].get("env_kwargs") or {}
        memory = ", ".join(k for k in ("last_action", "steps_here") if kwargs.get(k)) or "none"
        agent = load_agent(run)
        missions: dict[str, list[int]] = {}
        attention: dict[str, list] = {}
        successes, failures = play(agent, agent.get_env(), args.episodes, seed, missions=missions, attention=attention)
        kinds = collections.Counter(f["kind"] for f in failures)
        cycles = collections.Counter(" / ".join(f["cycle"]) for f in failures if f["cycle"])
        print(f"{run} (memory: {memory}): greedy {successes / args.episodes:.2f} on {args.episodes} held-out "
              f"episodes (eval seed {seed}); {len(failures)} failed: "
              f"{', '.join(f'{n} {k}' for k, n in kinds.most_common()) or '-'}")
        print("  success by mission: " + ", ".join(f"{m} {s}/{n}" for m, (s, n) in sorted(missions.items())))
        for mission, (steps, sums) in sorted(attention.items()):
            print(f"  attention on the {' '.join(mission.split()[-2:])} while in view ({mission}, {steps} steps), by head: "
                  + " ".join(f"{w / steps:.2f}" for w in sums))
        if cycles:
            print("  most common cycles: " + ", ".join(f"{n}x [{c}]" for c, n in cycles.most_common(3)))
        if failures:
            on_spot = sum(f["cells"] == 1 for f in failures)
            print(f"  failed episodes that never left their first cell: {on_spot}; median step the loop starts: "
                  f"{sorted(f['loop_from'] if f['loop_from'] is not None else -1 for f in failures)[len(failures) // 2]}")
        for f in failures[: args.show]:
            print(f"  loop from step {f['loop_from']} over {f['views_in_cycle']} view(s), {f['cells']} cell(s) visited, "
                  f"actions {dict(f['actions'])}; a view in it: {f['view']}")


if __name__ == "__main__":
    main()
