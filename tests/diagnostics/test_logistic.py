"""The diagnostics' one logistic regression: the minimum of its objective, a penalty per feature, finite on
separable data, an objective that never rises from one Newton iterate to the next."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from pipeline.diagnostics import logistic

# Three rows on which full Newton steps from zero overshoot: after 9 steps the objective jumps from 0.14 to
# 5.8, then to 10^5-10^6, and the iterates cycle between two points far from the minimum (w = (2034, 145)).
OVERSHOOT_X = np.array([[0.328, -0.463], [2.034, 0.145], [-61.887, 39.461]])
OVERSHOOT_Y = np.array([0.0, 1.0, 1.0])
OVERSHOOT_PENALTY = 1e-3


def objective(x: np.ndarray, y: np.ndarray, penalty: np.ndarray, w: np.ndarray) -> float:
    logits = x @ w
    return float((np.logaddexp(0.0, logits) - y * logits).sum() + 0.5 * (penalty * w) @ w)


def direct_minimum(x: np.ndarray, y: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    """scipy's BFGS on the primal objective over w."""
    from scipy.optimize import minimize

    def gradient(w: np.ndarray) -> np.ndarray:
        return x.T @ (1.0 / (1.0 + np.exp(-(x @ w))) - y) + penalty * w

    return np.asarray(minimize(lambda w: objective(x, y, penalty, w), np.zeros(x.shape[1]), jac=gradient,
                               method="BFGS", options={"gtol": 1e-10}).x)


def random_problem(seed: int, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), (rng.random(n) < 0.5).astype(float)


@pytest.mark.parametrize(("n", "d"), [(12, 30), (40, 6)])  # fewer rows than features (a probe's fold), and more
def test_the_fit_is_the_minimum_a_direct_minimisation_finds(n, d):
    x, y = random_problem(n, n, d)
    x[:, -1] = 1.0  # an intercept column, penalised far less (as the text audit does)
    for scale in (0.1, 1.0, 10.0):
        penalty = np.full(d, scale)
        penalty[-1] = 1e-3
        w = logistic.fit(x, y, penalty)
        np.testing.assert_allclose(w, direct_minimum(x, y, penalty), atol=1e-5)
        # and exactly stationary: X^T (y - sigmoid(X w)) = P w
        np.testing.assert_allclose(x.T @ (y - logistic.sigmoid(x @ w)), penalty * w, atol=1e-9)


def test_each_feature_gets_its_own_penalty():
    x, y = random_problem(1, 30, 4)
    penalty = np.array([0.5, 2.0, 8.0, 0.01])
    w = logistic.fit(x, y, penalty)
    # a column scaled by c with its penalty scaled by c^2 is the same model: its weight is divided by c
    c = np.array([1.0, 3.0, 0.2, 10.0])
    np.testing.assert_allclose(logistic.fit(x * c, y, penalty * c**2), w / c, rtol=1e-8, atol=1e-12)
    # a heavier penalty on one feature shrinks that weight only towards zero
    heavier = penalty.copy()
    heavier[1] = 1e4
    assert abs(logistic.fit(x, y, heavier)[1]) < abs(w[1]) / 100
    # one number is the same penalty on every feature
    np.testing.assert_array_equal(logistic.fit(x, y, 2.0), logistic.fit(x, y, np.full(4, 2.0)))


def test_separable_data_stays_finite():
    x = np.array([[1.0, 0.2], [2.0, -0.3], [-1.0, 0.1], [-3.0, 0.4]])  # the sign of column 0 is the label
    y = np.array([1.0, 1.0, 0.0, 0.0])
    norms = []
    for penalty in (1e-1, 1e-3, 1e-6):
        w = logistic.fit(x, y, penalty)
        assert np.all(np.isfinite(w)) and np.all((x @ w > 0) == (y == 1))
        np.testing.assert_allclose(x.T @ (y - logistic.sigmoid(x @ w)), penalty * w, atol=1e-9)
        norms.append(float(np.linalg.norm(w)))
    assert norms[0] < norms[1] < norms[2]  # only the penalty holds the weights back


def test_a_training_set_of_one_class_keeps_a_finite_intercept():
    x, _ = random_problem(2, 20, 5)
    x[:, -1] = 1.0
    penalty = np.array([10.0, 10.0, 10.0, 10.0, 1e-3])  # the text audit's: words 10, intercept far less
    w = logistic.fit(x, np.ones(20), penalty)
    assert np.all(np.isfinite(w)) and w[-1] > 0
    assert np.all(logistic.sigmoid(x @ w) > 0.5)


def test_step_halving_keeps_the_objective_from_rising(monkeypatch):
    """On rows where full Newton steps overshoot and cycle, every iterate's objective is at most the last one's."""
    seen: list[np.ndarray] = []
    sigmoid = logistic.sigmoid

    def recording_sigmoid(z: np.ndarray) -> np.ndarray:
        seen.append(np.array(z, dtype=np.float64))  # the logits X w of each Newton iterate
        return sigmoid(z)

    monkeypatch.setattr(logistic, "sigmoid", recording_sigmoid)
    penalty = np.full(2, OVERSHOOT_PENALTY)
    w = logistic.fit(OVERSHOOT_X, OVERSHOOT_Y, penalty)
    monkeypatch.undo()

    # three rows of two independent columns: each iterate's weights are read back from its logits
    iterates = [np.linalg.lstsq(OVERSHOOT_X, logits, rcond=None)[0] for logits in seen]
    values = [objective(OVERSHOOT_X, OVERSHOOT_Y, penalty, v) for v in iterates]
    assert len(values) > 5
    assert all(later <= earlier + 1e-12 for earlier, later in zip(values, values[1:]))
    np.testing.assert_allclose(w, direct_minimum(OVERSHOOT_X, OVERSHOOT_Y, penalty), atol=1e-5)
    assert np.all(np.abs(w) < 20)


def test_no_rows_is_no_evidence():
    np.testing.assert_array_equal(logistic.fit(np.zeros((0, 3)), np.zeros(0), 1.0), np.zeros(3))


@pytest.mark.parametrize(("labels", "penalty", "says"), [
    (np.array([1.0, -1.0, 1.0]), 1.0, "labels must be 0 or 1"),
    (np.array([1.0, 0.0]), 1.0, "do not match"),
    (np.array([1.0, 0.0, 1.0]), 0.0, "positive"),
    (np.array([1.0, 0.0, 1.0]), np.ones(3), "one per feature"),
])
def test_bad_arguments_say_what_to_pass(labels, penalty, says):
    with pytest.raises(ValueError, match=says):
        logistic.fit(np.ones((3, 2)), labels, penalty)


def test_rows_must_be_finite():
    with pytest.raises(ValueError, match="NaN"):
        logistic.fit(np.array([[1.0, np.nan]]), np.array([1.0]), 1.0)


def test_sigmoid_saturates_without_overflow():
    z = np.array([-1000.0, -5.0, 0.0, 5.0, 1000.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = logistic.sigmoid(z)
    np.testing.assert_allclose(s[1:4], 1.0 / (1.0 + np.exp(-z[1:4])), rtol=1e-14)
    assert s[0] == 0.0 and s[-1] == 1.0
