import numpy as np
import pytest

from simexplain_jax.data import pairs


def test_write_then_read_round_trips(tmp_path):
    written = [("a_1", "a_2", 1), ("a_1", "b_7", 0)]
    path = tmp_path / "sub" / "pairs.txt"
    pairs.write_pairs(path, written)
    assert pairs.read_pairs(path) == [pairs.Pair(*p) for p in written]
    assert not [p for p in path.parent.iterdir() if p.suffix == ".tmp"]


@pytest.mark.parametrize("text,message", [
    ("a b\n", "line 1|:1:"), ("a b 2\n", ":1:"), ("x y 1\na b c d\n", ":2:"), ("\n# only a comment\n", "empty")])
def test_bad_pair_files(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        pairs.read_pairs(path)


def test_sample_pairs_is_balanced_correct_and_seeded():
    labels = np.repeat(np.arange(10), 30)
    ids = [f"img{i}" for i in range(labels.size)]
    sampled = pairs.sample_pairs(labels, 400, seed=1, ids=ids)
    assert len(sampled) == 400 and sum(p.label for p in sampled) == 200
    index = {name: i for i, name in enumerate(ids)}
    for p in sampled:
        same = labels[index[p.query]] == labels[index[p.reference]]
        assert same == bool(p.label) and p.query != p.reference
    assert len({(p.query, p.reference) for p in sampled}) == 400
    assert sampled == pairs.sample_pairs(labels, 400, seed=1, ids=ids)
    assert sampled != pairs.sample_pairs(labels, 400, seed=2, ids=ids)
    with pytest.raises(ValueError, match="two labels|label with two"):
        pairs.sample_pairs(np.zeros(5), 4, seed=0)


def test_positive_references_by_class_and_by_outfit():
    labels = np.repeat(np.arange(3), 30)
    refs = pairs.positive_references(pairs.groups_from_labels(labels.tolist()), labels.size, max_references=20, seed=0)
    for i, r in enumerate(refs):
        assert len(r) == 20 and i not in r and all(labels[j] == labels[i] for j in r)
    assert refs == pairs.positive_references(pairs.groups_from_labels(labels.tolist()), labels.size, 20, seed=0)
    outfits = {"o1": [0, 1, 2], "o2": [2, 3]}
    assert pairs.positive_references(outfits, 5) == [[1, 2], [0, 2], [0, 1, 3], [2], []]


def test_asking_for_more_pairs_than_the_images_allow_fails_at_once():
    """``--config.num_pairs=1000000`` printed nothing for minutes (some 5e7 draws) before failing."""
    import time

    from simexplain_jax.data.pairs import sample_pairs

    labels = np.repeat(np.arange(4), 5)  # 20 images: 80 ordered positive pairs, 300 negative ones
    began = time.perf_counter()
    with pytest.raises(ValueError, match="num_pairs=1000000 asks for 500000 distinct positive pairs, but the 20 "
                                         "images \\(4 labels\\) allow 80 ordered ones; ask for at most 80 pairs"):
        sample_pairs(labels, 1_000_000, seed=0)
    assert time.perf_counter() - began < 10.0  # was minutes; a loaded CI machine gets room
    assert len(sample_pairs(labels, 80, seed=0)) == 80  # the largest it allows still samples
