"""What a machine or SLURM node can give a job (src/cluster/node_limits.py)."""

import pytest

from src.cluster.node_limits import Node, Request, parse_sinfo, too_big, visible_gpus


@pytest.mark.parametrize("value, n", [("", 0), ("-1", 0), ("0", 1), ("0,1", 2), ("GPU-3f2a,GPU-77b1", 2), (" 2, 3 ,", 2)])
def test_visible_gpus_follow_cuda_visible_devices(value, n):
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": value}) == n


def test_visible_gpus_without_a_gpu_tool_are_none(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert visible_gpus({}) == 0


def test_sinfo_lines_become_nodes_once_each():
    text = "n1 64 256000 gpu:a100:4(S:0-1)\nn1 64 256000 gpu:a100:4(S:0-1)\nn2 32+ 128000 (null)\nn3 8 4000 gpu:2,shard:8\nbad\n"
    assert parse_sinfo(text) == [Node("n1", 64, 256000, 4), Node("n2", 32, 128000, 0), Node("n3", 8, 4000, 2)]


NODES = [Node("cpu1", 64, 256000, 0), Node("gpu1", 16, 128000, 4)]


def test_a_job_fits_when_one_node_has_all_it_asks():
    assert too_big([Request("train", 16, 64000, 2), Request("folds", 64, 200000, 0)], NODES) == []


def test_a_job_no_node_can_hold_is_named_with_the_largest_node_and_the_fix():
    lines = too_big([Request("train", 32, 64000, 2), Request("train", 32, 64000, 2), Request("predict", 8, 999999, 8)],
                    NODES)  # fmt: skip
    assert len(lines) == 2  # one line per rule
    train, predict = lines
    assert "rule train asks for 32 CPUs, 64000 MB and 2 GPUs" in train and "largest SLURM node has 64 CPUs" in train
    assert "no single node has all three" in train  # 32 CPUs exist, 2 GPUs exist, not on one node
    assert "--set-resources predict:mem_mb=256000" in predict and "at most 4 GPUs" in predict


def test_no_sinfo_no_verdict():
    assert too_big([Request("train", 10**6, 1, 0)], []) == []
