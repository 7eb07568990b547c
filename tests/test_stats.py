"""The shared statistic shape and the small tests behind it: known answers and calibration."""

import numpy as np
import pytest

from geomsteer.stats import (STAT_KEYS, auc, benjamini_hochberg, bootstrap_ci, holm, monte_carlo_p, null_summary,
                             statistic, t_predictive_p)


def test_monte_carlo_p_counts_the_observed_as_a_draw():
    draws = np.arange(19.0)
    assert monte_carlo_p(100.0, draws, "greater") == pytest.approx(1 / 20)
    assert monte_carlo_p(-1.0, draws, "greater") == pytest.approx(1.0)
    assert monte_carlo_p(-1.0, draws, "less") == pytest.approx(1 / 20)
    assert monte_carlo_p(9.0, draws, "two-sided") == pytest.approx(1.0)


def test_t_predictive_p_is_calibrated_on_normal_nulls():
    rng = np.random.default_rng(0)
    ps = []
    for _ in range(2000):
        x = rng.standard_normal(5)
        ps.append(t_predictive_p(x[0], x[1:].mean(), x[1:].std(ddof=1), 4, "greater"))
    ps = np.array(ps)
    assert abs((ps < 0.05).mean() - 0.05) < 0.015
    assert abs((ps < 0.2).mean() - 0.2) < 0.03


def test_t_predictive_p_goes_below_the_monte_carlo_floor_for_large_effects():
    s = null_summary(10.0, [0.0, 0.1, -0.1, 0.05], "greater")
    assert s["p_monte_carlo"] == pytest.approx(1 / 5) == s["p_min"]
    assert s["p_value"] < 1e-3
    assert s["effect_size"] == pytest.approx((10.0 - 0.0125) / np.std([0.0, 0.1, -0.1, 0.05], ddof=1))


def test_bootstrap_interval_covers_the_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    hits = 0
    for i in range(200):
        lo, hi = bootstrap_ci(rng.standard_normal(60), seed=i)
        hits += lo <= 0.0 <= hi
    assert 0.88 <= hits / 200 <= 0.99
    assert bootstrap_ci([1.0]) is None


def test_statistic_takes_the_most_conservative_null():
    nulls = {"a": null_summary(1.0, [0.0, 0.1, 0.2, 0.1]), "b": null_summary(1.0, [0.9, 1.1, 1.0, 0.95])}
    st = statistic(1.0, 10, nulls=nulls, ci95=[0.8, 1.2])
    assert set(STAT_KEYS) <= set(st)
    assert st["conservative_null"] == "b" and st["p_value"] == nulls["b"]["p_value"]
    empty = statistic(1.0, 10, p_reason="no nulls here")
    assert empty["p_value"] is None and empty["p_reason"] == "no nulls here" and empty["ci95_reason"]
    with pytest.raises(ValueError, match="alternative must be one of"):
        statistic(1.0, 1, alternative="bigger")


def test_holm_and_benjamini_hochberg_known_values():
    p = [0.01, 0.04, 0.03, None, 0.005]
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, None, 0.02])
    assert benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, None, 0.02])


def test_auc_matches_the_pairwise_definition():
    rng = np.random.default_rng(2)
    pos, neg = rng.integers(0, 5, 30).astype(float), rng.integers(0, 5, 40).astype(float)
    ref = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (30 * 40)
    assert auc(pos, neg) == pytest.approx(ref)
    assert np.isnan(auc([], neg))


def test_report_verdicts_say_which_way_a_statistic_went():
    from geomsteer.reports import verdict as _verdict

    base = {"conservative_null": "nested_random_sets", "alternative": "less"}
    assert _verdict({**base, "p_value": 1e-4, "effect_size": -6.0}).startswith("beyond every null")
    assert _verdict({**base, "p_value": 0.99, "effect_size": 9.6}).startswith("**the opposite of the prediction**")
    assert _verdict({**base, "p_value": 0.3, "effect_size": -0.5}).startswith("**not distinguishable**")
    assert _verdict({"p_value": None}) == "no null computed"
