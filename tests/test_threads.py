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


def test_fastest_threads_keeps_the_faster_count_and_measures_again(monkeypatch):
    timings = {1: 1.0, 4: 30.0}  # beside a busy process: the 4 threads spin-wait
    monkeypatch.setattr(threads, "_time_matmul", lambda rows, hidden, out, n, seconds: timings[n])
    assert threads.fastest_threads(8, 576) == 1
    timings.update({1: 1.0, 4: 0.4})  # the other job ended
    assert threads.fastest_threads(8, 576) == 1  # kept for max_age_s
    assert threads.fastest_threads(8, 576, max_age_s=0) == 4  # measured again
    monkeypatch.setenv("HF_FINETUNE_NUM_THREADS", "2")
    assert threads.fastest_threads(8, 576) == 2  # an override is not second-guessed


def test_small_matmul_threads_restores_the_count(monkeypatch):
    monkeypatch.setattr(threads, "_time_matmul", lambda rows, hidden, out, n, seconds: 1.0 if n == 1 else 9.0)
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

    monkeypatch.setattr(threads, "_time_matmul", lambda rows, hidden, out, n, seconds: 1.0 if n == 1 else 9.0)
    seen = []
    original = threads.fastest_threads
    monkeypatch.setattr(threads, "fastest_threads", lambda *a, **k: seen.append(a) or original(*a, **k))
    callback = threads.thread_policy_callback()
    model = SimpleNamespace(config=SimpleNamespace(hidden_size=32))
    callback.on_train_begin(SimpleNamespace(per_device_train_batch_size=4), None, None, model=model)
    assert seen == [(512, 32)] and torch.get_num_threads() == 1
    callback.on_step_end(None, None, None)  # within every_s: no new measurement
    assert len(seen) == 1


def test_callback_keeps_one_count_under_full_determinism(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(threads, "_time_matmul", lambda *a: pytest.fail("measured under full_determinism"))
    callback = threads.thread_policy_callback()
    args = SimpleNamespace(per_device_train_batch_size=4, full_determinism=True)
    callback.on_train_begin(args, None, None, model=SimpleNamespace(config=SimpleNamespace(hidden_size=32)))
    callback.on_step_end(args, None, None)
    assert torch.get_num_threads() == 4  # the policy's count (4 usable cores, 1 process), kept
