"""fit under torch.distributed: 2 CPU processes (gloo) equal one process with the large batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from gradpilot import fit
from tests.conftest import Tagger, padded_sequences
from tests.conftest import double_classification as classification
from tests.conftest import double_mlp as mlp

pytestmark = pytest.mark.slow  # two processes each


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world: int, port: int, out: str, case: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        if case == "plan":
            plan_worker(rank, out)
        else:
            pair_worker(rank, world, out, case)
    finally:
        dist.destroy_process_group()
    # The result is saved. Leave without the interpreter's teardown, where gloo's threads now and then abort
    # the process ("terminate called without an active exception", SIGABRT) after all the work is done.
    os._exit(0)


def pair_worker(rank: int, world: int, out: str, case: str) -> None:
    if case in ("mean", "count", "noaccum"):
        model, data, loss = mlp(), classification(64), nn.CrossEntropyLoss()
    else:
        model, data, loss = Tagger(), padded_sequences(32), nn.CrossEntropyLoss(ignore_index=-100)
    micro, k = (8, 1) if case == "noaccum" else (4, 2)  # without accumulation: 8 a process, 16 in all
    loader = DataLoader(data, batch_size=micro, sampler=DistributedSampler(data, world, rank, shuffle=False))
    calls = []
    if case == "count":
        model = DistributedDataParallel(model)

        def counting_hook(_state, bucket):
            calls.append(1)
            fut = torch.futures.Future()
            fut.set_result(bucket.buffer())
            return fut  # no reduction: only counting when DDP would communicate

        model.register_comm_hook(None, counting_hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    result = fit(model, opt, loss, loader, epochs=2, accumulation_steps=k)
    if rank == 0:
        base = model.module if isinstance(model, DistributedDataParallel) else model
        torch.save({"params": base.state_dict(), "losses": result.train_losses, "calls": len(calls),
                    "steps": result.steps, "effective": result.effective_batch_size}, out)
    dist.barrier()  # nobody tears down gloo while the other process still talks


PLAN = {"learning_rate": 0.01, "per_device_train_batch_size": 32, "num_train_epochs": 2,
        "lr_scheduler_type": "warmup_stable_decay", "warmup_steps": 2,
        "lr_scheduler_kwargs": {"num_decay_steps": 8, "decay_type": "linear"}}


def plan_worker(rank: int, out: str) -> None:
    from tests.conftest import small_task

    result = fit(small_task(0, n=512), plan=PLAN)  # each process: the same task, half the items an epoch
    if rank == 0:
        torch.save({"lrs": result.lrs, "steps": result.steps}, out)
    dist.barrier()


def run_pair(tmp_path, case):
    out = str(tmp_path / f"{case}.pt")
    mp.spawn(worker, args=(2, free_port(), out, case), nprocs=2, join=True)
    return torch.load(out)


def single_process(model, data, loss, batch):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    result = fit(model, opt, loss, DataLoader(data, batch_size=batch), epochs=2)
    return model, result


@pytest.mark.parametrize("case", ["mean", "ignore_index", "noaccum"])
def test_two_processes_equal_the_single_process_large_batch(tmp_path, case):
    got = run_pair(tmp_path, case)
    if case in ("mean", "noaccum"):
        ref, res = single_process(mlp(), classification(64), nn.CrossEntropyLoss(), 16)
    else:  # uneven padded tokens per rank: weights use the items of both processes
        ref, res = single_process(Tagger(), padded_sequences(32), nn.CrossEntropyLoss(ignore_index=-100), 16)
    for k, v in ref.state_dict().items():
        assert torch.allclose(v, got["params"][k], atol=1e-10, rtol=0), k
    assert got["losses"] == pytest.approx(res.train_losses, abs=1e-10)
    assert got["effective"] == 16 and got["steps"] == res.steps


def test_gradients_are_reduced_once_per_optimizer_step_not_per_micro_step(tmp_path):
    got = run_pair(tmp_path, "count")
    assert got["steps"] == 8  # 64 items / (4 per micro x 2 processes) = 8 micro-steps per epoch -> 4 steps, 2 epochs
    assert got["calls"] == got["steps"]  # one bucket, one all-reduce per step: none on the no_sync micro-steps


def test_a_plan_trained_on_two_processes_still_decays_to_its_end(tmp_path):
    """512 items, batch 32: 16 steps an epoch on one process, 8 on each of two. The plan's decay is its last 8
    steps whatever the run's length (transformers derives the stable phase from it): never a flat LR."""
    got = run_pair(tmp_path, "plan")
    assert got["steps"] == 16  # 2 epochs of 8
    by_hand = [0.0, 0.005] + [0.01] * 6 + [0.01 * (1 - i / 8) for i in range(8)]
    assert got["lrs"] == pytest.approx(by_hand)
