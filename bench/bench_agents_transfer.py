"""Transfer to BabyAI levels not trained on: the PPO recipe vs the zoo's symbolic PPO vs random.

Both agents train on ``--train-level`` only (the LM agent: ``recipes/rl_env/babyai_text_ppo.yaml`` as
shipped with that level; the symbolic agent: rl-baselines3-zoo's MiniGrid PPO on ``FlatObsWrapper``,
see ``bench_agents_levels.py``), then play held-out episodes (eval seed 1,000,000, greedy) of every
``--eval-levels`` level, never seen in training.

Usage:
    python bench/bench_agents_transfer.py --train-level BabyAI-GoToObj-v0 --steps 50000 \\
        --eval-levels BabyAI-GoToObj-v0 BabyAI-GoToRedBallGrey-v0 BabyAI-GoToRedBall-v0 BabyAI-GoToLocal-v0
    python bench/bench_agents_transfer.py --train-level BabyAI-GoToObj-v0 BabyAI-GoToRedBallGrey-v0 --steps 150000 \
        --eval-levels BabyAI-GoToObj-v0 BabyAI-GoToRedBallGrey-v0 BabyAI-GoToRedBall-v0 BabyAI-GoToLocal-v0   # curriculum
    python bench/bench_agents_transfer.py --runs RUN_DIR [RUN_DIR ...] \
        --eval-levels BabyAI-GoToRedBallGrey-v0 BabyAI-GoToRedBall-v0 BabyAI-GoToRedBlueBall-v0 BabyAI-OpenRedDoor-v0

``--runs`` trains nothing: it plays finished ``rl_env`` runs (e.g. ``babyai_text_ppo_levels.yaml`` as
written, one level each) on the held-out episodes of every ``--eval-levels`` level, with each run's own
recipe (features, ``describe_ahead``) and only the level replaced; one column per run, random beside.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench_agents_levels import EVAL_SEED, RECIPES, ZOO_PPO, flat_env, score  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="*", default=[], help="finished rl_env run dirs to play on --eval-levels "
                        "(no training)")
    parser.add_argument("--train-level", nargs="+", default=["BabyAI-GoToObj-v0"],
                        help="one level, or several: a multi-level curriculum (LM agent only; no symbolic row)")
    parser.add_argument("--eval-levels", nargs="+", required=True)
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--episodes", type=int, default=50)
    args = parser.parse_args()
    import numpy as np
    import torch
    import yaml
    from stable_baselines3 import PPO
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.vec_env import VecNormalize

    from hf_finetune.recipe_parsing import parse_recipe
    from hf_finetune.rl_env.train import BLOCKS, evaluate, run

    torch.set_num_threads(1)
    if args.runs:
        return finished_runs(args)
    start = time.perf_counter()
    data = yaml.safe_load((RECIPES / "babyai_text_ppo.yaml").read_text())
    train = args.train_level[0] if len(args.train_level) == 1 else list(args.train_level)
    data["env"]["env_kwargs"] = {"level": train}
    data["env"].update(max_length=128, eval_seed=EVAL_SEED)
    out = tempfile.mkdtemp(prefix="bench-transfer-")
    data["agent"].update(output_dir=out, total_timesteps=args.steps, eval_freq=0, n_eval_episodes=args.episodes,
                         checkpoint_freq=0, progress_bar=False)
    run(parse_recipe(data, BLOCKS))
    lm_seconds = time.perf_counter() - start

    start = time.perf_counter()
    symbolic = None
    if isinstance(train, str):
        env = VecNormalize(flat_env(train, 8, 0), gamma=ZOO_PPO["gamma"])
        symbolic = PPO("MlpPolicy", env, seed=0, device="cpu", **ZOO_PPO)
        symbolic.set_logger(Logger(None, []))  # without a logger, learn() leaves a /tmp/SB3-<time> folder
        symbolic.learn(args.steps)
    sym_seconds = time.perf_counter() - start

    rows = []
    for level in args.eval_levels:
        data["env"]["eval_env_kwargs"] = {"level": level}
        lm = evaluate(parse_recipe(data, BLOCKS), out)["eval_success_rate"]
        sym = float("nan")
        if symbolic is not None:
            eval_env = VecNormalize(flat_env(level, 1, EVAL_SEED), training=False, norm_reward=False)
            eval_env.obs_rms = env.obs_rms
            sym = score(lambda o: symbolic.predict(o, deterministic=True)[0], eval_env, args.episodes)[0]
        rng = np.random.default_rng(0)
        rand = score(lambda o, rng=rng: rng.integers(0, 7, size=1), flat_env(level, 1, EVAL_SEED), args.episodes)[0]
        rows.append((level, lm, sym, rand))
        print(f"{level}: lm-ppo {lm:.2f}, symbolic-ppo {sym:.2f}, random {rand:.2f}", flush=True)

    print(f"\nTrained on {args.train_level} only, {args.steps} steps each (lm-ppo {lm_seconds:.0f}s, symbolic "
          f"{sym_seconds:.0f}s); held-out eval seed {EVAL_SEED}, {args.episodes} episodes, greedy; "
          f"load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| eval level | lm-ppo success | symbolic-ppo success | random success |\n|---|---|---|---|")
    for level, lm, sym, rand in rows:
        trained = " (trained)" if level in args.train_level else ""
        print(f"| {level}{trained} | {lm:.2f} | {'-' if sym != sym else f'{sym:.2f}'} | {rand:.2f} |")


def finished_runs(args) -> None:
    """Play each finished run on every ``--eval-levels`` level (its recipe, only the level replaced)."""
    from pathlib import Path

    import numpy as np
    import yaml

    from hf_finetune.recipe_parsing import parse_recipe
    from hf_finetune.rl_env.train import BLOCKS, evaluate

    start = time.perf_counter()
    names, table = [], {level: [] for level in args.eval_levels}
    for path in args.runs:
        data = yaml.safe_load((Path(path) / "recipe.yaml").read_text())
        trained = data["env"]["env_kwargs"]["level"]
        names.append(f"{Path(path).name}: {str(trained).removeprefix('BabyAI-')} seed {data['agent'].get('seed', 0)}")
        data["env"]["eval_seed"] = EVAL_SEED
        data["agent"]["n_eval_episodes"] = args.episodes
        for level in args.eval_levels:
            data["env"]["eval_env_kwargs"] = {"level": level}  # updates env_kwargs: describe_ahead etc. stay
            success = evaluate(parse_recipe(data, BLOCKS), path)["eval_success_rate"]
            table[level].append((success, level == trained))
            print(f"{names[-1]} on {level}: {success:.2f}", flush=True)
    randoms = {}
    for level in args.eval_levels:
        rng = np.random.default_rng(0)
        randoms[level] = score(lambda o, rng=rng: rng.integers(0, 7, size=1), flat_env(level, 1, EVAL_SEED),
                               args.episodes)[0]
    print(f"\nFinished runs played on other levels, held-out eval seed {EVAL_SEED}, {args.episodes} episodes, greedy "
          f"({time.perf_counter() - start:.0f}s; load average {os.getloadavg()[0]:.1f} at the end); * = trained level\n")
    print("| eval level | " + " | ".join(names) + " | random |")
    print("|---|" + "---|" * (len(names) + 1))
    for level in args.eval_levels:
        cells = [f"{s:.2f}{'*' if own else ''}" for s, own in table[level]]
        print(f"| {level} | " + " | ".join(cells) + f" | {randoms[level]:.2f} |")


if __name__ == "__main__":
    main()
