"""`prm train`: a tiny model learns, and its checkpoint scores the same in training code, in process and over HTTP."""

import json
import shutil

import httpx
import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from torch.nn.functional import cross_entropy
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from service.jobs.synth import synthesize
from service.jobs.train.backbone import ScratchShape
from service.jobs.train.data import RecordError, StepwiseDataset, collate, encode_records, parse_records
from service.jobs.train.objective import IGNORE_INDEX, Qwen2PRMForTraining
from service.jobs.train.run import TrainOptions, build_trainer, train_and_evaluate
from service.jobs.train.scratch import CHAT_TEMPLATE
from service.prm.formatting import STEP_SEPARATOR, PRMFormatter, ScoringInput
from service.prm.loading import load_prm
from service.prm.scorer import PackedScorer
from tests.checkpoints import SMOKE_TEST_CORPUS, build_random_causal_lm
from tests.helpers import Server, run_prm

TINY = ScratchShape(
    hidden_size=64, layers=2, heads=2, kv_heads=1, intermediate_size=128, vocab_size=400, max_length=512
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    data = synthesize(root / "synth", train=16, heldout=24, bon_problems=0, bon_n=1, seed=3)
    options = TrainOptions(
        base="scratch", data=[str(data["train"])], out=root / "prm", lr=3e-3, batch_size=16, max_steps=80,
        logging_steps=10, save_steps=40, warmup_ratio=0.0, scratch=TINY,
    )  # fmt: skip
    result = train_and_evaluate(options, [str(data["heldout"])])
    return result, data


def test_training_lowers_the_loss_and_writes_the_hub_layout(trained):
    result, data = trained
    assert result.examples == 16 and result.too_long == 0
    assert result.last_loss < 0.2 * result.first_loss  # 16 records: it learns them by heart
    out = result.out
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForProcessRewardModel"] and "auto_map" not in config
    weights = load_file(out / "model.safetensors")
    assert weights["score.0.weight"].shape == (64, 64) and weights["score.2.weight"].shape == (2, 64)
    assert not any(name.startswith("lm_head") for name in weights)
    manifest = json.loads((out / "prm.json").read_text())
    assert manifest["data"][0]["file"] == "train.jsonl" and len(manifest["data"][0]["sha256"]) == 64
    assert manifest["hyperparameters"]["lr"] == 3e-3 and manifest["training"]["examples"] == 16
    assert manifest["metrics"]["processbench"]["subsets"]["heldout"]["n"] == 24
    assert (out / "checkpoints" / "checkpoint-80").is_dir()  # resumable Trainer state, left out by publish


def test_the_trained_checkpoint_scores_identically_in_and_out_of_the_service(trained):
    result, data = trained
    items = [json.loads(line) for line in data["heldout"].read_text().splitlines()[:6]]
    inputs = [ScoringInput(problem=item["problem"], steps=item["steps"]) for item in items]

    prm = load_prm(str(result.out), device="cpu")
    served_in_process = PackedScorer(prm).score([prm.formatter.encode(item) for item in inputs]).scores

    # the training code's own forward (padded, sdpa), one conversation at a time
    model = Qwen2PRMForTraining.from_pretrained(result.out, dtype=torch.float32).eval()
    for encoded, scores in zip((prm.formatter.encode(item) for item in inputs), served_in_process, strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([encoded.input_ids])).logits[0, encoded.separator_positions]
        assert scores == pytest.approx(torch.softmax(logits, -1)[:, 1].tolist(), abs=1e-5)

    server = Server("--model", str(result.out)).wait_ready()
    try:
        body = {"items": [{"problem": item.problem, "steps": item.steps} for item in inputs]}
        response = httpx.post(f"{server.url}/score_steps", json=body, timeout=30).json()
    finally:
        server.stop()
    for over_http, in_process in zip(response["results"], served_in_process, strict=True):
        assert over_http["step_scores"] == pytest.approx(in_process, abs=1e-6)


def test_a_causal_lm_keeps_its_backbone_and_gets_a_prm_head(tmp_path, trained):
    _, data = trained
    corpus = SMOKE_TEST_CORPUS + [data["train"].read_text()[:4000]]
    base = build_random_causal_lm(tmp_path / "policy", corpus, step_separator=False)  # like Qwen2.5-Math-Instruct
    out = tmp_path / "prm"
    result = run_prm("train", "--base", str(base), "--data", str(data["train"]), "--out", str(out), "--max-steps", "2",
                     "--lr", "1e-6", "--batch-size", "4")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "trained on 16 records" in result.stdout
    before, after = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
    name = "model.embed_tokens.weight"
    assert torch.allclose(before[name], after[name], atol=1e-4)  # the backbone came along, barely moved
    assert "lm_head.weight" not in after and "score.2.weight" in after
    prm = load_prm(str(out), device="cpu")  # the service takes it, with the separator added as one token
    separator = prm.formatter.separator_id
    assert separator >= len(AutoTokenizer.from_pretrained(base)) and separator < after[name].shape[0]
    encoded = prm.formatter.encode(ScoringInput(problem="p", steps=["a", "b"]))
    assert len(PackedScorer(prm).score([encoded]).scores[0]) == 2


def test_continuing_a_prm_keeps_its_manifest_in_the_new_one(tmp_path, trained):
    result, data = trained
    options = TrainOptions(base=str(result.out), data=[str(data["train"])], out=tmp_path / "prm", lr=1e-4,
                           batch_size=8, max_steps=2, digit_check=0.5)  # fmt: skip
    train_and_evaluate(options, [])
    manifest = json.loads((options.out / "prm.json").read_text())
    assert manifest["base"] == str(result.out) and manifest["hyperparameters"]["digit_check"] == 0.5
    assert manifest["base_manifest"] == json.loads((result.out / "prm.json").read_text())
    assert manifest["base_manifest"]["base"] == "scratch" and "base_manifest" not in manifest["base_manifest"]


def test_a_base_with_a_broken_manifest_is_refused_before_training(tmp_path, trained):
    result, data = trained
    base = tmp_path / "base"
    shutil.copytree(result.out, base, ignore=shutil.ignore_patterns("checkpoints"))
    (base / "prm.json").write_text("{not json")
    out = tmp_path / "out"
    refused = run_prm("train", "--base", str(base), "--data", str(data["train"]), "--out", str(out))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith(f"error: {base / 'prm.json'}: not valid JSON (")
    assert refused.stderr.rstrip().endswith("fix or remove it to continue this PRM")
    assert not out.exists()  # nothing trained


def test_a_bad_record_stops_training_with_one_line_naming_it(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"id": "ok", "prompt": "p", "completions": ["a"], "labels": [true]}\n'
                    '{"id": "x7", "prompt": "p", "completions": ["a", "b"], "labels": [true]}\n')  # fmt: skip
    result = run_prm("train", "--base", "scratch", "--data", str(data), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip() == "error: record 1 (x7): `labels` must be a list with one bool per completion"


def test_rerunning_resumes_from_the_newest_checkpoint(tmp_path, trained):
    _, data = trained
    options = TrainOptions(base="scratch", data=[str(data["train"])], out=tmp_path / "prm", lr=3e-3, batch_size=8,
                           max_steps=4, logging_steps=1, save_steps=2, scratch=TINY)  # fmt: skip
    train_and_evaluate(options, [])
    # mark the saved state: only a run that resumes from checkpoint-4 carries the mark on
    saved = options.out / "checkpoints" / "checkpoint-4" / "trainer_state.json"
    state = json.loads(saved.read_text())
    state["log_history"][0]["loss"] = 123.0
    saved.write_text(json.dumps(state))
    options.max_steps = 6  # as if the first command had been cut short at step 4
    second = train_and_evaluate(options, [])
    state = json.loads((options.out / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3, 4, 5, 6]
    assert second.first_loss == 123.0


def test_an_unknown_learning_rate_schedule_is_refused_in_one_line(tmp_path, trained):
    _, data = trained
    result = run_prm("train", "--base", "scratch", "--data", str(data["train"]), "--out", str(tmp_path / "out"),
                     "--lr-scheduler", "sometimes")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("error: --lr-scheduler 'sometimes' is not one of linear, cosine,")
    assert result.stderr.count("\n") == 1


def test_the_auxiliary_lm_targets_cover_the_conversation_up_to_each_right_step(trained):
    prm = load_prm(str(trained[0].out), device="cpu")
    record = {"id": "r", "prompt": "Ava has 3 coins.", "completions": ["3 + 1 = 4.", "4 - 9 = 2.", "It is 4."],
              "labels": [True, False, True]}  # fmt: skip
    [example] = encode_records(parse_records([record]), prm.formatter).examples
    encoded = prm.formatter.encode(ScoringInput(record["prompt"], record["completions"]))
    first, second, third = encoded.separator_positions
    ids, targets = example.input_ids, example.lm_labels
    assert targets[: first + 1] == ids[: first + 1]  # system prompt, problem and the first step
    assert set(targets[first + 1 : second + 1]) == {IGNORE_INDEX}  # the wrong step is not a model to imitate
    assert targets[second + 1 : third + 1] == ids[second + 1 : third + 1]
    assert set(targets[third + 1 :]) == {IGNORE_INDEX}  # the end of the conversation after the last step


def test_the_lm_loss_teaches_next_tokens_and_saves_nothing_extra(tmp_path, trained):
    plain, data = trained
    options = TrainOptions(
        base="scratch", data=[str(data["train"])], out=tmp_path / "prm", lr=3e-3, batch_size=16, max_steps=80,
        logging_steps=10, save_steps=80, warmup_ratio=0.0, lm_loss=True, scratch=TINY,
    )  # fmt: skip
    with_lm = train_and_evaluate(options, [])
    shapes = [  # the same tensors: the auxiliary loss adds no weights
        {name: t.shape for name, t in load_file(run.out / "model.safetensors").items()} for run in (with_lm, plain)
    ]
    assert shapes[0] == shapes[1]
    assert json.loads((with_lm.out / "prm.json").read_text())["hyperparameters"]["lm_loss"] is True

    def next_token_accuracy(out):
        prm, model = load_prm(str(out), device="cpu"), Qwen2PRMForTraining.from_pretrained(out).eval()
        records = parse_records([json.loads(line) for line in data["train"].read_text().splitlines()])
        hits = total = 0
        for example in encode_records(records, prm.formatter).examples:
            with torch.no_grad():
                predicted = model.next_token_logits(torch.tensor([example.input_ids]))[0, :-1].argmax(-1)
            targets = torch.tensor(example.lm_labels[1:])
            hits += (predicted == targets)[targets != IGNORE_INDEX].sum().item()
            total += (targets != IGNORE_INDEX).sum().item()
        return hits / total

    learned, untaught = next_token_accuracy(with_lm.out), next_token_accuracy(plain.out)
    assert learned > 0.45 and untaught < 0.1, (learned, untaught)


def test_the_lm_loss_averages_over_accumulated_micro_batches_like_one_batch(trained):
    result, data = trained
    prm = load_prm(str(result.out), device="cpu")
    model = Qwen2PRMForTraining.from_pretrained(result.out).eval()
    records = parse_records([json.loads(line) for line in data["train"].read_text().splitlines()[:2]])
    examples = encode_records(records, prm.formatter).examples
    dataset, pad = StepwiseDataset(examples, lm_loss=True), collate(prm.formatter.tokenizer.pad_token_id)
    micro_batch = pad([dataset[0], dataset[1]])
    separators = (micro_batch["labels"] != IGNORE_INDEX).sum()
    with torch.no_grad():
        one_batch = model(**pad([dataset[0], dataset[1], dataset[0], dataset[1]])).loss
        # the Trainer's gradient accumulation: two micro-batches, each told the separators of both
        accumulated = 2 * model(**micro_batch, num_items_in_batch=2 * separators).loss
        without_lm = model(**pad([{"input_ids": e.input_ids, "labels": e.labels} for e in examples])).loss
        targets = torch.cat([torch.tensor(e.lm_labels[1:]) for e in examples])
        logits = torch.cat([model.next_token_logits(torch.tensor([e.input_ids]))[0, :-1] for e in examples])
        next_token_loss = cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
    assert accumulated.item() == pytest.approx(one_batch.item(), rel=1e-5)
    assert one_batch.item() > without_lm.item() + 1.0  # the next-token loss is really in it
    # and it is the loss of what next_token_logits (the probe's readout) predicts
    assert one_batch.item() - without_lm.item() == pytest.approx(next_token_loss.item(), rel=1e-4)


def test_grouping_by_length_batches_with_less_padding(tmp_path):
    data = synthesize(tmp_path / "synth", train=96, heldout=0, bon_problems=0, bon_n=1, seed=5)

    def padding_share(group_by_length: bool) -> float:
        options = TrainOptions(
            base="scratch", data=[str(data["train"])], out=tmp_path / str(group_by_length), batch_size=8,
            group_by_length=group_by_length, scratch=TINY,
        )  # fmt: skip
        trainer, _, _ = build_trainer(options)
        batches = list(trainer.get_train_dataloader())
        assert sum(len(batch["input_ids"]) for batch in batches) == 96  # every record, once
        masks = [batch["attention_mask"] for batch in batches]
        return 1 - sum(int(mask.sum()) for mask in masks) / sum(mask.numel() for mask in masks)

    grouped, shuffled = padding_share(True), padding_share(False)
    assert shuffled > 0.1 and grouped < shuffled / 2


def test_a_digit_check_copy_replaces_the_last_digit_of_a_result_in_a_step_before_the_first_wrong_one(trained):
    prm = load_prm(str(trained[0].out), device="cpu")
    record = {"id": "r", "prompt": "Ava has 3 coins.", "completions": ["3 + 12 = 15 coins.", "15 x 2 = 30.",
              "30 - 9 = 2.", "It is 2."], "labels": [True, True, False, False]}  # fmt: skip
    separators = prm.formatter.encode(ScoringInput(record["prompt"], record["completions"])).separator_positions
    first_step = len(prm.formatter.tokenizer(record["completions"][0], add_special_tokens=False)["input_ids"])
    right_steps = [range(separators[0] - first_step, separators[0]), range(separators[0] + 1, separators[1])]
    replaced_at = set()
    for seed in range(30):
        encoded = encode_records(parse_records([record]), prm.formatter, digit_check=1.0, seed=seed)
        assert encoded.digit_check_copies == 1
        original, copy = encoded.examples
        ids, decode = original.input_ids, prm.formatter.tokenizer.decode
        assert decode(ids[right_steps[0].start : separators[0]]) == "3 + 12 = 15 coins."  # the step alone, no prompt
        checked = [p for p, label in enumerate(original.check_labels) if label != IGNORE_INDEX]
        assert checked == [*right_steps[0], *right_steps[1]] and set(original.check_labels) == {1, IGNORE_INDEX}
        results_last_digits = {
            p for step, digit in zip(right_steps, "50", strict=True) for p in step if decode(ids[p]) == digit
        }
        [position] = [p for p, (a, b) in enumerate(zip(ids, copy.input_ids, strict=True)) if a != b]
        assert position in results_last_digits and decode(copy.input_ids[position]).isdigit()
        replaced_at.add(position)
        separator = next(s for s in separators if s > position)
        assert copy.labels[:separator] == original.labels[:separator] and copy.labels[separator] == 0  # now wrong
        assert set(copy.labels[separator + 1 :]) == {IGNORE_INDEX}
        assert copy.check_labels[:position] == original.check_labels[:position]
        assert copy.check_labels[position:separator] == [0] * (separator - position)  # wrong from the digit on
        assert copy.lm_labels[: position + 1] == original.lm_labels[: position + 1]  # it still predicts the original
        assert set(copy.check_labels[separator:]) == set(copy.lm_labels[position + 1 :]) == {IGNORE_INDEX}
    assert len(results_last_digits) == 2 and replaced_at == results_last_digits
    assert len(encode_records(parse_records([record]), prm.formatter).examples) == 1


def test_the_digit_check_loss_is_the_score_head_at_every_checked_token(trained):
    result, data = trained
    prm = load_prm(str(result.out), device="cpu")
    model = Qwen2PRMForTraining.from_pretrained(result.out).eval()
    records = parse_records([json.loads(line) for line in data["train"].read_text().splitlines()[:3]])
    examples = encode_records(records, prm.formatter, digit_check=1.0).examples
    pad = collate(prm.formatter.tokenizer.pad_token_id)
    with_check = pad([StepwiseDataset(examples, digit_check=True)[index] for index in range(len(examples))])
    without_check = {key: value for key, value in with_check.items() if key != "check_labels"}
    assert [0 in example.check_labels for example in examples] == [False, True] * len(records)  # copies only
    with torch.no_grad():
        both, separators_only = model(**with_check).loss, model(**without_check).loss
        check_logits = torch.cat([model(torch.tensor([e.input_ids])).logits[0] for e in examples])
        targets = torch.cat([torch.tensor(e.check_labels) for e in examples])
        check_loss = cross_entropy(check_logits, targets, ignore_index=IGNORE_INDEX)
    assert both.item() - separators_only.item() == pytest.approx(check_loss.item(), rel=1e-4)


def word_level_formatter(words: list[str], pre_tokenizer) -> PRMFormatter:
    """A ChatML formatter over a word-level tokenizer: the shapes of tokenizer a digit check cannot read."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", STEP_SEPARATOR]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *specials, *words])}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizer
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", STEP_SEPARATOR], chat_template=CHAT_TEMPLATE,
    )  # fmt: skip
    return PRMFormatter(tokenizer, max_length=512)


RIGHT_SUM = {"id": "s1", "prompt": "Add 3 and 12 .", "completions": ["3 + 12 = 15"], "labels": [True]}


def test_the_digit_check_refuses_a_tokenizer_without_one_token_per_digit():
    formatter = word_level_formatter(["3", "12", "15", "+", "="], pre_tokenizers.WhitespaceSplit())
    records = parse_records([RIGHT_SUM])
    assert len(encode_records(records, formatter).examples) == 1  # without the check it trains
    with pytest.raises(RecordError, match=r"^--digit-check needs a tokenizer with one token for each digit$"):
        encode_records(records, formatter, digit_check=0.5)


def test_the_digit_check_refuses_a_first_step_that_tokenises_differently_after_the_prompt():
    # "\n" joins the word after it, so the first step's first word reads differently after "assistant\n".
    glue_newlines = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(" ", "removed"), pre_tokenizers.Split("\n", "merged_with_next")]
    )
    formatter = word_level_formatter([*"0123456789", "12", "15", "+", "="], glue_newlines)
    with pytest.raises(RecordError, match=r"^record s1: its first step tokenises differently alone and after"):
        encode_records(parse_records([RIGHT_SUM]), formatter, digit_check=0.5)
