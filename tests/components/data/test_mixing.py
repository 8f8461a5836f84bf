"""Data at training time (``components/data/loader.py``): several datasets mixed by weight (``DataMix``), resampled
shards and a fixed epoch length (``epoch_samples``, the recipe's ``train_num_samples``) — proportions, determinism
and resume equality of the batches."""
from itertools import islice
from pathlib import Path

import pytest
from cli_harness import REPO, load_module
from vlforge.components.data.loader import DataMix, ImageTransform, mixed_stream, training_loader, training_stream

write_shards = load_module("loader_tests", REPO / "tests/components/data/test_loader.py").write_shards
TRANSFORM = ImageTransform(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@pytest.fixture
def two(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    """Dataset ``a`` (40 samples, 4 shards) and dataset ``b`` (30 samples, 3 shards): sample keys say which."""
    return (write_shards(tmp_path / "a", 40, per_shard=10, prefix="a"),
            write_shards(tmp_path / "b", 30, per_shard=10, prefix="b"))


def keys(stream, n: int) -> list[str]:
    return [s.key for s in islice(stream, n)]


def batch_keys(loader, batches: int) -> list[list[str]]:
    it = iter(loader)
    return [next(it).keys for _ in range(batches)]


@pytest.mark.parametrize("resample", [False, True])
def test_a_mix_draws_each_dataset_by_its_weight(two, resample: bool) -> None:
    mix = DataMix((tuple(two[0]), tuple(two[1])), (3.0, 1.0))
    drawn = keys(mixed_stream(mix, 0, 1, seed=0, shuffle_buffer=8, resample=resample), 4000)
    share_a = sum(k.startswith("a") for k in drawn) / len(drawn)
    assert abs(share_a - 0.75) < 0.03  # binomial sd 0.007: 4 sd
    # a small dataset with a large weight runs out and starts its next pass: every sample of both shows up
    assert {k for k in drawn} == {f"a{i:04d}" for i in range(40)} | {f"b{i:04d}" for i in range(30)}
    third = DataMix((tuple(two[0]), tuple(two[1])), (1.0, 0.0))  # weight 0: never drawn
    assert all(k.startswith("a") for k in keys(mixed_stream(third, 0, 1, 0, 8, resample), 300))


def test_a_mix_is_deterministic_per_consumer_and_seed(two) -> None:
    mix = DataMix((tuple(two[0]), tuple(two[1])), (1.0, 1.0))
    first = keys(mixed_stream(mix, 1, 2, seed=4, shuffle_buffer=5), 200)
    assert keys(mixed_stream(mix, 1, 2, seed=4, shuffle_buffer=5), 200) == first
    assert keys(mixed_stream(mix, 0, 2, seed=4, shuffle_buffer=5), 200) != first  # another rank, another draw
    assert keys(mixed_stream(mix, 1, 2, seed=5, shuffle_buffer=5), 200) != first
    # the two consumers of one epoch still split each dataset's shards between them: no sample seen by both
    one_pass_a = [k for k in first[:30] if k.startswith("a")]
    other = keys(mixed_stream(mix, 0, 2, seed=4, shuffle_buffer=5), 30)
    assert not set(one_pass_a) & {k for k in other if k.startswith("a")}


@pytest.mark.parametrize(("workers", "resample", "epoch_samples"), [(0, False, None), (2, False, 20), (2, True, 14)])
def test_mixed_batches_resume_at_a_step(two, workers: int, resample: bool, epoch_samples: int | None) -> None:
    mix = DataMix((tuple(two[0]), tuple(two[1])), (3.0, 1.0))
    make = lambda start=0: training_loader(mix, rank=0, world=1, seed=7, shuffle_buffer=6, transform=TRANSFORM,  # noqa: E731
                                           batch_size=4, num_workers=workers, start_step=start, resample=resample,
                                           epoch_samples=epoch_samples)
    full = batch_keys(make(), 12)
    assert batch_keys(make(), 12) == full
    assert batch_keys(make(start=5), 7) == full[5:]  # exactly the batches an uninterrupted run sees next
    flat = [k for b in full for k in b]
    assert {k[0] for k in flat} == {"a", "b"}


def test_epoch_samples_cuts_an_epoch_and_starts_the_next_afresh(two) -> None:
    shards = two[0]  # 40 samples: one consumer's plain pass is 40 long
    plain = keys(training_stream(shards, 0, 1, 3, 6), 52)
    cut = keys(training_stream(shards, 0, 1, 3, 6, epoch_samples=12), 36)
    assert cut[:12] == plain[:12]  # epoch 0 as before, then cut after 12 samples
    assert cut[12:24] == plain[40:52]  # epoch 1 starts with epoch 1's shard order and an empty buffer
    assert cut[12:24] != plain[12:24]
    # a pass that ends before the cut starts the next epoch there
    long = keys(training_stream(shards, 0, 1, 3, 6, epoch_samples=1000), 52)
    assert long == plain


def test_resampled_epochs_draw_anew_after_epoch_samples(two) -> None:
    shards = two[0]
    endless = keys(training_stream(shards, 2, 4, 0, 5, resample=True), 60)
    epochs = keys(training_stream(shards, 2, 4, 0, 5, resample=True, epoch_samples=20), 60)
    assert epochs[:20] == endless[:20]  # epoch 0 keeps the seeds resampling always had
    assert epochs[20:40] != endless[20:40]
    assert keys(training_stream(shards, 2, 4, 0, 5, resample=True, epoch_samples=20), 60) == epochs


@pytest.mark.parametrize(("world", "workers", "per_consumer"), [(1, 0, 12), (1, 2, 8), (2, 2, 4)])
def test_train_num_samples_is_rounded_up_to_whole_batches_per_consumer(two, world: int, workers: int,
                                                                       per_consumer: int) -> None:
    """An epoch of 10 samples over world x workers consumers of batch 4: ceil(10 / (consumers x 4)) batches each."""
    shards = two[0]
    loader = training_loader(shards, rank=0, world=world, seed=1, shuffle_buffer=3, transform=TRANSFORM, batch_size=4,
                             num_workers=workers, epoch_samples=10)
    got = batch_keys(loader, 6)
    consumers = world * max(1, workers)
    for worker in range(max(1, workers)):  # the DataLoader takes batches from its workers round-robin
        mine = [k for b in got[worker::max(1, workers)] for k in b]
        expected = keys(training_stream(shards, worker, consumers, 1, 3, epoch_samples=per_consumer), len(mine))
        assert mine == expected


def test_a_mix_needs_a_weight_per_dataset_and_a_positive_sum(two) -> None:
    with pytest.raises(ValueError, match="one weight per dataset"):
        DataMix((tuple(two[0]),), (1.0, 2.0))
    with pytest.raises(ValueError, match="sum > 0"):
        DataMix((tuple(two[0]), tuple(two[1])), (0.0, 0.0))
    with pytest.raises(ValueError, match=">= 0"):
        DataMix((tuple(two[0]), tuple(two[1])), (2.0, -1.0))
    assert DataMix.of([([str(p) for p in two[0]], 2), (two[1], 1.5)]) == DataMix((tuple(two[0]), tuple(two[1])),
                                                                                  (2.0, 1.5))
