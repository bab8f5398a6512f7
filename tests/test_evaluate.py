"""`prm eval`: metrics against hand-computed values, and both commands end to end on the tiny checkpoint."""

import json
from pathlib import Path

import pytest

from service.jobs.evaluate import bon, processbench
from tests.helpers import FIXTURES, run_prm

# Scores and labels chosen so that every metric can be worked out on paper (see each assert).
PB_ITEMS = [
    {"id": "a", "label": -1, "final_answer_correct": True},
    {"id": "b", "label": -1, "final_answer_correct": True},
    {"id": "c", "label": 1, "final_answer_correct": False},
    {"id": "d", "label": 0, "final_answer_correct": False},
    {"id": "e", "label": 2, "final_answer_correct": True},
]
PB_SCORES = [[0.9, 0.8], [0.9, 0.3], [0.9, 0.2, 0.1], [0.6, 0.4], [0.7, 0.8, 0.9]]


def test_processbench_metrics_by_hand():
    predictions = [processbench.first_below(scores, 0.5) for scores in PB_SCORES]
    assert predictions == [-1, 1, 1, 1, -1]
    metrics = processbench.subset_metrics(PB_ITEMS, predictions)
    # erroneous c, d, e: only c is named exactly (1/3); correct a, b: only a passes (1/2)
    assert metrics["n"] == 5
    assert metrics["acc_error"] == pytest.approx(100 / 3)
    assert metrics["acc_correct"] == pytest.approx(50.0)
    assert metrics["f1"] == pytest.approx(40.0)  # 2 * 33.3 * 50 / 83.3
    assert metrics["flawed_correct_answer_detection"] == 0.0  # e has a right answer and is not flagged

    # at 0.65, d's first step (0.6) is caught too: 2/3 and 1/2 -> F1 400/7
    report = processbench.report({"s": PB_ITEMS, "t": PB_ITEMS[:2]}, {"s": PB_SCORES, "t": PB_SCORES[:2]}, 0.65, None)
    assert report["subsets"]["s"]["f1"] == pytest.approx(400 / 7)
    assert report["subsets"]["t"]["acc_error"] is None and report["subsets"]["t"]["f1"] is None
    assert report["avg_f1"] == pytest.approx(400 / 7)  # subsets without an F1 do not count


def test_threshold_search_picks_the_best_f1_nearest_one_half():
    # F1 is 400/7 for every threshold in (0.60, 0.80]; below 0.6 d is missed, above 0.8 a is flagged
    assert processbench.search_threshold(PB_ITEMS, PB_SCORES) == 0.61


def test_best_of_n_metrics_by_hand():
    def group(problem_id, answers, flags):
        return bon.Group(problem_id, "p", [bon.Candidate(["s"], a, f) for a, f in zip(answers, flags, strict=True)])

    groups = [group("1", ["5", "4", "4"], [False, True, True]), group("2", ["1", "2", "3"], [True, False, False])]
    scores = [
        [[0.9, 0.9], [0.95, 0.5], [0.6, 0.99]],  # product/min/mean pick the wrong c0; last picks c2 (right)
        [[0.2], [0.3, 0.9], [0.1, 0.8, 0.7]],  # every aggregation picks c1 (wrong)
    ]
    report = bon.report(groups, scores)
    assert report["prm"] == {"product": 0.0, "min": 0.0, "last": 50.0, "mean": 0.0}
    assert report["maj"] == 100.0  # "4" wins group 1; a 1-1-1 tie goes to the first answer, "1", in group 2
    assert (report["pass"], report["pass@1"]) == (100.0, 50.0)
    assert report["min_at_last_step"] == 20.0  # of the 5 multi-step responses only [0.95, 0.5] ends at its minimum
    assert (report["n"], report["problems"]) == (3, 2)


