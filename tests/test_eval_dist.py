"""``--dist_eval`` on 2 CPU processes (gloo): each scores its shard, the counts are all-reduced, and the
figures equal one process scoring the whole validation set (every image counted exactly once).

21 validation images in batches of 4: rank 0 reads 11 (one padded row), rank 1 reads 10 (two padded).
"""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from fastmae.data.synthetic import make_labelled_dataset
from fastmae.eval.args import parse_args
from fastmae.eval.data import EvalLoader, split_folder
from fastmae.eval.trainer import run

NUM_VAL = 21


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_labelled_dataset(tmp_path_factory.mktemp("labelled"), 8, NUM_VAL, seed=0, image_size=(16, 24))


def _flags(data, out, *extra):
    return ["--model", "vit_test", "--data_path", str(data), "--nb_classes", "3", "--batch_size", "4",
            "--output_dir", str(out), "--num_workers", "0", "--no_progress", "--device", "cpu", "--eval",
            "--seed", "3", "--accum_iter", "1", *extra]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, runs: list[tuple[int, list[str], str]]) -> None:
    torch.set_num_threads(1)
    for port, flags, out in runs:  # one spawn for both modes (starting the processes is the slow part)
        os.environ.update(WORLD_SIZE=str(world_size), RANK=str(rank), LOCAL_RANK=str(rank),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        stats = run(parse_args("linprobe", flags))  # joins the group (gloo) and leaves it
        with open(f"{out}.{rank}", "w") as f:
            json.dump(stats, f)


def test_shards_cover_every_image_once(data):
    files = split_folder(data, "val")
    seen = []
    for rank in range(2):
        loader = EvalLoader(files, 4, 16, device=torch.device("cpu"), rank=rank, world_size=2)
        assert len(loader) == 3 and len(loader.indices) == 12  # both ranks run the same number of batches
        seen += [i for i, valid in zip(loader.indices, loader.valid.tolist()) if valid]
    assert sorted(seen) == list(range(NUM_VAL))


def test_two_processes_match_one(data, tmp_path):
    """With --dist_eval (shards, all-reduced) and without it (each process scores the whole set)."""
    modes = {"dist_eval": ("--dist_eval",), "whole_set_per_process": ()}
    runs = [(_free_port(), _flags(data, tmp_path / mode, *extra), str(tmp_path / f"{mode}.stats"))
            for mode, extra in modes.items()]
    mp.spawn(_worker, args=(2, runs), nprocs=2, join=True)
    for (mode, extra), (_, _, out) in zip(modes.items(), runs):
        single = run(parse_args("linprobe", _flags(data, tmp_path / f"{mode}-one", *extra)))
        assert single["acc1"] * NUM_VAL / 100 == pytest.approx(round(single["acc1"] * NUM_VAL / 100))  # of 21
        for rank in range(2):
            with open(f"{out}.{rank}") as f:
                stats = json.load(f)
            # hits are exact counts; the loss is a sum in another order
            assert stats["acc1"] == single["acc1"] and stats["acc5"] == single["acc5"], (mode, rank, stats, single)
            assert stats["loss"] == pytest.approx(single["loss"], rel=1e-6), (mode, rank, stats, single)
