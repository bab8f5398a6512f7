"""Piecewise tokenisation (service.prm.pieces) gives exactly the tokenizer's ids on the whole text, remembers
pieces, and steps aside for tokenizers whose pieces are not independent."""

import copy
import json

import pytest
from tokenizers import AddedToken
from tokenizers.processors import TemplateProcessing
from transformers import AutoTokenizer

from service.prm.formatting import PRMFormatter, ScoringInput
from service.prm.pieces import _Pieces, conversation_tokenizer
from tests.helpers import FIXTURES

AWKWARD = [
    ScoringInput("Is <|im_start|>user a marker?", ["It is <|im_end|><|im_end|> here.", "No."]),
    ScoringInput("Caf\u0065\u0301 costs 3 \u20ac; 2 \U0001f34e?", ["  3 + 2 = 5  ", "Line one\r\nline two\n\n\tend"]),
    ScoringInput("x", ["<|endoftext|>", "<|im_start|>assistant\n", "1"], system=""),
    ScoringInput("What is 12*3?", ["12*3=36", "\\boxed{36}"], system="Be terse.<|im_end|>"),
]


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    return AutoTokenizer.from_pretrained(checkpoint)


def items() -> list[ScoringInput]:
    bench = json.loads((FIXTURES / "processbench_sample.json").read_text())
    walks = [ScoringInput(item["problem"], item["steps"][:k]) for item in bench for k in (1, len(item["steps"]))]
    return walks + AWKWARD


def test_piecewise_ids_are_the_tokenizers_on_the_whole_text(tokenizer):
    formatter = PRMFormatter(tokenizer, max_length=100_000)
    assert isinstance(formatter._tokenize, _Pieces)  # else this test would compare the tokenizer with itself
    for item in items():
        assert formatter._tokenize(formatter.render(item)) == tokenizer(formatter.render(item))["input_ids"], item


def test_pieces_seen_before_are_not_tokenised_again(tokenizer):
    formatter = PRMFormatter(tokenizer, max_length=100_000)
    steps = ["Add 4 and 5 to get 9.", "Double it: 18.", "The answer is 18."]
    formatter.encode(ScoringInput("What is 2(4 + 5)?", steps[:2]))
    before = formatter._tokenize._piece.cache_info()
    formatter.encode(ScoringInput("What is 2(4 + 5)?", steps))
    after = formatter._tokenize._piece.cache_info()
    assert after.misses - before.misses == 1  # the new step; the system prompt, problem and old steps are kept


@pytest.mark.parametrize("change", ["bos", "lstrip"])
def test_tokenizers_whose_pieces_depend_on_their_neighbours_run_whole(tokenizer, change):
    """A post-processor that adds a BOS, or an added token that swallows the spaces before it: the pieces are no
    longer independent, so the formatter tokenises the whole text, and its ids stay the tokenizer's."""
    changed = copy.deepcopy(tokenizer)
    backend = changed.backend_tokenizer
    if change == "bos":
        bos = changed.convert_tokens_to_ids("<|endoftext|>")
        backend.post_processor = TemplateProcessing(single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)])
    else:
        backend.add_special_tokens([AddedToken("<extra_0>", lstrip=True, normalized=False, special=True)])
    assert _Pieces.of(changed) is None
    formatter = PRMFormatter(changed, max_length=100_000)
    assert not isinstance(formatter._tokenize, _Pieces)
    item = ScoringInput("What is 1 + 1?", ["1 + 1 = 2 ", "The answer is 2."])
    assert formatter.encode(item).input_ids == changed(formatter.render(item))["input_ids"]


def test_a_sample_that_comes_out_differently_keeps_the_whole_text(tokenizer, monkeypatch):
    sample = "<|im_start|>user\nWhat is 1 + 1?<|im_end|>\n"
    assert isinstance(conversation_tokenizer(tokenizer, sample), _Pieces)
    monkeypatch.setattr(_Pieces, "__call__", lambda self, text: [])  # pieces that disagree with the whole text
    tokenize = conversation_tokenizer(tokenizer, sample)
    assert not isinstance(tokenize, _Pieces)
    assert tokenize(sample) == tokenizer(sample)["input_ids"]