def test_best_of_n_reads_the_test_bed_and_generate_output(tmp_path):
    groups = bon.load_groups(str(FIXTURES / "bon_sample.jsonl"))
    assert [len(group.candidates) for group in groups] == [8, 8, 8]
    record = json.loads((FIXTURES / "bon_sample.jsonl").read_text().splitlines()[0])
    assert [c.correct for c in groups[0].candidates] == record["score"]
    assert groups[0].candidates[0].steps == [p.strip() for p in record["code"][0].split("\n\n") if p.strip()]

    responses = tmp_path / "responses.jsonl"
    rows = [
        {"id": f"q{q}/{i}", "problem_id": f"q{q}", "problem": f"problem {q}", "answer": "1", "steps": ["a", "b"],
         "final_answer": str(i % 2), "correct": i % 2 == 1, "policy": "p"}
        for q in range(2) for i in range(4)
    ]  # fmt: skip
    responses.write_text("".join(json.dumps(row) + "\n" for row in rows))
    groups = bon.load_groups(str(responses))
    assert [(g.problem_id, len(g.candidates)) for g in groups] == [("q0", 4), ("q1", 4)]
    assert [c.correct for c in groups[1].candidates] == [False, True, False, True]


def test_eval_processbench_end_to_end_scores_like_the_model_card(checkpoint, reference, tmp_path):
    out, predictions = tmp_path / "report.json", tmp_path / "predictions.jsonl"
    data = FIXTURES / "processbench_sample.json"
    result = run_prm(
        "eval", "processbench", "--model", str(checkpoint), "--data", str(data), "--out", str(out),
        "--predictions", str(predictions), "--search-threshold", "processbench_sample", "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    items = {item["id"]: item for item in json.loads(data.read_text())}
    assert len(lines) == len(items) == report["subsets"]["processbench_sample"]["n"]
    for line in lines:
        item = items[line["id"]]
        assert line["step_scores"] == pytest.approx(reference.step_rewards(item["problem"], item["steps"]), abs=1e-5)
        assert line["prediction"] == processbench.first_below(line["step_scores"], report["threshold"])
    recomputed = processbench.subset_metrics([items[line["id"]] for line in lines], [x["prediction"] for x in lines])
    faulty = [(line["label"], line["step_scores"]) for line in lines if line["label"] != -1]
    caught = [scores[label] < report["threshold"] and all(scores[label] < s for s in scores[:label])
              for label, scores in faulty]  # fmt: skip
    exact = {}
    for line in lines:
        exact.setdefault(items[line["id"]]["generator"], []).append(line["prediction"] == line["label"])
    recomputed["error_caught"] = 100 * sum(caught) / len(caught)
    recomputed["by_generator"] = {kind: 100 * sum(hits) / len(hits) for kind, hits in sorted(exact.items())}
    assert report["subsets"]["processbench_sample"] == recomputed
    assert report["threshold_searched_on"] == "processbench_sample" and report["avg_f1"] == recomputed["f1"]
    assert "processbench_sample: n 12" in result.stdout


def test_eval_bon_end_to_end_writes_report_and_plots(checkpoint, reference, tmp_path):
    out = tmp_path / "bon.json"
    result = run_prm("eval", "bon", "--model", str(checkpoint), "--data", str(FIXTURES / "bon_sample.jsonl"),
                     "--out", str(out), "--device", "cpu")  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    groups = bon.load_groups(str(FIXTURES / "bon_sample.jsonl"))
    scores = [[reference.step_rewards(g.problem, c.steps) for c in g.candidates] for g in groups]
    expected = bon.report(groups, scores)
    for key in ("n", "problems", "maj", "pass", "pass@1"):
        assert report[key] == expected[key]
    assert report["prm"] == pytest.approx(expected["prm"])  # the same picks as the model card's scores give
    for plot in report["plots"]:
        assert Path(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_unknown_threshold_subset_is_refused_before_loading_anything(tmp_path):
    data = str(FIXTURES / "processbench_sample.json")
    out = str(tmp_path / "r.json")
    result = run_prm("eval", "processbench", "--model", str(tmp_path), "--data", data, "--out", out,
                     "--search-threshold", "gsm8k")  # fmt: skip
    assert result.returncode == 2
    assert "'gsm8k' is not a subset (subsets: processbench_sample)" in result.stderr
