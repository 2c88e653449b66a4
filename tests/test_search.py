"""The exact blocked search: properties (hypothesis) and equality with exhaustive FAISS and brute force."""

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.mining.tiles import (
    PairChunk,
    SearchCounts,
    bf16_error_bound,
    exact_pairs,
    faiss_range_pairs,
    pair_similarity,
)
from pipeline.search import NearDuplicateGroups


def clustered(seed: int, n: int, dim: int, centres: int = 3) -> np.ndarray:
    """float16 unit vectors around a few centres with varied spread, so cosines cover [-1, 1] densely near 1."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim))
    spread = rng.uniform(0.02, 1.0, size=(n, 1))
    x = c[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16)


def pairs(vectors, threshold, block_size=4096):
    return PairChunk.concat(list(exact_pairs(vectors, threshold, block_size)))


def as_set(chunk: PairChunk):
    return set(zip(chunk.i.tolist(), chunk.j.tolist()))


def brute(vectors, threshold, tolerance=0.0):
    """Pairs above threshold in float64; with a tolerance, also the set of pairs too close to call."""
    x = vectors.astype(np.float64)
    s = x @ x.T
    i, j = np.triu_indices(len(x), 1)
    v = s[i, j]
    sure = {(a, b) for a, b, c in zip(i.tolist(), j.tolist(), v) if c > threshold + tolerance}
    near = {(a, b) for a, b, c in zip(i.tolist(), j.tolist(), v) if abs(c - threshold) <= tolerance}
    return sure, near


data = st.tuples(st.integers(0, 10_000), st.integers(2, 70), st.sampled_from([8, 16, 48]))
thresholds = st.floats(0.5, 0.995)
quick = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@quick
@given(data, thresholds, st.integers(1, 80))
def test_result_is_unordered_unique_without_self_pairs_and_equals_brute_force(d, threshold, block):
    x = clustered(*d)
    found = pairs(x, threshold, block)
    got = as_set(found)
    assert all(i < j for i, j in got)
    assert len(got) == len(found)
    sure, near = brute(x, threshold, tolerance=1e-6)
    assert sure <= got <= sure | near
    assert np.allclose(found.sim, pair_similarity(x, found.i, found.j))
    assert np.all(found.sim > threshold)


@quick
@given(data, thresholds)
def test_equals_exhaustive_faiss_flat_ip(d, threshold):
    x = clustered(*d)
    assert as_set(pairs(x, threshold, 16)) == as_set(faiss_range_pairs(x.astype(np.float32), threshold))


@quick
@given(data, thresholds, st.integers(0, 1000))
def test_invariant_under_permuting_rows(d, threshold, seed):
    x = clustered(*d)
    perm = np.random.default_rng(seed).permutation(len(x))
    found = pairs(x[perm], threshold, 8)
    mapped = {tuple(sorted((int(perm[i]), int(perm[j])))) for i, j in zip(found.i, found.j)}
    assert mapped == as_set(pairs(x, threshold, 8))


@quick
@given(data, thresholds, thresholds)
def test_a_higher_threshold_keeps_a_subset(d, t1, t2):
    x = clustered(*d)
    low, high = sorted((t1, t2))
    assert as_set(pairs(x, high, 8)) <= as_set(pairs(x, low, 8))


@settings(max_examples=15, deadline=None)
@given(data, thresholds, st.integers(1, 80), st.integers(1, 80))
def test_same_result_at_any_block_size_and_thread_count(d, threshold, b1, b2):
    x = clustered(*d)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = pairs(x, threshold, b1)
        torch.set_num_threads(2)
        two = pairs(x, threshold, b2)
    finally:
        torch.set_num_threads(before)
    key = lambda c: sorted(zip(c.i.tolist(), c.j.tolist(), c.sim.tolist()))  # noqa: E731
    assert key(one) == key(two)


def _with_cosine(base, target, rng):
    noise = rng.standard_normal(base.shape)
    noise -= noise.dot(base) * base
    noise /= np.linalg.norm(noise)
    return target * base + np.sqrt(1 - target**2) * noise


def test_pairs_within_a_thousandth_of_the_threshold_on_both_sides():
    rng = np.random.default_rng(7)
    dim = 768
    rows = list(rng.standard_normal((300, dim)) / np.sqrt(dim))
    offsets = [-0.001, -0.0005, -0.0002, 0.0002, 0.0005, 0.001]
    for off in offsets:
        base = rng.standard_normal(dim)
        base /= np.linalg.norm(base)
        rows += [base, _with_cosine(base, 0.95 + off, rng)]
    x = np.array(rows, dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x = x.astype(np.float16)
    found = as_set(pairs(x, 0.95, 128))
    assert found == as_set(faiss_range_pairs(x.astype(np.float32), 0.95))
    sure, near = brute(x, 0.95, tolerance=1e-6)
    assert found == sure and not near
    planted_above = sum(1 for off in offsets if off > 0)
    assert len(found) == planted_above  # fp16 storage moves cosines < 1e-4: each planted pair stays on its side


def test_a_corpus_of_exact_duplicates():
    rng = np.random.default_rng(0)
    x = clustered(1, 120, 32)
    x[10:70] = x[5]  # 61 identical rows (5 and 10..69)
    found = pairs(x, 0.95, 16)
    dup_rows = [5, *range(10, 70)]
    expected_dups = {(a, b) for k, a in enumerate(dup_rows) for b in dup_rows[k + 1 :]}
    assert expected_dups <= as_set(found)
    assert as_set(found) == as_set(faiss_range_pairs(x.astype(np.float32), 0.95))
    groups = NearDuplicateGroups(len(x))
    order = rng.permutation(len(found))
    for part in np.array_split(order, 5):  # merged in arbitrary chunks
        groups.merge(found.i[part], found.j[part])
    assert set(groups.label[dup_rows].tolist()) == {5}


def test_the_bf16_margin_covers_the_worst_case_error():
    # Adversarial rows: every coordinate sits just below a bfloat16 rounding boundary, so the
    # per-element errors all have the same sign instead of cancelling.
    dim = 768
    v = np.full(dim, (1.0 + 2.0**-8 - 2.0**-14) * 2.0**-5, dtype=np.float64)  # rounds down by almost 2^-8 relative
    exact = float(v @ v)
    low = torch.from_numpy(v.astype(np.float32)).to(torch.bfloat16)
    approx = float(torch.mm(low[None], low[None].T)[0, 0])
    assert abs(approx - exact) <= bf16_error_bound(float(np.linalg.norm(v)), dim)
    assert abs(approx - exact) > 1e-3  # the case is adversarial enough that a tiny margin would fail


def test_counts_cover_the_upper_triangle_once():
    x = clustered(2, 100, 16)
    counts = SearchCounts()
    list(exact_pairs(x, 0.9, 30, counts=counts))
    tiles = [(r, c) for r in range(0, 100, 30) for c in range(0, 100, 30) if c >= r]
    assert counts.dot_products == sum(min(30, 100 - r) * min(30, 100 - c) for r, c in tiles)
