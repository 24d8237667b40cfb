"""The original's CFG search: start table, CSV-driven walk (resumable from any history), rectangular grid."""
from __future__ import annotations

import pytest

from autoregressive import cfg_search
from utils.config import ConfigError


@pytest.mark.parametrize("model,schedule,tok,ckpt,start", [
    ("GPT-B", "step", "configs/vq/VQ_SS256.yaml", "GPT_B256_e300_VQ_SS.pt", 2.5),
    ("GPT-L", "step", "x", "y", 1.75), ("GPT-XL", "step", "x", "y", 1.25), ("GPT-XXL", "step", "x", "y", 1.25),
    ("GPT-B", "step", "x", "run_v4b/0250000.pt", 3.0), ("GPT-B", "step", "x", "run_v4b/0300000.pt", 2.75),
    ("GPT-L", "step", "x", "run_v4b/0250000.pt", 2.5),
    ("GPT-B", "constant", "configs/vq/VQ_XLXXL256.yaml", "y", 1.75), ("GPT-B", "constant", "VQ_BL256.yaml", "y", 2.0),
    ("GPT-L", "constant", "x", "y", 1.75), ("GPT-XXL", "constant", "x", "y", 1.75),
    ("GPT-B", "rectangular", "x", "y", 3.0), ("GPT-L", "rectangular", "x", "y", 2.5),
    ("GPT-XXL", "rectangular", "x", "y", 1.75)])
def test_start_table_is_the_originals(model, schedule, tok, ckpt, start):
    assert cfg_search.empirical_cfg_start(model, schedule, tok, ckpt) == start


def test_unsearchable_schedule_is_rejected_by_name():
    with pytest.raises(ConfigError, match="'linear'"):
        cfg_search.empirical_cfg_start("GPT-B", "linear")


def _fake_eval(path, schedule, note, optimum, calls):
    def evaluate(scale):
        calls.append(scale)
        fid = 3.0 + (scale - optimum) ** 2
        cfg_search.record(path, schedule, note, scale, {"FID": fid, "Inception Score": 200.0, "Precision": 0.8,
                                                         "Recall": 0.5, "sFID": 5.0})
    return evaluate


def test_walk_reaches_a_local_minimum_and_resumes_from_the_csv(tmp_path):
    path = tmp_path / "search_results" / "run.csv"
    calls = []
    best, fid = cfg_search.walk(path, "step", "window_start=0.18", 2.5, _fake_eval(path, "step", "window_start=0.18",
                                                                                   1.75, calls))
    assert best == 1.75 and fid == 3.0
    assert calls == [2.5, 2.75, 2.25, 2.0, 1.75, 1.5]  # larger neighbour first, then down to the minimum
    # a rerun (same schedule and annotation) evaluates nothing: every neighbour of the best is in the CSV
    again = []
    assert cfg_search.walk(path, "step", "window_start=0.18", 2.5,
                           _fake_eval(path, "step", "window_start=0.18", 1.75, again)) == (1.75, 3.0)
    assert again == []
    # another annotation, and another schedule, are separate walks in the same CSV
    other = []
    cfg_search.walk(path, "step", "window_start=0.30", 2.5, _fake_eval(path, "step", "window_start=0.30", 2.5, other))
    assert other == [2.5, 2.75, 2.25]
    assert len(cfg_search.read_rows(path)) == 9


def test_walk_continues_from_history_not_from_the_start(tmp_path):
    """An earlier run left scales 2.0 and 1.75 in the CSV: the walk continues from the best of them (as the
    original's get_next_search_state_cfg), not from the start scale."""
    path = tmp_path / "run.csv"
    seed = _fake_eval(path, "constant", "", 1.5, [])
    seed(2.0)
    seed(1.75)
    calls = []
    best, _ = cfg_search.walk(path, "constant", "", 3.0, _fake_eval(path, "constant", "", 1.5, calls))
    assert best == 1.5 and calls == [1.5, 1.25]


def test_walk_never_goes_below_one_and_can_try_smaller_first(tmp_path):
    path = tmp_path / "run.csv"
    calls = []
    best, _ = cfg_search.walk(path, "rectangular", "window_start=0.10;window_end=0.50", 1.25,
                              _fake_eval(path, "rectangular", "window_start=0.10;window_end=0.50", 0.0, calls),
                              increase_first=False)
    assert best == 1.0 and calls == [1.25, 1.0]  # 0.75 is below the floor, 1.25 is recorded: done


def test_rectangular_grid_and_annotations():
    grid = [(round(s, 2), round(e, 2)) for s, e in cfg_search.rectangular_grid()]
    assert grid[0] == (0.10, 0.50) and grid[-1] == (0.80, 1.00) and len(grid) == 138
    assert (0.50, 0.50) not in grid and (0.45, 0.50) in grid and (0.55, 0.55) not in grid
    assert (0.80, 0.80) in grid  # np.arange's rounding makes 0.8 < 0.8 true once, as in the original
    assert cfg_search.annotation({"window_start": 0.1, "window_end": 0.5}) == "window_start=0.10;window_end=0.50"
    assert cfg_search.annotation({}) == ""
