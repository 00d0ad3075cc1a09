"""Thread policy: cores / local processes, overrides, and the measured choice for matmul-bound phases."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from hf_finetune import threads


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    """No overrides from the test environment, 4 usable cores, torch's count and the cache restored."""
    for name in ("HF_FINETUNE_NUM_THREADS", "OMP_NUM_THREADS", "LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE",
                 "MPI_LOCALNRANKS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(threads, "_choice", {})
    monkeypatch.setattr(threads, "_applied", None)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_policy_divides_usable_cores_by_local_processes(monkeypatch):
    assert threads.policy_threads()[0] == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun / accelerate launch with 2 processes here
    assert threads.policy_threads() == (2, "4 usable core(s) / 2 local process(es)")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert threads.policy_threads()[0] == 1  # never 0


def test_overrides_win_and_bad_values_fail_clearly(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.policy_threads() == (3, "OMP_NUM_THREADS=3")
    monkeypatch.setenv("HF_FINETUNE_NUM_THREADS", "1")
    assert threads.policy_threads()[0] == 1
    monkeypatch.setenv("HF_FINETUNE_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="HF_FINETUNE_NUM_THREADS='many'"):
        threads.policy_threads()


def test_apply_sets_torch_and_logs_once(monkeypatch, caplog):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with caplog.at_level(logging.INFO, logger="hf_finetune.threads"):
        assert threads.apply_thread_policy() == 1
        threads.apply_thread_policy()
    assert torch.get_num_threads() == 1
    assert [r.message for r in caplog.records].count(
        "CPU threads per process: 1 (4 usable core(s) / 4 local process(es); override with HF_FINETUNE_NUM_THREADS).") == 1


def fake_timings(per_thread: dict[int, float]):
    """A stand-in for ``_time_matmul``: every batch of ``n`` threads takes ``per_thread[n]`` s (no real timing)."""
    return lambda rows, hidden, out, counts, seconds: {n: [per_thread[n]] * threads.ROUNDS for n in counts}


def test_fastest_threads_keeps_the_faster_count_and_measures_again(monkeypatch):
    timings = {1: 1.0, 4: 30.0}  # beside a busy process: the 4 threads spin-wait
    monkeypatch.setattr(threads, "_time_matmul", fake_timings(timings))
    assert threads.fastest_threads(8, 576) == 1
    timings.update({1: 1.0, 4: 0.4})  # the other job ended
    assert threads.fastest_threads(8, 576) == 1  # kept for max_age_s
    assert threads.fastest_threads(8, 576, max_age_s=0) == 4  # measured again
    monkeypatch.setenv("HF_FINETUNE_NUM_THREADS", "2")
    assert threads.fastest_threads(8, 576) == 2  # an override is not second-guessed


def test_a_slow_measurement_is_repeated_less_often(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock[0])
    calls = []

    def slow(rows, hidden, out, counts, seconds):  # 10 s of measuring (a crowded machine)
        calls.append(clock[0])
        clock[0] += 10.0
        return {n: [1.0] * threads.ROUNDS for n in counts}

    monkeypatch.setattr(threads, "_time_matmul", slow)
    threads.fastest_threads(8, 576)
    clock[0] += 120  # past max_age_s (60 s), within 50 x 10 s
    threads.fastest_threads(8, 576)
    assert len(calls) == 1
    clock[0] += 400
    threads.fastest_threads(8, 576)
    assert len(calls) == 2


def test_choice_keeps_the_policy_count_on_a_tie_and_ignores_a_stalled_batch():
    # Idle, decoding-sized: 2 threads 25% faster, but one 2-thread batch met a scheduler stall (the case
    # the first version, one window per count compared by its mean, got wrong).
    assert threads.choose_threads(2, {1: [0.26] * 5, 2: [0.195, 0.9, 0.2, 0.19, 0.2]}) == 2
    # Two stalled batches of five are still outvoted.
    assert threads.choose_threads(2, {1: [0.26] * 5, 2: [0.195, 0.9, 0.2, 0.19, 2.0]}) == 2
    # A tie, or one thread faster by less than the margin: the policy's count stays.
    assert threads.choose_threads(2, {1: [1.0] * 5, 2: [1.0] * 5}) == 2
    assert threads.choose_threads(2, {1: [1.0] * 5, 2: [1.04] * 5}) == 2
    # One thread clearly faster: beside a busy process (small matmuls 10-36x, training-sized ~1.15x).
    assert threads.choose_threads(2, {1: [0.27] * 5, 2: [16.0, 0.3, 15.0, 31.0, 0.29]}) == 1
    assert threads.choose_threads(2, {1: [28.1] * 5, 2: [32.2] * 5}) == 1
    assert threads.choose_threads(1, {1: [1.0]}) == 1


def test_measurement_interleaves_the_counts(monkeypatch):
    order = []
    monkeypatch.setattr(threads, "_time_batch", lambda work, n, seconds: order.append((n, seconds)) or 1.0)
    times = threads._time_matmul(8, 16, 64, (1, 4), seconds=0.1, rounds=4)
    assert [n for n, _ in order] == [1, 4, 4, 1, 1, 4, 4, 1]
    assert all(abs(s - 0.025) < 1e-12 for _, s in order)  # the budget per count, split over the rounds
    assert times == {1: [1.0] * 4, 4: [1.0] * 4}


def test_measurement_of_a_large_matmul_stops_after_three_rounds(monkeypatch):
    # Each batch takes 0.1 s of a fake clock (one long matmul) against a budget of 0.05 s per count.
    clock = [0.0]
    monkeypatch.setattr(threads.time, "perf_counter", lambda: clock[0])

    def batch(work, n, seconds):
        clock[0] += 0.1
        return 0.1

    monkeypatch.setattr(threads, "_time_batch", batch)
    times = threads._time_matmul(8, 16, 64, (1, 4), seconds=0.05, rounds=5)
    assert times == {1: [0.1] * 3, 4: [0.1] * 3}


def test_small_matmul_threads_restores_the_count(monkeypatch):
    monkeypatch.setattr(threads, "_time_matmul", fake_timings({1: 1.0, 4: 9.0}))
    torch.set_num_threads(2)
    with threads.small_matmul_threads(hidden=64):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_real_measurement_returns_a_policy_count():
    torch.set_num_threads(1)
    assert threads.fastest_threads(8, 64, seconds=0.001) in (1, 4)
    assert torch.get_num_threads() == 1  # the measurement leaves the count as it found it


def test_measuring_leaves_the_global_random_stream_alone():
    # A seeded run must not depend on whether (or how often) the policy measured: its matmuls draw
    # their inputs from a generator of their own.
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    threads.fastest_threads(8, 64, seconds=0.001, max_age_s=0)
    assert torch.equal(torch.rand(3), expected)


def test_callback_chooses_at_train_begin(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(threads, "_time_layer", lambda *a: {1: [1.0] * threads.ROUNDS, 4: [9.0] * threads.ROUNDS})
    seen = []
    original = threads.fastest_training_threads
    monkeypatch.setattr(threads, "fastest_training_threads", lambda *a, **k: seen.append(a) or original(*a, **k))
    callback = threads.thread_policy_callback()
    model = SimpleNamespace(config=SimpleNamespace(hidden_size=32, num_attention_heads=4))
    callback.on_train_begin(SimpleNamespace(per_device_train_batch_size=4), None, None, model=model)
    assert seen == [(4, 128, 32, 4)] and torch.get_num_threads() == 1  # batch x 128 tokens by default
    callback.on_step_end(None, None, None)  # within every_s: no new measurement
    assert len(seen) == 1
    # RL configs: prompt (32 when max_prompt_length is unset) + completion budget; SFT: max_length, capped.
    rl = SimpleNamespace(per_device_train_batch_size=8, max_completion_length=16, max_prompt_length=None)
    threads.thread_policy_callback().on_train_begin(rl, None, None, model=model)
    sft = SimpleNamespace(per_device_train_batch_size=8, max_length=1024)
    threads.thread_policy_callback().on_train_begin(sft, None, None, model=model)
    assert seen[1:] == [(8, 48, 32, 4), (2, 1024, 32, 4)]


def test_layer_probe_measures_both_counts_and_leaves_the_random_stream_alone(monkeypatch):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    times = threads._time_layer(2, 4, 8, 2, (1, 4), seconds=0.002, rounds=2)
    assert set(times) == {1, 4} and all(len(v) == 2 and min(v) > 0 for v in times.values())
    assert torch.equal(torch.rand(3), expected)
    assert threads.fastest_training_threads(2, 4, 12, heads=5, seconds=0.002) in (1, 4)  # 5 heads -> 4 (divides 12)


def test_a_clear_answer_on_long_work_stops_after_two_rounds(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(threads.time, "perf_counter", lambda: clock[0])

    def batch(work, n, seconds):  # beside busy processes: 2 threads 3.7x slower, each batch over budget
        clock[0] += 0.8 if n == 1 else 3.0
        return 0.8 if n == 1 else 3.0

    monkeypatch.setattr(threads, "_time_batch", batch)
    times = threads._interleaved(None, (1, 2), seconds=0.1)
    assert times == {1: [0.8, 0.8], 2: [3.0, 3.0]} and threads.choose_threads(2, times) == 1


def test_callback_keeps_one_count_under_full_determinism(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(threads, "_time_layer", lambda *a: pytest.fail("measured under full_determinism"))
    callback = threads.thread_policy_callback()
    args = SimpleNamespace(per_device_train_batch_size=4, full_determinism=True)
    callback.on_train_begin(args, None, None, model=SimpleNamespace(config=SimpleNamespace(hidden_size=32)))
    callback.on_step_end(args, None, None)
    assert torch.get_num_threads() == 4  # the policy's count (4 usable cores, 1 process), kept


def test_sb3_agent_without_torch_threads_gets_the_faster_count_per_phase(monkeypatch, tiny_bert_dir, tmp_path):
    # rl_env's `agent.torch_threads` unset = the thread policy: rollouts (n_envs = 4 rows) and updates
    # (batch_size = 16 rows) each run with the count their own matmul size measures fastest.
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from test_agents_train import bandit_recipe

    from hf_finetune.recipe_parsing import parse_recipe
    from hf_finetune.rl_env.train import BLOCKS, run

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    measured = []

    def timings(rows, hidden, out, counts, seconds):
        measured.append(rows)
        return {1: [1.0] * threads.ROUNDS, 2: [(9.0 if rows == 4 else 0.5)] * threads.ROUNDS}

    monkeypatch.setattr(threads, "_time_matmul", timings)
    seen = {"rollout": set(), "update": set()}

    class Rollouts(BaseCallback):
        def _on_step(self) -> bool:  # called after each environment step of a rollout
            seen["rollout"].add(torch.get_num_threads())
            return True

    train = PPO.train
    monkeypatch.setattr(PPO, "train", lambda self: seen["update"].add(torch.get_num_threads()) or train(self))
    small = {"n_steps": 16, "batch_size": 16, "n_epochs": 1, "learning_rate": 0.003}
    recipe = bandit_recipe(tiny_bert_dir, tmp_path / "policy", "ppo", total_timesteps=128, algo_kwargs=small)
    metrics = run(parse_recipe(recipe, BLOCKS), callbacks=[Rollouts()])
    assert metrics["num_timesteps"] == 128  # two rollouts of 16 steps x 4 envs, two updates
    assert seen == {"rollout": {1}, "update": {2}}, seen
    assert sorted(set(measured)) == [4, 16] and len(measured) == 2  # once per phase: kept for a minute

    monkeypatch.setattr(threads, "_time_matmul", lambda *a: pytest.fail("measured although torch_threads is set"))
    seen = {"rollout": set(), "update": set()}
    recipe = bandit_recipe(tiny_bert_dir, tmp_path / "fixed", "ppo", total_timesteps=64, algo_kwargs=small,
                           torch_threads=2)
    run(parse_recipe(recipe, BLOCKS), callbacks=[Rollouts()])
    assert seen == {"rollout": {2}, "update": {2}}
