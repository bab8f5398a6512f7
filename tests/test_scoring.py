"""The scoring path in process: formatting, packed forward and batching against the model card."""

import pytest
import torch

from service.prm.errors import InputTooLong, InvalidInput
from service.prm.formatting import ScoringInput, split_steps
from service.prm.loading import load_prm
from service.prm.scorer import PackedScorer

TOLERANCE = 1e-5


def as_input(item: dict) -> ScoringInput:
    return ScoringInput(item["problem"], item["steps"])


def test_formatting_is_the_model_card_conversation(prm, reference):
    item = ScoringInput("What is 2+3*4?", ["3*4 = 12", "2+12 = 14"])
    text = prm.formatter.render(item)
    assert text == (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+3*4?<|im_end|>\n"
        "<|im_start|>assistant\n3*4 = 12<extra_0>2+12 = 14<extra_0><|im_end|>\n"
    )
    encoded = prm.formatter.encode(item)
    assert encoded.input_ids == reference.conversation(item.problem, item.steps)[0].tolist()
    assert [encoded.input_ids[p] for p in encoded.separator_positions] == [prm.formatter.separator_id] * 2


def test_custom_system_prompt_reaches_the_model(prm, reference):
    item = ScoringInput("What is 2+3*4?", ["3*4 = 12"], system="Be terse.")
    assert prm.formatter.render(item).startswith("<|im_start|>system\nBe terse.<|im_end|>\n")
    scores = PackedScorer(prm).score([prm.formatter.encode(item)]).scores[0]
    assert scores == pytest.approx(reference.step_rewards(item.problem, item.steps, "Be terse."), abs=TOLERANCE)


def test_packed_scores_equal_the_model_card(prm, reference, processbench_items):
    encoded = [prm.formatter.encode(as_input(item)) for item in processbench_items]
    scores = PackedScorer(prm).score(encoded).scores
    for item, item_scores in zip(processbench_items, scores, strict=True):
        expected = reference.step_rewards(item["problem"], item["steps"])
        assert len(item_scores) == len(item["steps"])
        assert item_scores == pytest.approx(expected, abs=TOLERANCE)
    # random weights must still give scores that differ, or the comparison above proves little
    flat = [s for item_scores in scores for s in item_scores]
    assert max(flat) - min(flat) > 0.1


def test_scores_do_not_depend_on_batch_composition(prm, processbench_items):
    encoded = [prm.formatter.encode(as_input(item)) for item in processbench_items]
    scorer = PackedScorer(prm)
    alone = [scorer.score([item]).scores[0] for item in encoded]
    together = scorer.score(encoded).scores
    reversed_batch = scorer.score(encoded[::-1]).scores[::-1]
    pairs = [scorer.score([encoded[i], encoded[-1 - i]]).scores[0] for i in range(len(encoded))]
    for a, b, c, d in zip(alone, together, reversed_batch, pairs, strict=True):
        assert b == pytest.approx(a, abs=TOLERANCE)
        assert c == pytest.approx(a, abs=TOLERANCE)
        assert d == pytest.approx(a, abs=TOLERANCE)


def test_bfloat16_backbone_keeps_a_float32_head(checkpoint, reference, processbench_items):
    prm = load_prm(str(checkpoint), device="cpu", dtype="bfloat16")
    assert prm.model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in prm.model.score.parameters())
    item = processbench_items[0]
    scores = PackedScorer(prm).score([prm.formatter.encode(as_input(item))]).scores[0]
    assert scores == pytest.approx(reference.step_rewards(item["problem"], item["steps"]), abs=0.05)


@pytest.mark.parametrize(
    ("item", "field"),
    [
        (ScoringInput("   ", ["a"]), "problem"),
        (ScoringInput("p", []), "steps"),
        (ScoringInput("p", ["fine", "bad <extra_0> step"]), "steps[1]"),
        (ScoringInput("p <extra_0>", ["a"]), "problem"),
        (ScoringInput("p", ["a"], system="<extra_0>"), "system"),
    ],
)
def test_unscorable_input_names_the_field(prm, item, field):
    with pytest.raises(InvalidInput) as error:
        prm.formatter.encode(item, "items[2]")
    assert error.value.field == f"items[2].{field}"


def test_too_long_input_is_refused_not_truncated(prm):
    with pytest.raises(InputTooLong) as error:
        prm.formatter.encode(ScoringInput("p", ["1 + " * 2000]))
    assert error.value.limit == 4096
    assert error.value.length > 4096
    assert f"{error.value.length} tokens" in str(error.value)


def test_split_steps_on_blank_lines():
    assert split_steps("a\n\n  b \n\n\n\nc\nd\n\n") == ["a", "b", "c\nd"]
    assert split_steps(" \n\n ") == []
