"""pass@k / maj@k / best-of-k estimators against hand-worked values, and step-level beam search on a toy
extender and scorer (plus once on a real tiny model through Hugging Face `generate`)."""

import math

import pytest

from rewards.arithmetic import process_score
from rl.metrics import best_of_k, maj_at_k, pass_at_k
from rl.tts import BeamParams, beam_search


def test_pass_at_k_hand_worked():
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)  # 1 - C(3,3)/C(5,3)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the mean
    assert pass_at_k(5, 0, 5) == 0.0 and pass_at_k(5, 3, 3) == 1.0  # n - c < k: always one correct
    # Against the definition: average over every k-subset.
    import itertools
    n, c, k = 7, 3, 3
    subsets = list(itertools.combinations(range(n), k))
    assert pass_at_k(n, c, k) == pytest.approx(sum(any(i < c for i in s) for s in subsets) / len(subsets))
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_maj_at_k_hand_worked():
    answers, correct = ["A", "A", "B", "C"], [True, True, False, False]
    assert maj_at_k(answers, correct, 1) == pytest.approx(0.5)
    # pairs: AA=1, AB/AC (x2 each) = 1/2 (tie), BC = 0 -> 3/6
    assert maj_at_k(answers, correct, 2) == pytest.approx(0.5)
    # triples: AAB=1, AAC=1, ABC=1/3, ABC=1/3 -> (2 + 2/3)/4
    assert maj_at_k(answers, correct, 3) == pytest.approx((2 + 2 / 3) / 4)
    assert maj_at_k(answers, correct, 4) == 1.0
    # Samples without an answer cast no vote.
    assert maj_at_k([None, None, "7"], [False, False, True], 2) == pytest.approx(2 / 3)


def test_weighted_majority_and_best_of_k():
    answers, correct, w = ["A", "B", "B"], [True, False, False], [0.9, 0.3, 0.4]
    assert maj_at_k(answers, correct, 3) == 0.0  # plain vote: B wins 2-1
    assert maj_at_k(answers, correct, 3, weights=w) == 1.0  # weighted: A 0.9 > B 0.7
    # best-of-2 over scores [0.9, 0.5, 0.1] with only the last two correct: only subset (1,2) wins.
    assert best_of_k([0.9, 0.5, 0.1], [False, True, True], 2) == pytest.approx(1 / 3)
    assert best_of_k([0.5, 0.5], [True, False], 2) == pytest.approx(0.5)  # tie: shared credit
    assert best_of_k([0.1, 0.2, 0.3], [True, False, False], 1) == pytest.approx(1 / 3)  # best-of-1 = mean


def test_estimates_fall_back_to_seeded_sampling_when_subsets_are_many():
    n = 30
    answers = ["A"] * 12 + ["B"] * 10 + [str(i) for i in range(8)]
    correct = [a == "A" for a in answers]
    assert math.comb(n, 8) > 2000
    a = maj_at_k(answers, correct, 8, max_subsets=500, seed=1)
    assert a == maj_at_k(answers, correct, 8, max_subsets=500, seed=1)
    exact_ish = maj_at_k(answers, correct, 8, max_subsets=20000, seed=2)
    assert abs(a - exact_ish) < 0.06


def _toy_extend(texts, n):
    # Each step appends one letter; a solution is complete after three letters.
    return [[(ch, 1, len(t.split("|", 1)[1]) + 1 >= 3) for ch in "ab"[:n]] for t in texts]


def _toy_score(prompts, partials):
    return [p.count("a") - p.count("b") for p in partials]


def test_beam_search_on_toy_scorer_keeps_the_best_and_counts_every_token():
    [res] = beam_search(["q|"], _toy_extend, _toy_score, BeamParams(width=2, expansions=2, max_rounds=5))
    assert (res.completion, res.score, res.finished) == ("aaa", 3.0, True)
    # round 1: 1 beam x 2, round 2: 2 x 2, round 3: 2 x 2 -> 10 tokens, pruned candidates included
    assert res.tokens == 10
    [greedy] = beam_search(["q|"], _toy_extend, _toy_score, BeamParams(width=1, expansions=2, max_rounds=5))
    assert greedy.completion == "aaa" and greedy.tokens == 6


def test_beam_search_needs_width_to_escape_a_trap():
    # The first step that looks best ("a") leads to a dead end; only a beam that keeps "b" finds "bcc".
    def extend(texts, n):
        out = []
        for t in texts:
            sol = t.split("|", 1)[1]
            nxt = {"": "ab", "a": "x", "b": "c", "bc": "c"}.get(sol, "x")
            out.append([(ch, 1, len(sol) + 1 >= 3 or ch == "x") for ch in nxt[:n]])
        return out

    def score(prompts, partials):
        return [{"a": 0.6, "b": 0.5}.get(p, 1.0 if p.startswith("bc") else 0.0) for p in partials]

    [narrow] = beam_search(["q|"], extend, score, BeamParams(width=1, expansions=2, max_rounds=4))
    [wide] = beam_search(["q|"], extend, score, BeamParams(width=2, expansions=2, max_rounds=4))
    assert narrow.completion == "ax" and narrow.score == 0.0
    assert wide.completion == "bcc" and wide.score == 1.0


def test_process_score_checks_steps_without_the_gold_answer():
    p = "Mia has 7 pens. She buys 5 more. Then she gives away 4. How many pens does Mia have now?\n"
    assert process_score("<think>7+5=12.", p) == 0.5
    assert process_score("<think>7+5=12. 12-4=8.</think><answer>8</answer>", p) == 1.0
    assert process_score("<think>7+5=13.", p) < 0  # a false step
    assert process_score("<think>7+5=12. 12-4=8.</think><answer>9</answer>", p) < 1.0  # answer off the chain
    assert process_score("<think>7+5=12. 12+4=16.</think><answer>16</answer>", p) == 1.0  # fooled: wrong op


def test_beam_search_with_a_real_tiny_model(tmp_path):
    from rl.modeling import build_tiny_model, train_tokenizer
    from rl.tts import hf_step_extender

    texts = ["Mia has 7 pens. She buys 5 more.\n<think>7+5=12.</think><answer>12</answer>"] * 20
    tok = train_tokenizer(texts, 300)
    tok.pad_token = "<pad>" if "<pad>" in tok.get_vocab() else tok.eos_token
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position=128,
                             seed=0)
    extend = hf_step_extender(model, tok, step_delimiters=["."], max_step_tokens=6, temperature=1.0)
    prompts = ["Mia has 7 pens. She buys 5 more.\n", "Tom has 3 pens. He buys 1 more.\n"]
    out = beam_search(prompts, extend, lambda ps, xs: [float(len(x)) for x in xs],
                      BeamParams(width=2, expansions=2, max_rounds=3))
    assert len(out) == 2
    for r in out:
        # At most 1x2 + 2x2 + 2x2 step samples of <= 6 tokens each (+1 for an EOS).
        assert 0 < r.tokens <= 10 * 7
        assert isinstance(r.completion, str)
