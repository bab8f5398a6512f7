"""The prefix cache across requests: scores equal the uncached ones whatever the order, interleaving and
evictions; entries in use survive; a reload never serves the old model's keys; a size that cannot fit is
refused."""

import random
import threading

import httpx
import pytest
import torch

from service.engine import Engine
from service.metrics import Metrics
from service.prm.formatting import ScoringInput
from service.prm.forward import PackedForward
from service.prm.prefix_cache import PrefixCache
from service.prm.scorer import PackedScorer
from tests.checkpoints import build_random_checkpoint
from tests.helpers import Server, run_prm, tokenizer_corpus
from tests.model_card import ModelCardPRM

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def walks(processbench_items) -> list[ScoringInput]:
    """Step-level search as a search loop sends it: each solution's steps[:1], steps[:2], ..."""
    return [
        ScoringInput(item["problem"], item["steps"][:k])
        for item in processbench_items[:6]
        for k in range(1, len(item["steps"]) + 1)
    ]


def cache_for(prm, megabytes: float = 64, metrics: Metrics | None = None) -> PrefixCache:
    return PrefixCache(int(megabytes * 2**20), prm.formatter.boundary_ids, 64, metrics)


def assert_same_scores(got: list[list[float]], want: list[list[float]]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a == pytest.approx(b, abs=TOLERANCE)


def test_walks_score_as_without_the_cache_in_any_order_and_batching(prm, walks):
    encoded = [prm.formatter.encode(walk) for walk in walks]
    reference = PackedScorer(prm).score(encoded).scores
    cached = PackedScorer(prm, cache=cache_for(prm))
    rng, reused = random.Random(0), 0
    for round_ in range(4):
        order = list(range(len(encoded))) if round_ == 0 else rng.sample(range(len(encoded)), len(encoded))
        size = [1, 3, 4, 7][round_]
        for start in range(0, len(order), size):
            chosen = order[start : start + size]
            scored = cached.score([encoded[i] for i in chosen])
            assert_same_scores(scored.scores, [reference[i] for i in chosen])
            reused += scored.cached_tokens
    assert reused > 0.5 * sum(len(item) for item in encoded)  # later rounds find nearly everything kept


def test_a_longer_solution_reuses_everything_up_to_the_previous_last_separator(prm, walks):
    cache = cache_for(prm)
    scorer = PackedScorer(prm, cache=cache)
    shorter, longer = prm.formatter.encode(walks[1]), prm.formatter.encode(walks[2])  # steps[:2], steps[:3]
    scorer.score([shorter])
    hit = cache.lookup(longer.input_ids)
    assert hit is not None and hit.length == shorter.separator_positions[-1] + 1  # not the template's end
    scored = scorer.score([longer])
    assert scored.cached_tokens == hit.length and scored.computed_tokens == len(longer) - hit.length
    assert_same_scores(scored.scores, PackedScorer(prm).score([longer]).scores)  # incl. the reused separators
    assert cache.entries == 1  # the longer one holds all the shorter one did: a walk keeps one entry, not K


def test_what_a_conversation_keeps_is_up_to_its_last_separator_and_only_beyond_its_hit(prm, walks):
    cache = cache_for(prm)
    shorter, longer = prm.formatter.encode(walks[1]), prm.formatter.encode(walks[2])  # steps[:2], steps[:3]
    kept = shorter.separator_positions[-1] + 1
    assert cache.keep_length(shorter.input_ids, shorter.separator_positions) == kept  # not the template's end
    PackedScorer(prm, cache=cache).score([shorter])
    repeat, continuation = cache.lookup(shorter.input_ids), cache.lookup(longer.input_ids)
    assert repeat.length == continuation.length == kept
    assert cache.keep_length(shorter.input_ids, shorter.separator_positions, repeat) == 0  # the hit holds it all
    longer_kept = longer.separator_positions[-1] + 1
    assert cache.keep_length(longer.input_ids, longer.separator_positions, continuation) == longer_kept
    short_cache = PrefixCache(2**20, prm.formatter.boundary_ids, kept + 1)
    assert short_cache.keep_length(shorter.input_ids, shorter.separator_positions) == 0  # under min_length
    assert cache.keep_length(shorter.input_ids[:kept], shorter.separator_positions) == 0  # nothing after it


def test_cache_hits_mix_with_in_batch_sharing(prm, walks, processbench_items):
    cache = cache_for(prm)
    scorer = PackedScorer(prm, cache=cache)
    scorer.score([prm.formatter.encode(walks[0])])
    problem = processbench_items[7]["problem"]  # best-of-N candidates of a problem nothing has kept yet
    candidates = [ScoringInput(problem, item["steps"]) for item in processbench_items[:3]]
    batch = [prm.formatter.encode(item) for item in [walks[1], *candidates, walks[0]]]
    scored = scorer.score(batch)
    assert scored.cached_tokens > 0  # walks[1] continues walks[0], and walks[0] comes again
    assert scored.computed_tokens + scored.cached_tokens < sum(len(item) for item in batch)  # shared in the batch
    assert_same_scores(scored.scores, PackedScorer(prm).score(batch).scores)


def test_under_a_small_capacity_evictions_keep_scores_exact_and_bytes_bounded(prm, walks):
    encoded = [prm.formatter.encode(walk) for walk in walks]
    reference = PackedScorer(prm).score(encoded).scores
    metrics, measure = Metrics(), cache_for(prm)
    PackedScorer(prm, cache=measure).score(encoded[:1])
    per_token = measure.bytes / measure.keep_length(encoded[0].input_ids, encoded[0].separator_positions)
    average = sum(len(item) for item in encoded) / len(encoded)
    cache = PrefixCache(int(3 * average * per_token), prm.formatter.boundary_ids, 64, metrics)  # about 3 entries
    scorer = PackedScorer(prm, cache=cache)
    rng = random.Random(1)
    for _ in range(3):
        order = rng.sample(range(len(encoded)), len(encoded))
        for start in range(0, len(order), 2):
            chosen = order[start : start + 2]
            assert_same_scores(scorer.score([encoded[i] for i in chosen]).scores, [reference[i] for i in chosen])
            assert cache.bytes <= cache.capacity_bytes
    assert metrics.prefix_cache_evictions._value.get() > 0
    assert metrics.prefix_cache_hit_tokens._value.get() > 0
    assert metrics.prefix_cache_bytes._value.get() == cache.bytes


def test_an_entry_a_batch_reads_is_never_evicted_under_it(prm, processbench_items):
    first, second, third, continued = (
        prm.formatter.encode(ScoringInput(item["problem"], item["steps"][:steps]))
        for item, steps in zip(processbench_items[:3] + processbench_items[:1], (1, 9, 9, 2), strict=True)
    )
    cache = cache_for(prm)
    scorer = PackedScorer(prm, cache=cache)
    scorer.score([first])
    hit = cache.lookup(continued.input_ids)
    assert hit is not None
    cache.capacity_bytes = cache.bytes  # room for exactly what is kept
    cache.pin([hit])  # as a batch in flight does
    scorer.score([second])  # keeping it needs room, and only an unpinned entry may go
    assert cache.lookup(continued.input_ids) is not None
    cache.unpin([hit])
    alone = cache_for(prm)
    PackedScorer(prm, cache=alone).score([third])
    cache.capacity_bytes = alone.bytes  # room for the third alone
    scorer.score([third])
    assert cache.lookup(continued.input_ids) is None  # unpinned, it could go, and went


def test_an_entry_a_longer_one_supersedes_stays_counted_while_a_batch_reads_it(prm, walks):
    shorter, longer = prm.formatter.encode(walks[1]), prm.formatter.encode(walks[2])  # steps[:2], steps[:3]
    cache = cache_for(prm)
    scorer = PackedScorer(prm, cache=cache)
    scorer.score([shorter])
    alone = cache.bytes
    hit = cache.lookup(longer.input_ids)
    cache.pin([hit])  # a batch in flight reads the shorter one
    scorer.score([longer])  # the longer one holds every prefix the shorter one did
    assert cache.entries == 2 and cache.bytes > alone  # still there, still counted
    cache.unpin([hit])
    assert cache.entries == 1 and cache.lookup(longer.input_ids).entry is not hit.entry


def test_a_superseded_entrys_mapping_takes_the_next_kept_conversation(prm, walks):
    """On CPU a walk's previous step leaves its mapping as a spare, counted in the cache's bytes; the next
    conversation to keep that fits is written there, and scores stay exact."""
    cache = cache_for(prm)
    scorer = PackedScorer(prm, cache=cache)
    first, second = (prm.formatter.encode(walk) for walk in walks[:2])  # steps[:1], steps[:2] of one solution
    scorer.score([first])
    (replaced,) = cache._entries.values()
    scorer.score([second])
    assert cache.entries == 1 and [spare.data_ptr() for spare in cache._spares] == [replaced.arena.data_ptr()]
    assert cache.bytes == sum(entry.nbytes for entry in cache._entries.values()) + replaced.arena.numel()
    step = walks[0].steps[0]
    shorter = prm.formatter.encode(ScoringInput(walks[0].problem, [step[: len(step) // 2]]))
    assert len(first) // 2 <= len(shorter) <= len(first)  # fits the spare, wasting less than its own size
    scored = scorer.score([shorter])
    assert_same_scores(scored.scores, PackedScorer(prm).score([shorter]).scores)
    assert not cache._spares
    assert any(entry.arena.data_ptr() == replaced.arena.data_ptr() for entry in cache._entries.values())


def test_spares_go_before_any_entry_is_evicted(prm, walks):
    metrics = Metrics()
    cache = cache_for(prm, metrics=metrics)
    scorer = PackedScorer(prm, cache=cache)
    first = prm.formatter.encode(walks[0])
    scorer.score([first])
    scorer.score([prm.formatter.encode(walks[1])])
    (kept,) = cache._entries.values()
    assert len(cache._spares) == 1  # the first step's mapping
    others = [prm.formatter.encode(walk) for walk in walks if walk.problem != walks[0].problem]
    other = next(item for item in others if len(item) > len(first))  # no spare fits it
    forward = prm.forward
    needs = 2 * len(forward.layers) * forward.kv_heads * len(other) * forward.head_dim * 4
    cache.capacity_bytes = kept.nbytes + needs  # room for both entries once the spare goes
    scorer.score([other])
    assert cache.entries == 2 and not cache._spares and cache.bytes == cache.capacity_bytes
    assert metrics.prefix_cache_evictions._value.get() == 0
    assert metrics.prefix_cache_bytes._value.get() == cache.bytes


def test_concurrent_interleaved_requests_through_the_engine_equal_the_uncached_scores(prm, walks):
    encoded = [prm.formatter.encode(walk) for walk in walks]
    reference = PackedScorer(prm).score(encoded).scores
    engine = Engine(PackedScorer(prm, cache=cache_for(prm, 0.2)), Metrics(), max_batch_tokens=1024)
    engine.start()
    results: dict[int, list[float]] = {}

    def client(indices: list[int]) -> None:
        for index in indices:
            results[index] = engine.submit([encoded[index]]).result(timeout=60)[0]

    indices = list(range(len(encoded))) * 2
    random.Random(2).shuffle(indices)
    threads = [threading.Thread(target=client, args=(indices[n::4],)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    engine.stop()
    assert_same_scores([results[i] for i in range(len(encoded))], reference)


def test_running_out_of_memory_empties_the_cache_and_the_batch_is_split(prm, walks):
    encoded = [prm.formatter.encode(walk) for walk in walks[:6]]
    metrics = Metrics()
    cache = cache_for(prm, metrics=metrics)
    scorer = PackedScorer(prm, cache=cache)
    scorer.score(encoded[:3])
    kept = cache.entries
    assert kept > 0
    real = PackedForward.__call__

    def fails_on_long_batches(self, batch):  # a device too small for more than 3 sequences at once
        if len(batch.separator_counts) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(self, batch)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PackedForward, "__call__", fails_on_long_batches)
        engine = Engine(scorer, metrics, max_batch_tokens=100_000)
        future = engine.submit(encoded)
        engine.start()
        scores = future.result(timeout=60)
        engine.stop()
    assert metrics.oom_splits._value.get() == 1
    assert metrics.prefix_cache_evictions._value.get() == kept  # the cache let go of everything first
    assert_same_scores(scores, PackedScorer(prm).score(encoded).scores)
    assert cache.entries > 0  # and the halves filled it again


def test_a_reload_never_serves_the_old_models_keys_and_values(tmp_path, checkpoint, walks):
    store = tmp_path / "store"
    run_prm("publish", str(checkpoint), "--name", "tiny", "--store", str(store))
    server = Server("--store", str(store), "--model", "tiny", "--prefix-cache-mb", "64", env={"PRM_ADMIN_KEYS": "a"})
    bodies = [{"problem": walk.problem, "steps": walk.steps} for walk in walks[:8]]
    client = httpx.Client(headers={"Authorization": "Bearer a"}, timeout=60)  # an admin key passes as an API key
    try:
        server.wait_ready()
        for body in bodies:  # kept under v1
            assert client.post(f"{server.url}/score_steps", json=body).json()["model_version"] == "v1"
        retrained = build_random_checkpoint(tmp_path / "retrained", tokenizer_corpus(), seed=7)  # same tokens
        run_prm("publish", str(retrained), "--name", "tiny", "--store", str(store))
        client.post(f"{server.url}/admin/reload").raise_for_status()
        reference = ModelCardPRM(retrained)
        for body in bodies:
            answer = client.post(f"{server.url}/score_steps", json=body).json()
            assert answer["model_version"] == "v2"
            assert answer["step_scores"] == pytest.approx(reference.step_rewards(**body), abs=TOLERANCE)
        metrics = client.get(f"{server.url}/metrics").text
    finally:
        client.close()
        server.stop()
    hit_tokens = next(line for line in metrics.splitlines() if line.startswith("prm_prefix_cache_hit_tokens_total"))
    assert float(hit_tokens.split()[-1]) > 0  # the walks did reuse their prefixes
    for name in ("prm_prefix_cache_miss_tokens_total", "prm_prefix_cache_bytes", "prm_prefix_cache_evictions_total"):
        assert f"\n{name} " in metrics


def test_a_cache_the_device_cannot_hold_is_refused_at_startup_in_one_line(checkpoint):
    server = Server("--model", str(checkpoint), "--prefix-cache-mb", "100000000")
    assert server.process.wait(timeout=60) == 1
    refusals = [line for line in server.output().splitlines() if line.startswith("prm serve: ")]
    assert len(refusals) == 1 and "--prefix-cache-mb 100000000 does not fit: cpu has" in refusals[0], server.output()


def test_the_cache_is_refused_in_front_of_vllm():
    result = run_prm("serve", "--vllm-url", "http://127.0.0.1:9", "--prefix-cache-mb", "64")
    assert result.returncode == 2 and result.stderr.startswith("prm serve: --prefix-cache-mb is for a model loaded")


def test_the_cuda_varlen_path_reads_and_keeps_the_cache_as_the_per_segment_path(prm, walks, monkeypatch):
    """The CUDA branch (kept prefixes appended past the row, one varlen call), checked on the CPU against the
    per-segment path with the kernel's reference semantics (tests/test_packing.py)."""

    from service.prm import attention
    from service.prm.packing import pack
    from service.prm.prefix_cache import KeptBuffers
    from tests.test_packing import reference_varlen_attn

    cache = cache_for(prm)
    PackedScorer(prm, cache=cache).score([prm.formatter.encode(walks[0])])
    items = [prm.formatter.encode(walk) for walk in (walks[1], walks[7], walks[8])]
    hits = [cache.lookup(item.input_ids) for item in items]
    assert hits[0] is not None and hits[1] is None
    results = []
    for varlen in (False, True):
        batch = pack(items, 64, hits, [True, True, False])
        rows, heads, kv_heads, dim = batch.computed_tokens, 4, 2, 16
        for index in (0, 1):
            batch.kept[index] = KeptBuffers.empty(
                2, (kv_heads, len(items[index]), dim), torch.float32, torch.device("cpu")
            )
        torch.manual_seed(0)
        query = torch.randn(1, heads, rows, dim)
        key, value = torch.randn(1, kv_heads, rows, dim), torch.randn(1, kv_heads, rows, dim)
        if varlen:
            monkeypatch.setattr(attention, "_varlen_attn", reference_varlen_attn)
            monkeypatch.setattr(attention, "_VARLEN_OPTIONS", {"enable_gqa": True})
            monkeypatch.setattr(attention, "_VARLEN_GQA", True)
            key_all, value_all = attention._with_cache(1, key, value, batch)
            out = attention._varlen(query, key_all, value_all, 0.25, batch)
        else:
            out = attention.packed_attention(1, query, key, value, 0.25, batch)
        results.append((out, batch.kept))
    (cpu, cpu_kept), (cuda, cuda_kept) = results
    assert torch.allclose(cuda, cpu, atol=1e-5)
    assert set(cpu_kept) == set(cuda_kept) == {0, 1}
    for item in (0, 1):
        for ours, theirs in (
            (cpu_kept[item].keys[1], cuda_kept[item].keys[1]),
            (cpu_kept[item].values[1], cuda_kept[item].values[1]),
        ):
            assert torch.equal(ours, theirs) and ours.shape[1] == len(items[item])
