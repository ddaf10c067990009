import math

import numpy as np
import pytest

from jisi_graph import routing
from jisi_graph.context import DEFAULTS

NAN = float("nan")


class TestSupportSet:
    def test_threshold_keeps_near_ties_past_k(self):
        sims = np.array([0.9, 0.5, 0.8, 0.77, 0.3, 0.761])
        # k = 2: s_k = 0.8, threshold 0.76 keeps 0.9, 0.8, 0.77, 0.761
        assert routing.support_set(sims, k=2, rag_thres=0.95).tolist() == [0, 2, 3, 5]

    def test_exact_ties_at_kth_are_kept(self):
        sims = np.array([0.6, 0.6, 0.6, 0.6, 0.1])
        assert routing.support_set(sims, k=2, rag_thres=1.0).tolist() == [0, 1, 2, 3]

    def test_rag_thres_one_keeps_exactly_k_without_ties(self):
        sims = np.array([0.4, 0.9, 0.7, 0.2])
        assert routing.support_set(sims, k=2, rag_thres=1.0).tolist() == [1, 2]

    def test_fewer_rows_than_k_is_the_whole_bank(self):
        sims = np.array([0.1, 0.3, 0.2])
        assert routing.support_set(sims, k=50).tolist() == [1, 2, 0]

    def test_negative_kth_similarity_keeps_at_least_k(self):
        sims = np.array([0.2, -0.1, -0.104, -0.5])
        # 0.95 * -0.1 = -0.095 would drop the k-th row itself; the threshold is s_k = -0.1
        assert routing.support_set(sims, k=2, rag_thres=0.95).tolist() == [0, 1]

    def test_rejects_bad_input(self):
        with pytest.raises(ValueError, match="one-dimensional"):
            routing.support_set(np.ones((2, 2)), k=1)
        with pytest.raises(ValueError, match="at least 1"):
            routing.support_set(np.ones(3), k=0)

    def test_empty_bank(self):
        assert routing.support_set(np.zeros(0), k=3).tolist() == []


class TestWeightedScores:
    def test_hand_computed(self):
        w = np.array([0.5, 1.0, 0.5])
        c = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        # model 0: (0.5 + 0 + 0.5) / 2 = 0.5 ; model 1: (0 + 1 + 0.5) / 2 = 0.75
        assert routing.weighted_model_scores(w, c) == pytest.approx([0.5, 0.75])

    def test_missing_is_not_wrong(self):
        w = np.array([1.0, 3.0])
        c = np.array([[1.0, 1.0], [NAN, 0.0]])
        # model 0 answered only row 0: its score is 1, not 0.25
        assert routing.weighted_model_scores(w, c) == pytest.approx([1.0, 0.25])

    def test_model_with_no_answer_in_support_set_is_nan(self):
        c = np.array([[1.0, NAN], [0.0, NAN]])
        out = routing.weighted_model_scores(np.array([0.7, 0.6]), c)
        assert out[0] == pytest.approx(0.7 / 1.3)
        assert math.isnan(out[1])

    def test_all_zero_scores(self):
        c = np.zeros((3, 2))
        assert routing.weighted_model_scores(np.ones(3), c).tolist() == [0.0, 0.0]

    def test_zero_and_negative_weights_fall_back_to_plain_mean(self):
        c = np.array([[1.0], [0.0], [0.0]])
        out = routing.weighted_model_scores(np.array([0.0, -0.2, 0.0]), c)
        assert out[0] == pytest.approx(1 / 3)

    def test_shape_mismatch(self):
        with pytest.raises(ValueError, match="do not match"):
            routing.weighted_model_scores(np.ones(2), np.ones((3, 2)))


def test_comprehensive_ability_skips_missing():
    c = np.array([[1.0, 0.0], [0.0, NAN], [1.0, 1.0]])
    assert routing.comprehensive_ability(c) == pytest.approx([2 / 3, 0.5])


def test_aggregator_scores_default_beta_is_half():
    g = np.array([0.9, 0.5])
    p = np.array([0.1, 0.7])
    assert routing.aggregator_scores(g, p) == pytest.approx([0.5, 0.6])
    assert routing.aggregator_scores(g, p, beta=0.0) == pytest.approx([0.1, 0.7])


class TestRankModels:
    def test_nan_and_ineligible_left_out_ties_by_order(self):
        s = np.array([0.5, NAN, 0.9, 0.5, 0.7])
        assert routing.rank_models(s).tolist() == [2, 4, 0, 3]
        eligible = np.array([True, True, False, True, True])
        assert routing.rank_models(s, eligible).tolist() == [4, 0, 3]

    def test_all_zero_keeps_model_order(self):
        assert routing.rank_models(np.zeros(3)).tolist() == [0, 1, 2]


