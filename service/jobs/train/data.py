"""Stepwise-supervision records -> token ids and separator labels, formatted exactly as the service does.

Records are TRL's stepwise supervision (`prompt`, `completions`, `labels`), what `prm filter consensus`
writes. The conversation goes through the service's own `PRMFormatter`, so a model is trained on the
very token sequences it is later served with. Only separator positions carry a label; the optional
auxiliary language-modelling targets cover the conversation up to each step labelled right.
"""

from dataclasses import dataclass

import torch

from service.prm.errors import InputTooLong, InvalidInput
from service.prm.formatting import PRMFormatter, ScoringInput
from service.prm.model import IGNORE_INDEX


class RecordError(ValueError):
    """A record that is not stepwise supervision; the message names the record and field."""


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]  # 1 / 0 at separators, IGNORE_INDEX elsewhere
    lm_labels: list[int]  # the token itself where it belongs to a step labelled right, IGNORE_INDEX elsewhere


@dataclass
class Encoded:
    examples: list[Example]
    too_long: int  # records longer than the model's maximum length, left out and reported


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


def encode_records(records: list[Labelled], formatter: PRMFormatter) -> Encoded:
    examples, too_long = [], 0
    for record in records:
        try:
            encoded = formatter.encode(record.item)
        except InputTooLong:
            too_long += 1
            continue
        except InvalidInput as error:
            raise RecordError(f"record {record.id}: {error}") from error
        token_labels = [IGNORE_INDEX] * len(encoded.input_ids)
        lm_labels = [IGNORE_INDEX] * len(encoded.input_ids)
        step_start = 0  # the first step's span takes in the system prompt and the problem
        for position, label in zip(encoded.separator_positions, record.labels, strict=True):
            token_labels[position] = int(label)
            if label:
                lm_labels[step_start : position + 1] = encoded.input_ids[step_start : position + 1]
            step_start = position + 1
        examples.append(Example(encoded.input_ids, token_labels, lm_labels))
    return Encoded(examples, too_long)


class StepwiseDataset(torch.utils.data.Dataset):
    """Examples as the model's forward takes them; `lm_labels` only when the auxiliary loss is on."""

    def __init__(self, examples: list[Example], lm_loss: bool = False):
        self.examples = examples
        self.lm_loss = lm_loss

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        item = {"input_ids": example.input_ids, "labels": example.labels}
        if self.lm_loss:
            item["lm_labels"] = example.lm_labels
        return item


def collate(pad_token_id: int):
    """Right-pad a batch; padding is masked out of attention and of the losses."""

    def pad(batch: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(example["input_ids"]) for example in batch)
        padded = {"attention_mask": torch.zeros((len(batch), width), dtype=torch.long)}
        for key, fill in (("input_ids", pad_token_id), ("labels", IGNORE_INDEX), ("lm_labels", IGNORE_INDEX)):
            if key in batch[0]:
                padded[key] = torch.full((len(batch), width), fill, dtype=torch.long)
        for row, example in enumerate(batch):
            length = len(example["input_ids"])
            padded["attention_mask"][row, :length] = 1
            for key in padded.keys() - {"attention_mask"}:
                padded[key][row, :length] = torch.tensor(example[key])
        return padded

    return pad
