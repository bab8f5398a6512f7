"""Packed rows and shared prefixes: layout, and scores identical to scoring each item alone."""

import pytest
import torch

from service.prm.formatting import ScoringInput
from service.prm.packing import Segment, pack
from service.prm.scorer import PackedScorer

TOLERANCE = 1e-5


def test_unshared_items_lie_end_to_end_in_input_order(prm):
    first = prm.formatter.encode(ScoringInput("2+2?", ["4", "so 4"]))
    second = prm.formatter.encode(ScoringInput("1+1?", ["2"]))
    batch = pack([first, second], min_shared_prefix=0)
    n, m = len(first), len(second)
    assert batch.input_ids[0].tolist() == first.input_ids + second.input_ids
    assert batch.position_ids[0].tolist() == list(range(n)) + list(range(m))
    assert batch.segments == [Segment(0, n), Segment(n, n + m)]
    assert batch.cu_seqlens_q.tolist() == batch.cu_seqlens_k.tolist() == [0, n, n + m]
    assert batch.kv_index is None
    assert batch.separator_counts == [2, 1]
    assert batch.separator_index.tolist() == first.separator_positions + [n + p for p in second.separator_positions]
    assert batch.computed_tokens == batch.requested_tokens == n + m


def test_a_shared_prefix_is_laid_out_once(prm, processbench_items):
    problem = processbench_items[6]["problem"]
    items = [prm.formatter.encode(ScoringInput(problem, steps)) for steps in (["a", "b"], ["c"], ["a", "d"])]
    common = 0
    while all(item.input_ids[common] == items[0].input_ids[common] for item in items):
        common += 1
    assert common >= 64
    batch = pack(items, min_shared_prefix=64)
    prefix, *continuations = batch.segments
    assert prefix == Segment(0, common) or prefix.end - prefix.start >= common  # "a" shared by two items
    assert all(s.context == (prefix.start, prefix.end) for s in continuations)
    length = prefix.end
    assert batch.computed_tokens == batch.requested_tokens - 2 * length
    for segment in continuations:  # positions go on from the prefix
        assert batch.position_ids[0, segment.start].item() == length
    rows = batch.input_ids[0]
    counts = iter(batch.separator_counts)
    index = iter(batch.separator_index.tolist())
    for item in items:
        assert [rows[next(index)].item() for _ in range(next(counts))] == [prm.formatter.separator_id] * len(
            item.separator_positions
        )


def scores_three_ways(prm, items):
    scorer_input = [prm.formatter.encode(item) for item in items]
    scorer = PackedScorer(prm)
    alone = [scorer.score([item]).scores[0] for item in scorer_input]
    batch = pack(scorer_input)
    shared = scorer.score(scorer_input).scores
    return alone, shared, batch


def test_best_of_n_shape_scores_equal_unshared(prm, reference, processbench_items):
    """Eight candidate solutions of one problem: the problem is computed once."""
    problem = processbench_items[7]["problem"]
    candidates = [item["steps"] for item in processbench_items[:8]]
    alone, shared, batch = scores_three_ways(prm, [ScoringInput(problem, steps) for steps in candidates])
    assert batch.computed_tokens < batch.requested_tokens
    for steps, a, s in zip(candidates, alone, shared, strict=True):
        assert s == pytest.approx(a, abs=TOLERANCE)
        assert s == pytest.approx(reference.step_rewards(problem, steps), abs=TOLERANCE)


def test_step_search_shape_scores_equal_unshared(prm, reference, processbench_items):
    """Continuations of one partial solution: the separators inside the prefix are scored once, for all."""
    item = processbench_items[0]
    partial = item["steps"][:3]
    continuations = [[*partial, step] for step in ("x = 5", "so the total is 12", "7 * 3 = 21", "done")]
    alone, shared, batch = scores_three_ways(prm, [ScoringInput(item["problem"], steps) for steps in continuations])
    assert len([s for s in batch.segments if s.context]) == len(continuations)
    for steps, a, s in zip(continuations, alone, shared, strict=True):
        assert len(s) == 4
        assert s == pytest.approx(a, abs=TOLERANCE)
        assert s == pytest.approx(reference.step_rewards(item["problem"], steps), abs=TOLERANCE)


def test_mixed_batch_with_groups_and_singletons_in_any_order(prm, processbench_items):
    groups = [
        ScoringInput(processbench_items[i]["problem"], processbench_items[j]["steps"]) for i in (3, 8) for j in range(4)
    ]
    singles = [ScoringInput(item["problem"], item["steps"]) for item in processbench_items[9:]]
    items = groups[:2] + singles[:2] + groups[2:5] + singles[2:] + groups[5:]
    alone, shared, batch = scores_three_ways(prm, items)
    assert sum(1 for s in batch.segments if s.context) == 8
    for a, s in zip(alone, shared, strict=True):
        assert s == pytest.approx(a, abs=TOLERANCE)
    _, reversed_shared, _ = scores_three_ways(prm, items[::-1])
    for a, s in zip(alone[::-1], reversed_shared, strict=True):
        assert s == pytest.approx(a, abs=TOLERANCE)