class TestResponseSimilarity:
    def test_hand_computed(self):
        probes = np.array([[1.0, 0.0], [0.0, 1.0]])
        past = np.array(
            [
                [[1.0, 0.0], [0.6, 0.8]],  # row 0: 1.0 and 0.8 -> 0.9
                [[0.0, 1.0], [0.0, 1.0]],  # row 1: 0.0 and 1.0, second missing -> 0.0
                [[0.0, 1.0], [0.0, 1.0]],  # row 2: nothing present -> 0
            ]
        )
        present = np.array([[True, True], [True, False], [False, False]])
        assert routing.response_similarity(probes, past, present) == pytest.approx([0.9, 0.0, 0.0])

    def test_shape_check(self):
        with pytest.raises(ValueError, match="shapes disagree"):
            routing.response_similarity(np.ones((2, 3)), np.ones((4, 2, 2)), np.ones((4, 2)))


class TestLengthSimilarity:
    def test_hand_computed_order_two(self):
        now = np.array([10.0])
        past = np.array([[10.0], [20.0], [0.0]])
        # D = |100-100|, |400-100|, |0-100| = 0, 300, 100 ; max 300
        expected = [1.0, 1 - 300 / (300 + 1e-8), 1 - 100 / (300 + 1e-8)]
        assert routing.length_similarity(now, past, order=2) == pytest.approx(expected)

    def test_two_probes_and_missing_lengths(self):
        now = np.array([1.0, 2.0])
        past = np.array([[1.0, NAN], [3.0, 2.0]])
        # probe 0, order 1: D = 0, 2 -> sims 1, ~0 ; probe 1: D = -, 0 -> max 0 -> sim 1
        out = routing.length_similarity(now, past, order=1)
        assert out == pytest.approx([1.0, (0.0 + 1.0) / 2], abs=1e-7)

    def test_identical_lengths_are_fully_similar(self):
        out = routing.length_similarity(np.array([5.0]), np.array([[5.0], [5.0]]))
        assert out.tolist() == [1.0, 1.0]


def test_mixed_similarity_defaults_are_half_query_point_three_response():
    sq, sr, sl = np.array([1.0]), np.array([0.5]), np.array([0.25])
    # 0.5 * 1 + 0.3 * 0.5 + 0.2 * 0.25 = 0.7
    assert routing.mixed_similarity(sq, sr, sl) == pytest.approx([0.7])
    assert routing.mixed_similarity(sq, sr, sl, length_coef=0, query_coef=1) == pytest.approx([1])


class TestFilteredSet:
    def test_keeps_half_rounded_down(self):
        smix = np.array([0.1, 0.9, 0.5, 0.7, 0.3])
        assert routing.filtered_set(smix).tolist() == [1, 3]

    def test_at_least_one(self):
        assert routing.filtered_set(np.array([0.2]), subset_p=0.5).tolist() == [0]

    def test_empty(self):
        assert routing.filtered_set(np.zeros(0)).tolist() == []


class TestSwitch:
    # The paper's worked example: 0.8, 0.6, 0.5 -> relative 1, 0.75, 0.625
    scores = np.array([0.8, 0.6, 0.5])

    @pytest.mark.parametrize(
        ("threshold", "n"),
        [(0.5, 3), (0.625, 3), (0.626, 2), (0.7, 2), (0.75, 2), (0.7501, 1), (0.8, 1), (1.0, 1)],
    )
    def test_paper_example(self, threshold, n):
        assert routing.switch_count(self.scores, threshold) == n

    def test_default_threshold_routes_on_paper_example(self):
        assert DEFAULTS.switch_threshold == 0.8
        assert routing.switch_count(self.scores) == 1

    def test_no_candidates(self):
        assert routing.switch_count(np.zeros(0)) == 0

    def test_non_positive_best_routes(self):
        assert routing.switch_count(np.array([0.0, 0.0, 0.0])) == 1

    def test_nan_candidates_ignored(self):
        assert routing.switch_count(np.array([0.8, NAN, 0.7]), 0.8) == 2

    def test_threshold_out_of_range(self):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            routing.switch_count(self.scores, 0.0)
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            routing.switch_count(self.scores, 1.2)


class TestCutLength:
    def test_three_over_the_cut_become_two(self):
        assert routing.cut_to_length(3, [6000, 5000, 2001]) == 2

    def test_exactly_at_the_cut_keeps_three(self):
        assert routing.cut_to_length(3, [6000, 5000, 2000]) == 3

    def test_two_are_never_cut(self):
        assert routing.cut_to_length(2, [9000, 9000, 9000]) == 2

    def test_larger_k_drops_until_fit(self):
        assert routing.cut_to_length(5, [3000] * 5, cut_length=10000) == 3

    def test_n_larger_than_answers(self):
        with pytest.raises(ValueError, match="exceeds"):
            routing.cut_to_length(3, [1, 2])
