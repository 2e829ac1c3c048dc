"""archspace.analysis.stats: intervals over seeds, grouping replicates, attention-share curves."""
from __future__ import annotations

import math

import pytest

from archspace.analysis.stats import group_replicates, ratio_curves, t_interval, trend_sentence


def test_t_interval_from_the_textbook_formula():
    # mean 2, sample sd 1, n 3: half width t_{0.975, 2} / sqrt(3). With 2 degrees of freedom Student's CDF is
    # 1/2 + t / (2 sqrt(2 + t^2)), so its 0.975 quantile is 0.95 sqrt(2 / (1 - 0.95^2)).
    t975 = 0.95 * math.sqrt(2 / (1 - 0.95 ** 2))
    e = t_interval([1.0, 2.0, 3.0])
    assert e.mean == 2.0 and e.n == 3 and e.sd == pytest.approx(1.0, rel=1e-15)
    assert e.hi - e.mean == pytest.approx(t975 / math.sqrt(3), rel=1e-12)
    assert e.mean - e.lo == pytest.approx(e.hi - e.mean, rel=1e-15)
    one = t_interval([0.5])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.lo)
    assert t_interval([]).n == 0
    assert t_interval([1.0, float("nan"), 3.0]).n == 2  # non-finite values are left out


def _row(tid, values, status="completed", seed=0, acc=None, layout="MA", n_a=1):
    return {"trial_id": tid, "values": values, "status": status, "seed": seed, "layout": layout,
            "attention_layers": n_a, "params": 10, "state_size": 5, "final": {"test/acc": acc}, "objectives": {}}


def test_group_replicates_pools_the_seeds_of_each_design():
    rows = [_row("a0", {"mixer.preset": "gla"}, seed=0, acc=0.5), _row("a1", {"mixer.preset": "gla"}, seed=1, acc=0.7),
            _row("b0", {"mixer.preset": "gdn"}, seed=0, acc=0.9),
            _row("b1", {"mixer.preset": "gdn"}, status="failed", seed=1, acc=None)]
    groups = group_replicates(rows, ["test/acc"])
    assert [g["trial_ids"] for g in groups] == [["a0", "a1"], ["b0"]]
    assert groups[0]["estimates"]["test/acc"].mean == pytest.approx(0.6)
    assert groups[0]["estimates"]["test/acc"].n == 2 and groups[1]["estimates"]["test/acc"].n == 1


def test_ratio_curves_per_mixer_share_the_all_attention_end_point():
    rows = []
    for seed, (g0, g1, d0, d1, att) in enumerate([(0.1, 0.5, 0.2, 0.6, 0.9), (0.2, 0.7, 0.2, 0.8, 0.95)]):
        rows += [_row(f"g0{seed}", {"hybrid.ratio": "1:0", "mixer.preset": "gla"}, seed=seed, acc=g0, layout="MM", n_a=0),
                 _row(f"g1{seed}", {"hybrid.ratio": "1:1", "mixer.preset": "gla"}, seed=seed, acc=g1, layout="MA", n_a=1),
                 _row(f"d0{seed}", {"hybrid.ratio": "1:0", "mixer.preset": "gdn"}, seed=seed, acc=d0, layout="MM", n_a=0),
                 _row(f"d1{seed}", {"hybrid.ratio": "1:1", "mixer.preset": "gdn"}, seed=seed, acc=d1, layout="MA", n_a=1),
                 _row(f"aa{seed}", {"hybrid.ratio": "0:1"}, seed=seed, acc=att, layout="AA", n_a=2)]
    curves = ratio_curves(rows, "test/acc")
    assert set(curves) == {"mixer.preset=gla", "mixer.preset=gdn"}
    gla = curves["mixer.preset=gla"]
    assert [p["share"] for p in gla] == [0.0, 0.5, 1.0]
    assert [p["estimate"].mean for p in gla] == pytest.approx([0.15, 0.6, 0.925])
    assert all(p["estimate"].n == 2 for p in gla)
    assert curves["mixer.preset=gdn"][-1]["estimate"].mean == pytest.approx(0.925)  # the same end point
    text = trend_sentence("gla", gla, "max", "test/acc")
    assert "rises monotonically" in text and "0.15 -> 0.6 -> 0.925" in text
