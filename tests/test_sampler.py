import pytest

from regraft.data.sampler import EpochBatchSampler


@pytest.mark.parametrize(("n", "bs", "world"), [(10, 4, 1), (9, 4, 2), (17, 4, 2), (33, 8, 3), (5, 2, 2), (64, 16, 4)])
def test_every_sample_once_and_ranks_in_step(n, bs, world):
    seen = []
    lengths = set()
    for rank in range(world):
        s = EpochBatchSampler(n, batch_size=bs, shuffle=True, seed=1, rank=rank, world_size=world)
        s.set_epoch(3)
        batches = list(s)
        lengths.add(len(batches))
        assert len(batches) == len(s)
        assert all(0 < len(b) <= bs for b in batches)
        seen += [i for b in batches for i in b]
    assert sorted(seen) == list(range(n))  # no sample missing, none repeated
    assert len(lengths) == 1  # every rank runs the same number of steps


def test_order_depends_only_on_seed_and_epoch():
    a = EpochBatchSampler(20, batch_size=4, shuffle=True, seed=0)
    b = EpochBatchSampler(20, batch_size=4, shuffle=True, seed=0)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)


def test_no_batch_of_one_when_avoidable():
    s = EpochBatchSampler(9, batch_size=4, shuffle=False)
    assert [len(b) for b in s] == [3, 3, 3]


def test_batch_evening_is_optional():
    even = EpochBatchSampler(64, batch_size=24, shuffle=False)
    assert [len(b) for b in even] == [22, 21, 21]
    plain = EpochBatchSampler(64, batch_size=24, shuffle=False, even=False)
    assert [len(b) for b in plain] == [24, 24, 16] and sum(plain, []) == list(range(64))
    assert [len(b) for b in EpochBatchSampler(64, batch_size=24, shuffle=False, even=False, drop_last=True)] == [24, 24]
    a, b = (EpochBatchSampler(64, batch_size=8, shuffle=True, seed=1, even=False, rank=r, world_size=2) for r in (0, 1))
    shards = [sum(list(s), []) for s in (a, b)]
    assert len(a) == len(b) == 4 and not set(shards[0]) & set(shards[1])  # in step, disjoint
