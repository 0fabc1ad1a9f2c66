import pytest
import torch

from mnist_pipeline.compute import distributed
from mnist_pipeline.compute.distributed import Ranks
from mnist_pipeline.errors import PipelineError


def test_a_single_process_is_rank_0_of_1(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.current() == Ranks(0, 1, 0)
    assert Ranks().is_main and not Ranks().distributed and not distributed.under_torchrun()


def test_ranks_come_from_torchruns_variables(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ranks = distributed.current()
    assert ranks == Ranks(1, 2, 1) and not ranks.is_main and ranks.distributed and distributed.under_torchrun()


def test_the_ranks_split_every_batch_between_them_without_overlap():
    batch = torch.randperm(64)[:37]  # a short last batch
    shards = [distributed.shard(batch, Ranks(rank, 3, rank)) for rank in range(3)]
    assert torch.equal(torch.cat(shards), batch)
    assert [len(s) for s in shards] == [13, 12, 12]
    assert torch.equal(distributed.shard(batch, Ranks()), batch)


def test_a_single_process_is_not_wrapped_and_needs_no_collective():
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model, Ranks()) is model
    value = torch.tensor(3.0)
    assert distributed.mean_across_ranks(value, Ranks()) is value


@pytest.mark.parametrize(
    "nproc, batch_size, message",
    [
        (4, 2, "nproc: 4 processes cannot share batch_size 2; use a batch_size of at least 4, or fewer processes"),
    ],
)
def test_impossible_process_counts_are_refused_in_one_line(nproc, batch_size, message):
    with pytest.raises(PipelineError) as caught:
        distributed.check_nproc(nproc, batch_size, torch.device("cpu"))
    assert str(caught.value) == message


def test_more_processes_than_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(PipelineError, match="nproc: got 2, but torch sees 1 GPU"):
        distributed.check_nproc(2, 64, torch.device("cuda"))
    distributed.check_nproc(2, 64, torch.device("cpu"))  # CPU processes need no GPU each


def test_nproc_given_as_a_number_is_taken_as_it_is():
    assert distributed.resolve_nproc(3, torch.device("cpu")) == 3


def test_auto_takes_one_process_per_gpu_and_one_on_a_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert distributed.resolve_nproc("auto", torch.device("cuda")) == 4
    assert distributed.resolve_nproc("auto", torch.device("cpu")) == 1


def _gather_in_rank(rank, world_size, store_path, results):
    torch.distributed.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world_size)
    ranks = Ranks(rank, world_size, rank)
    rows = torch.arange(7 * 2, dtype=torch.float32).reshape(7, 2)
    mine = distributed.shard(torch.arange(7), ranks)
    results[rank] = distributed.gather_shards(rows[mine] * 1.0, ranks, 7).tolist()
    torch.distributed.destroy_process_group()


def test_uneven_shards_gather_back_in_order_on_every_rank(tmp_path):
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_gather_in_rank, args=(2, str(tmp_path / "store"), results), nprocs=2)
        expected = torch.arange(14, dtype=torch.float32).reshape(7, 2).tolist()
        assert results[0] == expected and results[1] == expected
    assert torch.equal(distributed.gather_shards(torch.ones(3), Ranks(), 3), torch.ones(3))