def reference_varlen_attn(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k, *, scale, enable_gqa=False, **causal):
    """FlashAttention's documented varlen semantics, on the CPU: per sequence, causal aligned bottom-right."""
    import torch
    import torch.nn.functional as F

    outputs = []
    for i in range(len(cu_seq_q) - 1):
        qi = q[cu_seq_q[i] : cu_seq_q[i + 1]].transpose(0, 1)
        ki = k[cu_seq_k[i] : cu_seq_k[i + 1]].transpose(0, 1)
        vi = v[cu_seq_k[i] : cu_seq_k[i + 1]].transpose(0, 1)
        n, m = qi.shape[1], ki.shape[1]
        mask = torch.ones(n, m, dtype=torch.bool).tril(diagonal=m - n)
        outputs.append(F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, scale=scale, enable_gqa=enable_gqa))
    return torch.cat(outputs, dim=1).transpose(0, 1)


@pytest.mark.parametrize("gqa", [True, False])
def test_cuda_varlen_layout_matches_the_per_segment_path(prm, processbench_items, monkeypatch, gqa):
    """The CUDA branch's gathered keys and cumulative lengths, checked on the CPU against the kernel's semantics."""
    import torch

    from service.prm import attention

    monkeypatch.setattr(attention, "_varlen_attn", reference_varlen_attn)
    monkeypatch.setattr(attention, "_VARLEN_OPTIONS", {"enable_gqa": True} if gqa else {})
    monkeypatch.setattr(attention, "_VARLEN_GQA", gqa)
    problem = processbench_items[7]["problem"]
    items = [prm.formatter.encode(ScoringInput(problem, item["steps"])) for item in processbench_items[:5]]
    items.append(prm.formatter.encode(ScoringInput(processbench_items[8]["problem"], ["a"])))
    batch = pack(items)
    assert batch.kv_index is not None
    rows, heads, kv_heads, dim = batch.computed_tokens, 4, 2, 16
    torch.manual_seed(0)
    query = torch.randn(1, heads, rows, dim)
    key, value = torch.randn(1, kv_heads, rows, dim), torch.randn(1, kv_heads, rows, dim)
    expected = attention.packed_attention(0, query, key, value, 0.25, batch)
    got = attention._varlen(query, key, value, 0.25, batch)
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("cuda_layout", [False, True])
def test_the_separators_queries_alone_attend_as_in_the_whole_row(prm, processbench_items, monkeypatch, cuda_layout):
    """The last layer's attention (queries at the separators only) is the whole row's at those rows: with
    groups whose prefix holds separators several members share, singletons, and an item ending in one."""
    import torch

    from service.prm import attention

    monkeypatch.setattr(attention, "_varlen_attn", reference_varlen_attn)
    monkeypatch.setattr(attention, "_VARLEN_OPTIONS", {"enable_gqa": True})
    monkeypatch.setattr(attention, "_VARLEN_GQA", True)
    item = processbench_items[0]
    partial = item["steps"][:3]
    inputs = [ScoringInput(item["problem"], [*partial, step]) for step in ("x = 5", "so the total is 12")]
    inputs += [ScoringInput(x["problem"], x["steps"]) for x in processbench_items[3:6]]
    batch = pack([prm.formatter.encode(x) for x in inputs])
    assert batch.kv_index is not None and len(set(batch.separator_index.tolist())) < len(batch.separator_index)
    rows, heads, kv_heads, dim = batch.computed_tokens, 4, 2, 16
    torch.manual_seed(0)
    query = torch.randn(1, heads, rows, dim)
    key, value = torch.randn(1, kv_heads, rows, dim), torch.randn(1, kv_heads, rows, dim)
    whole = attention.packed_attention(0, query, key, value, 0.25, batch).index_select(1, batch.query_rows)
    separators = query.index_select(2, batch.query_rows)
    if cuda_layout:
        got = attention._varlen(separators, key, value, 0.25, batch, separators_only=True)
    else:
        got = attention.packed_attention(0, separators, key, value, 0.25, batch, separators_only=True)
    assert got.shape == whole.shape
    assert torch.allclose(got, whole, atol=1e-6)


def test_a_bucketed_row_pads_with_a_segment_of_its_own_and_scores_the_same(prm, processbench_items):
    """Padding to the matmuls' row buckets (service.prm.forward) changes no score and counts no token."""
    problem = processbench_items[7]["problem"]
    items = [prm.formatter.encode(ScoringInput(problem, item["steps"])) for item in processbench_items[:3]]
    items.append(prm.formatter.encode(ScoringInput(processbench_items[8]["problem"], ["a"])))
    plain = pack(items)
    padded = pack(items, bucket=lambda n: n + 37)
    assert padded.rows == plain.rows + 37 and padded.computed_tokens == plain.computed_tokens
    assert padded.segments[-1] == Segment(plain.rows, plain.rows + 37)
    assert len(padded.query_rows) == len(plain.query_rows) + 37
    assert torch.allclose(prm.forward(padded), prm.forward(plain), atol=1e-6)
