import pytest

from service.prm.aggregation import aggregate, rank


@pytest.mark.parametrize(
    ("how", "expected"),
    [("product", 0.9 * 0.5 * 0.8), ("min", 0.5), ("last", 0.8), ("mean", (0.9 + 0.5 + 0.8) / 3), ("max", 0.9)],
)
def test_aggregations(how, expected):
    assert aggregate([0.9, 0.5, 0.8], how) == pytest.approx(expected, abs=1e-12)


def test_rank_is_highest_first_with_ties_to_the_lower_index():
    assert rank([0.2, 0.7, 0.2, 0.9, 0.7]) == [3, 1, 4, 0, 2]
