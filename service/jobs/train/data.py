"""Stepwise-supervision records -> token ids and separator labels, formatted exactly as the service does.

Records are TRL's stepwise supervision (`prompt`, `completions`, `labels`), what `prm filter consensus`
writes. The conversation goes through the service's own `PRMFormatter`, so a model is trained on the
very token sequences it is later served with. Only separator positions carry a label; the optional
auxiliary targets (next tokens, digit checks) cover the conversation up to each step labelled right, and
the digit check adds copies of records with one result's last digit replaced.
"""

import random
from dataclasses import dataclass

import torch

from service.jobs.inputs import InputError
from service.jobs.train.objective import IGNORE_INDEX
from service.prm.errors import InputTooLong, InvalidInput
from service.prm.formatting import EncodedItem, PRMFormatter, ScoringInput

DIGITS = set("0123456789")


class RecordError(InputError):
    """A record that is not stepwise supervision; the message names the record and field."""


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]  # 1 / 0 at separators, IGNORE_INDEX elsewhere
    lm_labels: list[int]  # the token itself where it belongs to a step labelled right, IGNORE_INDEX elsewhere
    check_labels: list[int]  # 1 in steps labelled right, 0 from a replaced digit to its separator, else IGNORE_INDEX


@dataclass
class Encoded:
    examples: list[Example]  # one per record that fits, then its digit-check copy if it has one
    too_long: int  # records longer than the model's maximum length, left out and reported
    digit_check_copies: int = 0


@dataclass(frozen=True)
class DigitVocab:
    """The token ids a digit check reads: the ten one-digit tokens, in id order, and every token with an `=`."""

    digits: tuple[int, ...]
    equals: frozenset[int]


@dataclass(frozen=True)
class Labelled:
    """One record, checked: what the formatter takes, and a label per step."""

    id: str
    item: ScoringInput
    labels: list[bool]


def parse_records(records: list[dict]) -> list[Labelled]:
    """Check every record's fields before anything is built from them; errors name the record and field."""
    return [_parse(record, index) for index, record in enumerate(records)]


def _parse(record: dict, index: int) -> Labelled:
    where = f"record {index} ({record.get('id', 'no id')})"
    prompt, completions, labels = record.get("prompt"), record.get("completions"), record.get("labels")
    if not isinstance(prompt, str):
        raise RecordError(f"{where}: `prompt` must be a string")
    if not isinstance(completions, list) or not all(isinstance(step, str) for step in completions):
        raise RecordError(f"{where}: `completions` must be a list of strings")
    if not isinstance(labels, list) or len(labels) != len(completions):
        raise RecordError(f"{where}: `labels` must be a list with one bool per completion")
    item = ScoringInput(problem=prompt, steps=completions, system=record.get("system"))
    return Labelled(str(record.get("id", index)), item, [bool(label) for label in labels])


def encode_records(
    records: list[Labelled], formatter: PRMFormatter, digit_check: float = 0.0, seed: int = 0
) -> Encoded:
    """One example per record that fits; with `digit_check`, that share of them also gives a copy with one
    result's last digit replaced (see `replace_result_digit`)."""
    rng = random.Random(seed)
    vocab = digit_vocab(formatter.tokenizer) if digit_check else None
    examples, too_long, copies = [], 0, 0
    for record in records:
        try:
            encoded = formatter.encode(record.item)
        except InputTooLong:
            too_long += 1
            continue
        except InvalidInput as error:
            raise RecordError(f"record {record.id}: {error}") from error
        spans = _step_spans(formatter, record, encoded, vocab is not None)
        example = _labelled(encoded.input_ids, spans, record.labels, vocab is not None)
        examples.append(example)
        if vocab is not None and rng.random() < digit_check:
            corrupted = replace_result_digit(example, spans, record.labels, vocab, rng)
            if corrupted is not None:
                examples.append(corrupted)
                copies += 1
    return Encoded(examples, too_long, copies)


def digit_vocab(tokenizer) -> DigitVocab:
    """All ten digits must be tokens of their own: a digit check replaces one token by another."""
    texts = [tokenizer.decode([token_id]) for token_id in range(len(tokenizer))]
    digits = tuple(token_id for token_id, text in enumerate(texts) if text in DIGITS)
    if {texts[token_id] for token_id in digits} != DIGITS:
        raise RecordError("--digit-check needs a tokenizer with one token for each digit")
    return DigitVocab(digits, frozenset(token_id for token_id, text in enumerate(texts) if "=" in text))


