"""Concept relevance in the embedding: analytic cases with known answers."""

import numpy as np
import pytest

import simexplain_jax as sx
from simexplain_jax.attributes import Thresholds, concept_relevance, fit_concepts, query_removal_drop, select
from simexplain_jax.data import shapes


def encoded_embeddings(labels, strengths, dim=16, noise=0.01, seed=0):
    """Embeddings that encode attribute a as +-``strengths[a]`` (present / absent) along basis
    vector a (0: not encoded), plus a common offset: every embedding has the same norm, so the
    normalised space is a scaled copy and the encoded axes are known exactly."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    e = ((2.0 * labels - 1.0) * strengths) @ basis[: labels.shape[1]] + 0.5 * basis[-1]
    return e + noise * rng.normal(size=e.shape), basis[: labels.shape[1]]


def random_labels(n, a, seed=1):
    return np.random.default_rng(seed).random((n, a)) < 0.5


def test_the_probe_recovers_encoded_directions():
    labels = random_labels(2000, 4)
    embeddings, basis = encoded_embeddings(labels, np.array([1.0, 0.6, 0.3, 0.0]))
    concepts = fit_concepts(embeddings, labels, split="validation")
    assert concepts.valid.all() and concepts.split == "validation"
    normalised = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    for a in range(3):  # encoded: the direction is the attribute's axis (in the normalised space)
        assert abs(float(concepts.directions[a] @ basis[a])) > 0.95, a
        projection = normalised @ concepts.directions[a]
        assert projection[labels[:, a]].mean() > projection[~labels[:, a]].mean()


def test_relevance_names_the_shared_encoded_attribute_not_the_unencoded_one():
    labels = random_labels(2000, 4)
    embeddings, _ = encoded_embeddings(labels, np.array([1.0, 0.6, 0.3, 0.0]))
    concepts = fit_concepts(embeddings, labels, split="train")
    pair = np.array([[1, 0, 0, 1], [1, 0, 1, 1]], bool)  # they share attribute 0 (encoded) and 3 (not)
    e, _ = encoded_embeddings(pair, np.array([1.0, 0.6, 0.3, 0.0]), noise=0.0)
    for scorer in ("removal", "product"):
        relevance = concept_relevance(concepts, e[:1], e[1:], scorer=scorer)[0]
        assert relevance[0] > 5 * abs(relevance[3]), (scorer, relevance)


def test_removal_scores_equal_a_direct_computation():
    rng = np.random.default_rng(3)
    labels = random_labels(500, 3)
    concepts = fit_concepts(rng.normal(size=(500, 6)) + labels @ rng.normal(size=(3, 6)), labels, split="train")
    q, r = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))

    def cos(a, b):
        return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))

    both = concept_relevance(concepts, q, r, scorer="removal")
    product = concept_relevance(concepts, q, r, scorer="product")
    query_only = query_removal_drop(concepts, q, r)
    for p in range(4):
        for a in range(3):
            u = concepts.directions[a].astype(np.float64)
            project = np.eye(6) - np.outer(u, u)
            qn, rn = q[p] / np.linalg.norm(q[p]), r[p] / np.linalg.norm(r[p])
            assert both[p, a] == pytest.approx(cos(q[p], r[p]) - cos(project @ qn, project @ rn), abs=1e-6)
            assert product[p, a] == pytest.approx((qn @ u) * (rn @ u), abs=1e-6)
            assert query_only[p, a] == pytest.approx(cos(q[p], r[p]) - cos(project @ qn, rn), abs=1e-6)


def test_attributes_without_both_kinds_of_examples_get_no_direction():
    labels = random_labels(300, 3)
    labels[:, 1] = True  # every image has it: nothing to contrast
    concepts = fit_concepts(np.random.default_rng(0).normal(size=(300, 5)), labels, split="validation")
    assert concepts.valid.tolist() == [True, False, True]
    relevance = concept_relevance(concepts, np.ones((1, 5)), np.ones((1, 5)))
    assert relevance[0, 1] == -np.inf


def test_bad_input_is_refused():
    labels = random_labels(10, 2)
    with pytest.raises(ValueError, match="not 'test'"):
        fit_concepts(np.ones((10, 3)), labels, split="test")
    with pytest.raises(ValueError, match="labels"):
        fit_concepts(np.ones((10, 3)), labels[:5], split="train")
    with pytest.raises(ValueError, match="NaN"):
        fit_concepts(np.full((10, 3), np.nan), labels, split="train")
    concepts = fit_concepts(np.random.default_rng(0).normal(size=(10, 3)), labels, split="train")
    with pytest.raises(ValueError, match="D=4"):
        concept_relevance(concepts, np.ones((1, 4)), np.ones((1, 4)))
    with pytest.raises(ValueError, match="scorer"):
        concept_relevance(concepts, np.ones((1, 3)), np.ones((1, 3)), scorer="shap")


def test_concept_selector_presence_rules():
    thresholds = Thresholds(np.zeros(4), "validation")
    query_scores = np.array([1.0, 1.0, 1.0, -1.0])  # 0, 1, 2 present in the query
    reference_scores = np.array([1.0, -1.0, 1.0, 1.0])  # 0, 2, 3 in the reference
    relevance = np.array([0.1, 0.9, 0.3, 0.8])  # 1 and 3 are relevant but not shared
    grid = np.zeros((4, 4))
    args = (query_scores, np.zeros((4, 4, 4)), grid, thresholds)
    hard = select(*args, selector="concept", w=0.0, reference_scores=reference_scores, relevance=relevance,
                  presence="both")
    assert hard.attributes == [2, 0]  # only what the thresholds call present in both
    soft = select(*args, selector="concept", w=0.0, reference_scores=reference_scores, relevance=relevance)
    log_both = np.log(1 / (1 + np.exp(-query_scores))) + np.log(1 / (1 + np.exp(-reference_scores)))
    expected = relevance / 0.9 + 0.05 * log_both
    assert soft.attributes == list(np.argsort(-expected)[:3]) and soft.attributes[0] == 1
    np.testing.assert_allclose(soft.scores, np.sort(expected)[::-1][:3])
    # a strong presence term reorders by the predictor's belief instead
    strong = select(*args, selector="concept", w=0.0, reference_scores=reference_scores, relevance=relevance,
                    presence_weight=10.0)
    assert strong.attributes[0] in (0, 2)
    with pytest.raises(ValueError, match="relevance"):
        select(query_scores, np.zeros((4, 4, 4)), grid, thresholds, selector="concept", reference_scores=reference_scores)


def test_shortcut_variant_ties_fillers_to_their_classes_in_training_only():
    rng = np.random.default_rng(0)
    config = shapes.ShapesConfig(shortcut_probability=0.9)
    counts = {name: [0, 0] for name in shapes.CLASS_NAMES}  # [scenes, scenes with a shortcut filler]
    for i in range(400):
        scene = shapes.sample_scene(rng, i % shapes.NUM_CLASSES, config)
        name = shapes.CLASS_NAMES[i % shapes.NUM_CLASSES]
        carried = {a for o in scene.objects for a in o.attribute_names()} & set(shapes.SHORTCUTS.values())
        counts[name][0] += 1
        counts[name][1] += bool(carried)
        shortcut = shapes.shortcut_of(name)
        assert carried <= ({shortcut} if shortcut else set()), (name, carried)
        if carried:  # the filler sits on the key object
            assert shortcut in scene.objects[shapes.key_index(scene)].attribute_names()
        assert shapes.scene_class(scene) == i % shapes.NUM_CLASSES
    for name, shortcut in shapes.SHORTCUTS.items():
        assert 0.8 <= counts[name][1] / counts[name][0] <= 1.0, name
    plain = [shapes.sample_scene(np.random.default_rng(i), 0) for i in range(200)]  # circle class, no shortcut
    dotted = np.mean([any(o.pattern == "dotted" for o in s.objects) for s in plain])
    assert 0.6 < dotted < 0.95  # an ordinary filler: about 1 - 1/8 of scenes have a dotted object


def test_saved_concepts_load_only_for_the_model_they_were_fitted_for(tmp_path):
    from simexplain_jax.attributes import load_concepts, save_concepts

    labels = random_labels(400, 3)
    embeddings, _ = encoded_embeddings(labels, np.array([1.0, 0.5, 0.0]))
    labels[:, 2] = False  # no positives: no direction
    concepts = fit_concepts(embeddings, labels, split="train")
    path = tmp_path / "concepts.json"
    save_concepts(path, concepts, model="aaaa1111", ridge=0.01)
    loaded = load_concepts(path, model="aaaa1111", num_attributes=3)
    np.testing.assert_array_equal(loaded.directions, concepts.directions)  # float32 survives JSON exactly
    assert loaded.valid.tolist() == [True, True, False] and loaded.split == "train"
    q, r = embeddings[:5], embeddings[5:10]
    # the fit's directions are a transposed (Fortran-ordered) array, the loaded ones are not: the scores
    # depend on the values only, whatever the layout (BLAS may round another layout differently)
    assert concepts.directions.flags.f_contiguous and loaded.directions.flags.c_contiguous
    expected = concept_relevance(concepts, q, r)
    np.testing.assert_array_equal(concept_relevance(loaded, q, r), expected)
    np.testing.assert_array_equal(concept_relevance(concepts, np.asfortranarray(q), np.asfortranarray(r)), expected)
    with pytest.raises(ValueError, match="fitted for the similarity model with fingerprint aaaa1111, not for this "
                                         r"one \(bbbb2222\)"):
        load_concepts(path, model="bbbb2222")
    with pytest.raises(ValueError, match="holds 3 attributes, expected 4"):
        load_concepts(path, model="aaaa1111", num_attributes=4)
    with pytest.raises(FileNotFoundError, match="concepts file .*missing.json not found"):
        load_concepts(tmp_path / "missing.json", model="aaaa1111")
    (tmp_path / "bad.json").write_text('{"model": "aaaa1111"}')
    with pytest.raises(ValueError, match="bad.json is not a concepts JSON: KeyError"):
        load_concepts(tmp_path / "bad.json", model="aaaa1111")


def test_regret_ratios_are_the_selected_drop_over_the_best():
    ratios = sx.metrics.regret_ratios([0.2, 0.19, -0.05, 0.0, -0.1], [0.2, 0.2, 0.1, -0.01, -0.01])
    np.testing.assert_allclose(ratios, [1.0, 0.95, -0.5, 1.0, 0.0])  # no positive best: 1 iff as good as the best
    with pytest.raises(ValueError, match=r"must both be \[P\]"):
        sx.metrics.regret_ratios([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="drops must be finite"):
        sx.metrics.regret_ratios([np.nan], [0.1])


def shortcut_labels(n=4000, seed=2):
    """Attribute 0 (encoded) and attribute 1 (not encoded) occur together 90% of the time, as a
    shortcut filler does with its class; attribute 2 is independent and encoded."""
    rng = np.random.default_rng(seed)
    labels = rng.random((n, 3)) < 0.5
    labels[:, 1] = np.where(rng.random(n) < 0.9, labels[:, 0], ~labels[:, 0])
    return labels


STRENGTHS = np.array([1.0, 0.0, 0.5])


def _pair_sharing_0_and_1():
    pair = np.array([[1, 1, 0], [1, 1, 1]], bool)  # both carry attribute 0 (encoded) and 1 (not)
    e, _ = encoded_embeddings(pair, STRENGTHS, noise=0.0)
    return e[:1], e[1:]


def test_a_probe_of_the_labels_cannot_tell_an_encoded_attribute_from_its_correlate():
    # the limit the pattern and edit fits exist for: attribute 1 is decoded from attribute 0's axis
    labels = shortcut_labels()
    embeddings, basis = encoded_embeddings(labels, STRENGTHS)
    q, r = _pair_sharing_0_and_1()
    for method in ("ridge", "fastcav"):
        concepts = fit_concepts(embeddings, labels, split="train", method=method)
        assert abs(float(concepts.directions[1] @ basis[0])) > 0.9, method
        for scorer in ("product", "leace"):
            relevance = concept_relevance(concepts, q, r, scorer=scorer)[0]
            assert relevance[1] > 0.5 * relevance[0] > 0, (method, scorer, relevance)


def test_the_pattern_fit_recovers_the_encoded_attribute_not_its_correlate():
    # through its shift: the unencoded attribute's pattern is near zero, but its unit direction is
    # what is left of the penalty's leak along attribute 0, so the unit-direction scorers tie
    scorer = "shift"
    labels = shortcut_labels()
    embeddings, basis = encoded_embeddings(labels, STRENGTHS)
    concepts = fit_concepts(embeddings, labels, split="train", method="pattern")
    assert abs(float(concepts.directions[0] @ basis[0])) > 0.99
    assert np.linalg.norm(concepts.shifts[1]) < 0.05 * np.linalg.norm(concepts.shifts[0])
    q, r = _pair_sharing_0_and_1()
    relevance = concept_relevance(concepts, q, r, scorer=scorer)[0]
    assert relevance[0] > 5 * abs(relevance[1]), relevance
    product = concept_relevance(concepts, q, r, scorer="product")[0]
    assert product[1] > 0.5 * product[0], product


@pytest.mark.parametrize("scorer", ["product", "removal", "shift"])
def test_edit_directions_recover_the_encoded_attribute_not_its_correlate(scorer):
    labels = shortcut_labels(n=600)
    embeddings, basis = encoded_embeddings(labels, STRENGTHS)
    rows, edited, which = [], [], []
    for a in range(3):  # remove a from every image that has it; the embedding follows the encoding
        carriers = np.flatnonzero(labels[:, a])
        without = labels[carriers].copy()
        without[:, a] = False
        rows.append(embeddings[carriers])
        edited.append(encoded_embeddings(without, STRENGTHS, seed=0)[0] + (embeddings[carriers] -
                      encoded_embeddings(labels[carriers], STRENGTHS, seed=0)[0]))  # the same noise
        which.append(np.full(len(carriers), a))
    concepts = sx.attributes.fit_edit_concepts(np.concatenate(rows), np.concatenate(edited), np.concatenate(which),
                                               3, split="train")
    assert concepts.valid.tolist() == [True, False, True]  # removing attribute 1 changes nothing
    assert abs(float(concepts.directions[0] @ basis[0])) > 0.99
    q, r = _pair_sharing_0_and_1()
    relevance = concept_relevance(concepts, q, r, scorer=scorer)[0]
    assert relevance[0] > 0 and relevance[1] == -np.inf, relevance


def test_leace_and_shift_equal_a_direct_computation():
    rng = np.random.default_rng(4)
    labels = random_labels(800, 3)
    embeddings = rng.normal(size=(800, 6)) + labels @ rng.normal(size=(3, 6))
    concepts = fit_concepts(embeddings, labels, split="train", ridge=1e-9, method="pattern")
    x = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    q, r = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    leace = concept_relevance(concepts, q, r, scorer="leace")
    shift = concept_relevance(concepts, q, r, scorer="shift")

    def cos(a, b):
        return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))

    for a in range(3):
        # LEACE written out: whiten, project out the whitened cross-covariance, unwhiten
        mean = x.mean(0)
        sigma = np.cov(x.T, bias=True)
        cross = (x - mean).T @ (labels[:, a] - labels[:, a].mean()) / len(x)
        root = np.real(scipy_sqrtm(sigma))
        white = np.linalg.inv(root)
        projection = np.outer(white @ cross, white @ cross) / float(cross @ np.linalg.inv(sigma) @ cross)

        def erase(v):
            return v - root @ projection @ white @ (v - mean)

        erased = np.array([erase(v) for v in x])
        assert np.abs((erased - erased.mean(0)).T @ (labels[:, a] - labels[:, a].mean())).max() < 1e-6  # no linear trace
        for p in range(4):
            qn, rn = q[p] / np.linalg.norm(q[p]), r[p] / np.linalg.norm(r[p])
            assert leace[p, a] == pytest.approx(cos(qn, rn) - cos(erase(qn), erase(rn)), abs=1e-5)
            assert shift[p, a] == pytest.approx(cos(qn, rn) - cos(qn - concepts.shifts[a], rn), abs=1e-5)


def scipy_sqrtm(matrix):
    values, vectors = np.linalg.eigh(matrix)
    return vectors @ np.diag(np.sqrt(values)) @ vectors.T


def test_cell_relevance_with_every_cell_pair_equals_the_product_and_follows_the_matching_cells():
    rng = np.random.default_rng(5)
    labels = random_labels(500, 3)
    concepts = fit_concepts(rng.normal(size=(500, 6)) + labels @ rng.normal(size=(3, 6)), labels, split="train")
    q_cells, r_cells = rng.normal(size=(4, 9, 6)) + 0.3, rng.normal(size=(4, 16, 6)) + 0.3
    every = sx.attributes.cell_concept_relevance(concepts, q_cells, r_cells, fraction=1.0)
    product = concept_relevance(concepts, q_cells.mean(1), r_cells.mean(1), scorer="product")
    np.testing.assert_allclose(every, product, atol=1e-12)
    # by hand: the 10% strongest cell pairs of each pair
    top = sx.attributes.cell_concept_relevance(concepts, q_cells, r_cells, fraction=0.1)
    u = concepts.directions.astype(np.float64)
    for p in range(4):
        c = q_cells[p] @ r_cells[p].T
        keep = np.zeros(c.size, bool)
        keep[np.argsort(-c.ravel())[: round(0.1 * c.size)]] = True
        scale = 9 * 16 * np.linalg.norm(q_cells[p].mean(0)) * np.linalg.norm(r_cells[p].mean(0))
        expected = [sum((q_cells[p][i] @ u[a]) * (r_cells[p][j] @ u[a]) for i, j in zip(*np.nonzero(keep.reshape(c.shape))))
                    / scale for a in range(3)]
        np.testing.assert_allclose(top[p], expected, atol=1e-12)

    # an attribute present in both images but in cells that do not correspond earns no credit
    basis = np.eye(4)
    concepts = sx.attributes.Concepts(basis[:2].astype(np.float32), np.array([True, True]), "train")
    query = np.stack([basis[0] + basis[2], basis[1] + basis[3]])[None]  # cell 0: attr 0 + shared key; cell 1: attr 1
    reference = np.stack([basis[0] + basis[2], basis[1] - basis[3]])[None]  # attr 1's cells are anti-aligned
    half = sx.attributes.cell_concept_relevance(concepts, query, reference, fraction=0.25)[0]
    assert half[0] > 0 and half[1] == 0.0
    assert concept_relevance(concepts, query.mean(1), reference.mean(1))[0, 1] > 0  # the pooled product credits both


def test_new_fits_and_scorers_refuse_bad_input(tmp_path):
    labels = random_labels(50, 2)
    embeddings = np.random.default_rng(0).normal(size=(50, 3))
    with pytest.raises(ValueError, match="method must be one of"):
        fit_concepts(embeddings, labels, split="train", method="cav")
    ridge = fit_concepts(embeddings, labels, split="train")
    with pytest.raises(ValueError, match="shift scorer needs"):
        concept_relevance(ridge, embeddings[:2], embeddings[2:4], scorer="shift")
    edits = sx.attributes.fit_edit_concepts(embeddings[:4], embeddings[4:8], np.array([0, 0, 1, 1]), 2, split="train")
    with pytest.raises(ValueError, match="leace scorer needs"):
        concept_relevance(edits, embeddings[:2], embeddings[2:4], scorer="leace")
    with pytest.raises(ValueError, match=r"index 0..1"):
        sx.attributes.fit_edit_concepts(embeddings[:2], embeddings[2:4], np.array([0, 2]), 2, split="train")
    with pytest.raises(ValueError, match="not 'test'"):
        sx.attributes.fit_edit_concepts(embeddings[:2], embeddings[2:4], np.array([0, 1]), 2, split="test")
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        sx.attributes.cell_concept_relevance(ridge, np.ones((1, 4, 3)), np.ones((1, 4, 3)), fraction=0.0)
    with pytest.raises(ValueError, match="D=3"):
        sx.attributes.cell_concept_relevance(ridge, np.ones((1, 4, 5)), np.ones((1, 4, 5)))
    # every fit survives save and load, with what its scorers need
    from simexplain_jax.attributes import load_concepts, save_concepts
    pattern = fit_concepts(embeddings, labels, split="train", method="pattern")
    for concepts in (pattern, edits):
        save_concepts(tmp_path / "c.json", concepts, model="m", ridge=0.01)
        loaded = load_concepts(tmp_path / "c.json", model="m")
        for scorer in ("product", "shift") + (("leace",) if concepts.probe is not None else ()):
            np.testing.assert_array_equal(concept_relevance(loaded, embeddings[:3], embeddings[3:6], scorer=scorer),
                                          concept_relevance(concepts, embeddings[:3], embeddings[3:6], scorer=scorer))


def xor_encoded(n, seed=0, noise=0.02):
    """Attribute 0 is encoded by whether components 0 and 2 have the same sign (present:
    ``(s, s)``, absent: ``(s, -s)``, ``s`` a random sign), which no direction separates: its mean
    is the same with and without it, and every embedding has the same norm. Attribute 1 is
    encoded linearly along component 1."""
    rng = np.random.default_rng(seed)
    labels = rng.random((n, 2)) < 0.5
    sign = rng.choice([-1.0, 1.0], n)
    e = np.zeros((n, 6))
    e[:, 0], e[:, 2] = 0.7 * sign, 0.7 * sign * (2.0 * labels[:, 0] - 1.0)
    e[:, 1] = 0.5 * (2.0 * labels[:, 1] - 1.0)
    e[:, 5] = 1.5  # a common offset, as in encoded_embeddings
    return e + noise * rng.normal(size=e.shape), labels


def test_the_mlp_probe_finds_an_attribute_no_linear_probe_can():
    embeddings, labels = xor_encoded(3000)
    linear = fit_concepts(embeddings, labels, split="train", method="ridge")
    mlp = fit_concepts(embeddings, labels, split="train", method="mlp")
    assert mlp.valid.all() and mlp.network is not None
    # both carry attribute 0 with the same sign, so they share the (e_0 + e_2) component; only q has attribute 1
    q = np.array([[0.7, 0.5, 0.7, 0, 0, 1.5]])
    r = np.array([[0.7, -0.5, 0.7, 0, 0, 1.5]])
    x = q / np.linalg.norm(q)
    axis = np.array([1.0, 0, 1.0, 0, 0, 0]) / np.sqrt(2.0)
    gradient = sx.attributes.probe_network.logits_and_gradients(mlp.network, x)[1][0, 0]
    assert gradient @ axis / np.linalg.norm(gradient) > 0.9  # the probe's evidence grows along the shared pattern
    # what removing that component from both images costs, written out
    shared = (np.eye(6) - np.outer(axis, axis))
    expected = float(x[0] @ r[0] / np.linalg.norm(r) - (shared @ q[0]) @ (shared @ r[0]) /
                     (np.linalg.norm(shared @ q[0]) * np.linalg.norm(shared @ r[0])))
    found = concept_relevance(mlp, q, r, scorer="gradient")[0]
    missed = concept_relevance(linear, q, r, scorer="removal")[0]
    assert found[0] > 0.8 * expected > 0 and found[0] > found[1]
    assert missed[0] < 0.2 * expected, (missed, expected)  # the linear probe's direction for 0 is noise: no credit


def test_the_gradient_scorer_equals_a_direct_computation(tmp_path):
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(5)
    labels = random_labels(400, 3)
    embeddings = rng.normal(size=(400, 5)) + labels @ rng.normal(size=(3, 5))
    concepts = fit_concepts(embeddings, labels, split="train", method="mlp", seed=1)
    net = {k: jnp.asarray(v) for k, v in concepts.network.items()}
    q, r = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    relevance = concept_relevance(concepts, q, r, scorer="gradient")

    def cos(a, b):
        return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))

    for p in range(3):
        qn, rn = q[p] / np.linalg.norm(q[p]), r[p] / np.linalg.norm(r[p])
        for a in range(3):
            def logit(x):
                return (jnp.tanh(x @ net["w1"] + net["b1"]) @ net["w2"] + net["b2"])[a]
            erased = []
            for x in (qn, rn):  # jax.grad in float32
                g = np.asarray(jax.grad(logit)(jnp.asarray(x, jnp.float32)), np.float64)
                u = g / np.linalg.norm(g)
                erased.append(x - (x @ u) * u)
            assert relevance[p, a] == pytest.approx(cos(qn, rn) - cos(*erased), abs=2e-5)
    # scored in blocks of pairs: more pairs than one block give the same scores as a few at a time
    many_q, many_r = rng.normal(size=(600, 5)), rng.normal(size=(600, 5))
    np.testing.assert_allclose(concept_relevance(concepts, many_q, many_r, scorer="gradient"),
                               np.concatenate([concept_relevance(concepts, many_q[i:i + 7], many_r[i:i + 7],
                                                                 scorer="gradient") for i in range(0, 600, 7)]),
                               rtol=0, atol=1e-12)
    # a fixed seed fits the same network; another seed another one
    again = fit_concepts(embeddings, labels, split="train", method="mlp", seed=1)
    np.testing.assert_array_equal(again.network["w1"], concepts.network["w1"])
    other = fit_concepts(embeddings, labels, split="train", method="mlp", seed=2)
    assert not np.array_equal(other.network["w1"], concepts.network["w1"])
    # the network survives save and load; a file with a malformed network is refused
    from simexplain_jax.attributes import load_concepts, save_concepts
    save_concepts(tmp_path / "c.json", concepts, model="m", ridge=0.01)
    loaded = load_concepts(tmp_path / "c.json", model="m")
    np.testing.assert_array_equal(concept_relevance(loaded, q, r, scorer="gradient"), relevance)
    import json
    record = json.loads((tmp_path / "c.json").read_text())
    record["network"]["w2"] = record["network"]["w2"][:-1]
    (tmp_path / "c.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"network\['w2'\] must be a finite array of shape"):
        load_concepts(tmp_path / "c.json", model="m")
    with pytest.raises(ValueError, match="gradient scorer needs the probe network"):
        concept_relevance(fit_concepts(embeddings, labels, split="train"), q, r, scorer="gradient")
