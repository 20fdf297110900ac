"""make_loader against grain's own pipeline: the same records in the same order, the same arrays
bit for bit (records decoded one at a time, normalised a batch at a time), and iterator states
that resume under either."""

import grain
import numpy as np
import pytest

from simexplain_jax.data import pipeline
from simexplain_jax.imageops import IMAGENET_MEAN, IMAGENET_STD
from simexplain_jax.data.sources import InMemorySource


@pytest.mark.parametrize("shuffle,shard_count,num_epochs,seed", [
    (True, 1, 3, 0), (True, 3, 2, 5), (False, 4, 2, 0), (True, 2, None, 2**32 - 1)])
def test_the_sampler_gives_grains_index_sampler_records(shuffle, shard_count, num_epochs, seed):
    for shard_index in range(shard_count):
        shard = grain.sharding.ShardOptions(shard_index=shard_index, shard_count=shard_count, drop_remainder=True)
        ours = pipeline._IndexSampler(101, shard, shuffle, num_epochs, seed)
        theirs = grain.samplers.IndexSampler(num_records=101, shard_options=shard, shuffle=shuffle,
                                             num_epochs=num_epochs, seed=seed)
        assert len(ours) == len(theirs) and repr(ours) == repr(theirs)
        indices = range(shard_index, min(len(theirs), 400), shard_count)  # what this process's loader reads
        assert [ours[i].record_key for i in indices] == [theirs[i].record_key for i in indices]
        assert [ours[i].index for i in indices] == list(indices)
    if num_epochs is not None:
        with pytest.raises(IndexError, match="out of"):
            ours[len(ours)]


def _source():
    rng = np.random.default_rng(0)
    return InMemorySource({"image": rng.integers(0, 256, (37, 20, 24, 3), dtype=np.uint8),
                           "label": np.arange(37) % 5, "attributes": rng.integers(0, 2, (37, 4))})


class PerRecord(grain.transforms.Map):
    """The preprocessing written out, one record at a time: resized, normalised with ImageNet's mean
    and standard deviation, the kept fields."""

    def __init__(self, preprocess):
        self.preprocess = preprocess

    def map(self, example):
        image = example["image"]
        if self.preprocess.image_size:
            image = pipeline.resize_and_center_crop(image, self.preprocess.image_size)
        image = (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        return {"image": image, **{key: np.asarray(example[key]) for key in self.preprocess.keys}}


def _grain_loader(source, preprocess, **kwargs):
    """grain's plain pipeline: IndexSampler, the preprocessing of each record, then Batch."""
    shard = grain.sharding.ShardOptions(shard_index=0, shard_count=1, drop_remainder=True)
    sampler = grain.samplers.IndexSampler(num_records=len(source), shard_options=shard, shuffle=True,
                                          num_epochs=None, seed=kwargs["seed"])
    return grain.DataLoader(data_source=source, sampler=sampler, worker_count=0,
                            operations=[PerRecord(preprocess), grain.transforms.Batch(kwargs["batch_size"], drop_remainder=True)],
                            read_options=grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))


@pytest.mark.parametrize("preprocess", [pipeline.Preprocess(), pipeline.Preprocess(image_size=16, keys=("label",))])
def test_batches_equal_grains_pipeline_bit_for_bit(preprocess):
    source = _source()
    ours = iter(pipeline.make_loader(source, batch_size=8, preprocess=preprocess, seed=3, num_epochs=None,
                                     drop_remainder=True, shard_index=0, shard_count=1))
    theirs = iter(_grain_loader(source, preprocess, batch_size=8, seed=3))
    for _ in range(10):  # two epochs and more
        a, b = next(ours), next(theirs)
        assert set(a) == set(b) and a["image"].dtype == np.float32
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_an_iterator_state_resumes_under_either_sampler():
    source, preprocess = _source(), pipeline.Preprocess(keys=("label",))
    theirs = iter(_grain_loader(source, preprocess, batch_size=8, seed=1))
    for _ in range(6):
        next(theirs)
    ours = iter(pipeline.make_loader(source, batch_size=8, preprocess=preprocess, seed=1, num_epochs=None,
                                     drop_remainder=True, shard_index=0, shard_count=1))
    ours.set_state(theirs.get_state())  # a run saved by the earlier loader resumes at its next batch
    for _ in range(3):
        np.testing.assert_array_equal(next(ours)["label"], next(theirs)["label"])
    again = iter(_grain_loader(source, preprocess, batch_size=8, seed=1))
    again.set_state(ours.get_state())
    np.testing.assert_array_equal(next(again)["label"], next(ours)["label"])