def _step_spans(
    formatter: PRMFormatter, record: Labelled, encoded: EncodedItem, find_first: bool
) -> list[tuple[int, int]]:
    """[start, separator] token positions of each step. With `find_first` the first step starts where its
    own tokens do, just before the first separator; else at 0."""
    first = 0
    if find_first:
        first_step = formatter.tokenizer(record.item.steps[0], add_special_tokens=False)["input_ids"]
        first = encoded.separator_positions[0] - len(first_step)
        if encoded.input_ids[first : encoded.separator_positions[0]] != first_step:
            raise RecordError(f"record {record.id}: its first step tokenises differently alone and after the prompt")
    starts = [first] + [position + 1 for position in encoded.separator_positions[:-1]]
    return list(zip(starts, encoded.separator_positions, strict=True))


def _labelled(input_ids: list[int], spans, labels: list[bool], check: bool) -> Example:
    """Separator labels; next-token targets over the conversation up to each step labelled right (the first
    step's take in the prompt), and with `check` a digit-check target of 1 on every token of those steps."""
    token_labels = [IGNORE_INDEX] * len(input_ids)
    lm_labels = [IGNORE_INDEX] * len(input_ids)
    check_labels = [IGNORE_INDEX] * len(input_ids)
    lm_start = 0
    for (start, separator), label in zip(spans, labels, strict=True):
        token_labels[separator] = int(label)
        if label:
            lm_labels[lm_start : separator + 1] = input_ids[lm_start : separator + 1]
            if check:
                check_labels[start:separator] = [1] * (separator - start)
        lm_start = separator + 1
    return Example(input_ids, token_labels, lm_labels, check_labels)


def replace_result_digit(
    example: Example, spans, labels: list[bool], vocab: DigitVocab, rng: random.Random
) -> Example | None:
    """ELECTRA's replaced-token detection, aimed where a wrong calculation writes: the last digit of one
    result (a number after an `=`) in a step before the first wrong one is replaced by another digit, which
    makes that step wrong. The copy's digit-check targets say 0 from the replaced digit to the step's
    separator, where the step is labelled wrong; its next-token targets end at the replaced digit (which
    they still give as the original), and nothing after the separator is in any loss. None when no step
    before the first wrong one has a result."""
    right_prefix = spans[: labels.index(False)] if False in labels else spans
    candidates = [
        (position, separator)
        for start, separator in right_prefix
        for position in range(start, separator)
        if _ends_a_result(example.input_ids, start, position, vocab)
    ]
    if not candidates:
        return None
    position, separator = rng.choice(candidates)
    original = example.input_ids[position]
    input_ids = list(example.input_ids)
    input_ids[position] = rng.choice([token for token in vocab.digits if token != original])
    token_labels = example.labels[: separator + 1] + [IGNORE_INDEX] * (len(input_ids) - separator - 1)
    token_labels[separator] = 0
    lm_labels = example.lm_labels[: position + 1] + [IGNORE_INDEX] * (len(input_ids) - position - 1)
    wrong_from_here = [0] * (separator - position) + [IGNORE_INDEX] * (len(input_ids) - separator)
    return Example(input_ids, token_labels, lm_labels, example.check_labels[:position] + wrong_from_here)


def _ends_a_result(input_ids: list[int], start: int, position: int, vocab: DigitVocab) -> bool:
    """Whether `position` holds the last digit of a number that follows an `=` of the step starting at `start`:
    the digit a wrong calculation changes (its errors are mostly small)."""
    return (
        input_ids[position] in vocab.digits
        and input_ids[position + 1] not in vocab.digits
        and any(token in vocab.equals for token in input_ids[start:position])
    )


class StepwiseDataset(torch.utils.data.Dataset):
    """Examples as the model's forward takes them; auxiliary targets only for the losses that are on."""

    def __init__(self, examples: list[Example], lm_loss: bool = False, digit_check: bool = False):
        self.examples = examples
        self.lm_loss = lm_loss
        self.digit_check = digit_check

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        item = {"input_ids": example.input_ids, "labels": example.labels}
        if self.lm_loss:
            item["lm_labels"] = example.lm_labels
        if self.digit_check:
            item["check_labels"] = example.check_labels
        return item


def collate(pad_token_id: int):
    """Right-pad a batch; padding is masked out of attention and of the losses."""

    def pad(batch: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(example["input_ids"]) for example in batch)
        padded = {"attention_mask": torch.zeros((len(batch), width), dtype=torch.long)}
        for key, fill in (
            ("input_ids", pad_token_id),
            ("labels", IGNORE_INDEX),
            ("lm_labels", IGNORE_INDEX),
            ("check_labels", IGNORE_INDEX),
        ):
            if key in batch[0]:
                padded[key] = torch.full((len(batch), width), fill, dtype=torch.long)
        for row, example in enumerate(batch):
            length = len(example["input_ids"])
            padded["attention_mask"][row, :length] = 1
            for key in padded.keys() - {"attention_mask"}:
                padded[key][row, :length] = torch.tensor(example[key])
        return padded

    return pad
