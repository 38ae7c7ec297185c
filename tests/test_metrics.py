import numpy as np
import pytest
import torch

from src.core import metrics
from src.core.targets import TARGETS, WEIGHTS, complete, direct_targets


def test_weighted_r2_matches_hand_computation():
    y = np.array([[1.0, 2, 3, 4, 5], [2, 0, 1, 3, 6]])
    p = np.array([[1.5, 2, 2, 4, 5], [2, 1, 1, 2, 7]])
    w = np.array([WEIGHTS[t] for t in TARGETS])
    # by hand: weighted mean over all 10 cells, then the two sums of squares
    ybar = (w * y).sum() / (2 * w.sum())
    ss_res = (w * (y - p) ** 2).sum()
    ss_tot = (w * (y - ybar) ** 2).sum()
    assert metrics.weighted_r2(y, p) == pytest.approx(1 - ss_res / ss_tot)
    # worked out on paper: sum(w*y) = 3.9 + 3.9 over sum(w) = 2 -> 3.9
    assert ybar == pytest.approx(3.9)
    assert ss_res == pytest.approx(0.1 * 0.25 + 0.1 * 1 + 0.1 * 1 + 0.2 * 1 + 0.5 * 1)


def test_weighted_r2_perfect_and_mean_predictor():
    rng = np.random.default_rng(0)
    y = rng.uniform(0, 50, size=(20, 5))
    assert metrics.weighted_r2(y, y) == pytest.approx(1.0)
    w = np.array([WEIGHTS[t] for t in TARGETS])
    ybar = (w * y).sum() / (w.sum() * len(y))
    assert metrics.weighted_r2(y, np.full_like(y, ybar)) == pytest.approx(0.0)


def test_log_variant_and_per_target():
    y = np.array([[10.0, 5, 1, 11, 16], [20, 0, 4, 24, 24], [5, 2, 0, 5, 7]])
    p = y * 1.1
    per = metrics.per_target_r2(y, p)
    assert set(per) == set(TARGETS)
    expected = sum(
        WEIGHTS[t] * metrics.r2(np.log1p(y[:, i]), np.log1p(p[:, i])) for i, t in enumerate(TARGETS)
    ) / sum(WEIGHTS.values())
    assert metrics.weighted_r2_log(y, p) == pytest.approx(expected)
    s = metrics.summary(y, p, ["Tas", "Tas", "WA"])
    assert {"weighted_r2", "weighted_r2_log", "r2_dead", "r2_clover", "r2_total", "r2_state_Tas"} <= set(s)
    assert "r2_state_WA" not in s  # a single image has no R^2


def test_shape_is_checked():
    with pytest.raises(ValueError):
        metrics.weighted_r2(np.zeros((3, 4)), np.zeros((3, 4)))


@pytest.mark.parametrize("train_dead", [False, True])
@pytest.mark.parametrize("train_clover", [False, True])
def test_every_direct_choice_recovers_consistent_labels(train_dead, train_clover):
    g, d, c = np.array([10.0, 0.0]), np.array([5.0, 3.0]), np.array([2.0, 0.0])
    truth = {"Dry_Green_g": g, "Dry_Dead_g": d, "Dry_Clover_g": c, "GDM_g": g + c, "Dry_Total_g": g + d + c}
    direct = direct_targets(train_dead, train_clover)
    assert len(direct) == 3 and "Dry_Green_g" in direct
    assert ("Dry_Dead_g" in direct) == train_dead and ("Dry_Clover_g" in direct) == train_clover
    out = complete({t: truth[t] for t in direct})
    for t in TARGETS:
        np.testing.assert_allclose(out[t], truth[t])


def test_derived_masses_are_clipped_at_zero_for_numpy_and_torch():
    out = complete({"Dry_Green_g": np.array([10.0]), "Dry_Clover_g": np.array([2.0]), "Dry_Total_g": np.array([8.0])})
    assert out["GDM_g"][0] == 12.0 and out["Dry_Dead_g"][0] == 0.0
    assert out["Dry_Total_g"][0] == 12.0  # re-summed: the relations hold even where a total was too small
    raw = complete({"Dry_Green_g": np.array([10.0]), "Dry_Clover_g": np.array([2.0]), "Dry_Total_g": np.array([8.0])}, clip=False)
    assert raw["Dry_Dead_g"][0] == -4.0 and raw["Dry_Total_g"][0] == 8.0
    t = complete({"Dry_Green_g": torch.tensor([5.0]), "GDM_g": torch.tensor([3.0]), "Dry_Dead_g": torch.tensor([1.0])})
    assert float(t["Dry_Clover_g"]) == 0.0 and float(t["GDM_g"]) == 5.0 and float(t["Dry_Total_g"]) == 6.0


def test_reconcile_projects_free_predictions_onto_the_relations():
    from src.core.targets import reconcile

    consistent = torch.tensor([[10.0, 4.0, 2.0, 12.0, 16.0]])
    assert torch.allclose(reconcile(consistent), consistent, atol=1e-5)
    out = reconcile(torch.tensor([[10.0, 4.0, 2.0, 15.0, 14.0], [1.0, 0.0, 0.0, 0.0, 0.0]]))
    g, d, c, gdm, tot = out.unbind(-1)
    assert torch.allclose(gdm, g + c) and torch.allclose(tot, g + d + c) and (out >= 0).all()
