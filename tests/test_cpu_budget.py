"""A training job's CPUs are shared, not oversubscribed: loader workers + the step's threads of
every rank add up to --cpus, and each loader worker runs with one torch and one OpenCV thread."""

import os

import cv2
import pytest
import torch
from test_training import _train
from torch.utils.data import DataLoader, Dataset

from src.training import cpu_budget
from src.training.cpu_budget import plan


@pytest.mark.parametrize(
    "cpus, ranks, asked, workers, threads",
    [(8, 1, 8, 7, 1), (8, 2, 8, 3, 1), (8, 1, 2, 2, 6), (16, 2, 4, 4, 4), (2, 4, 2, 0, 1), (1, 1, 0, 0, 1)],
)
def test_workers_and_threads_add_up_to_the_jobs_cpus(cpus, ranks, asked, workers, threads):
    b = plan(cpus, ranks, asked)
    assert (b.workers, b.threads) == (workers, threads)
    assert ranks * (b.workers + b.threads) <= max(cpus, ranks)  # one CPU per rank at the least
    assert bool(b.note()) == (workers < asked)


def test_omp_num_threads_caps_the_steps_threads_and_auto_uses_this_processs_cpus():
    assert plan(8, 1, 2, omp="3").threads == 3 and plan(8, 1, 2, omp="").threads == 6
    here = len(os.sched_getaffinity(0))
    assert plan(0, 1, 0).cpus == here and plan(0, 1, 0).threads == here


class _Threads(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.tensor([torch.get_num_threads(), cv2.getNumThreads()])


def test_loader_workers_run_one_thread_each_and_the_step_gets_the_rest():
    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        b = plan(4, 1, 2)
        cpu_budget.apply(b.threads)
        assert torch.get_num_threads() == 2 and cv2.getNumThreads() == 2
        loader = DataLoader(_Threads(), batch_size=1, **cpu_budget.loader_kwargs(b, torch.device("cpu")))
        seen = torch.cat(list(loader))
        assert b.workers == 2 and (seen == 1).all(), seen
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


@pytest.mark.guards("--cpus", "--num-workers")
def test_the_trainer_shares_the_cpus_it_is_given(demo_data, tmp_path):
    proc = _train(demo_data, tmp_path / "m", "--folds", "0", "--freeze-epochs", "1", "--stage2-epochs", "0",
                  "--batch-size", "8", "--cpus", "3", "--num-workers", "8")  # fmt: skip
    assert "note: --num-workers 8 lowered to 2: 3 CPUs over 1 rank(s) leave 3 per rank (2 loader workers" in proc.stdout
