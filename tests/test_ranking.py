import numpy as np
import pandas as pd
import pytest

from intrada.errors import IntradaError
from intrada.ranking import rank_splits


def scores(values, ids=None):
    ids = ids or [f"img{i}" for i in range(len(values))]
    return pd.DataFrame(
        {
            "image_id": ids,
            "image_path": [f"{i}.png" for i in ids],
            "entropy": values,
            "score": values,
        }
    )


def test_easy_is_the_lowest_scores_and_ties_break_by_image_id():
    df = scores([0.30, 0.10, 0.30, 0.20, 0.30], ids=["e", "d", "c", "b", "a"])
    easy, hard = rank_splits(df, 0.6)  # int(5 * 0.6) = 3 easy
    assert easy["image_id"].tolist() == ["d", "b", "a"]  # 0.10, 0.20, then tie 0.30 -> "a"
    assert hard["image_id"].tolist() == ["c", "e"]
    assert easy["rank"].tolist() == [0, 1, 2]
    assert hard["rank"].tolist() == [3, 4]
    assert set(easy["split"]) == {"easy"} and set(hard["split"]) == {"hard"}


def test_splits_are_disjoint_cover_everything_and_keep_columns():
    rng = np.random.default_rng(0)
    df = scores(rng.random(50).tolist())
    easy, hard = rank_splits(df, 0.67)
    assert len(easy) == int(50 * 0.67) == 33
    assert set(easy["image_id"]).isdisjoint(hard["image_id"])
    assert set(easy["image_id"]) | set(hard["image_id"]) == set(df["image_id"])
    assert easy["score"].max() <= hard["score"].min()
    for column in ("image_id", "image_path", "entropy", "score", "rank", "split"):
        assert column in easy.columns and column in hard.columns


def test_nan_score_is_refused():
    with pytest.raises(IntradaError, match="NaN"):
        rank_splits(scores([0.1, float("nan"), 0.3]), 0.5)


def test_lambda_leaving_a_split_empty_is_refused():
    with pytest.raises(IntradaError, match="lambda"):
        rank_splits(scores([0.1, 0.2, 0.3]), 0.2)  # int(3 * 0.2) = 0 easy


def test_lambda_one_makes_every_image_easy_and_the_hard_table_empty():
    easy, hard = rank_splits(scores([0.3, 0.1, 0.2]), 1.0)
    assert easy["image_id"].tolist() == ["img1", "img2", "img0"]
    assert len(hard) == 0 and list(hard.columns) == list(easy.columns)
