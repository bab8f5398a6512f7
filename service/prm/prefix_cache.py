"""Attention keys and values of recent token prefixes, kept on the device across requests.

Search loops re-score a beam's whole solution at each new step, RL groups send one prompt's responses
one request at a time, rerankers send the same candidates again. Each conversation a batch scores is
kept here, up to its last separator. A later conversation that begins with a kept prefix, up to one of
its own *boundaries* (a position just after a special token: a step separator, a chat-template token),
computes only its new tokens and attends to the kept keys and values; the step scores at
separators inside the prefix are kept too, since a position's hidden state depends only on the tokens
before it. So a walk that adds one step shares everything up to the previous last separator, but not
the closing tokens of the chat template, and a group of responses shares its prompt.

Keys are exact token-id prefixes: a digest of the ids up to each boundary indexes the entry, and a hit
compares the ids themselves. Entries are evicted least recently used first, by bytes; an entry that a
batch in flight reads is pinned and never evicted under it. One cache belongs to one loaded model (its
PackedScorer), so a reload or a `--watch` swap never serves another model's keys and values. The
engine's workers share it: every method holds its lock, and a scorer holds `lock` too from its lookups to
pinning what they found, so that no other worker's insert evicts an entry in between.

On CPU each entry lies in a memory mapping of its own. An entry that a longer one replaces (a walk's previous
step) leaves its mapping behind as a spare, and the next conversation to keep that fits is written there:
its pages are already in memory, where a fresh mapping costs a page fault per 4 KiB on first write (about
1.5 ms per 2.5 MiB here, against 0.2 ms to copy into memory already touched). Spares count towards the
capacity, are the first to go when it is reached, and never hold more than an eighth of it.
"""

import hashlib
import mmap
import os
import threading
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path

import torch

from service.cgroups import memory_headroom


class PrefixCacheTooLarge(ValueError):
    """The cache size asked for does not fit in the device's free memory."""


def free_bytes(device: torch.device) -> int:
    """Memory this process may still take on `device`: free GPU memory, or on CPU what the system has
    available within what its cgroups (its own, a pod's, a slice's) have left."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    free = _meminfo_available() or os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    headroom = memory_headroom()
    return free if headroom is None else min(free, headroom)


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@dataclass(frozen=True)
class KeptBuffers:
    """Where a batch writes, layer by layer, the keys and values of a conversation the cache will keep."""

    keys: list[torch.Tensor]  # per layer: (key/value heads, tokens, head_dim)
    values: list[torch.Tensor]
    arena: torch.Tensor | None = None  # on CPU, the mapping (bytes) they lie in, at least as large as they need

    @property
    def nbytes(self) -> int:
        if self.arena is not None:
            return self.arena.numel()
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    @classmethod
    def empty(
        cls,
        layers: int,
        shape: tuple[int, int, int],
        dtype: torch.dtype,
        device: torch.device,
        arena: torch.Tensor | None = None,
    ) -> "KeptBuffers":
        """On CPU, in `arena` or else in one anonymous memory mapping of its own, which goes back to the system
        the moment nothing holds it: from the heap, blocks of these sizes stayed resident after eviction (over
        1,500 unique conversations with a 1,024 MiB cache, resident memory grew by 1,596 MiB, 70 MiB with the
        cache off; trimming the heap or a fixed mmap threshold cost throughput instead: loadtest/RESULTS.md)."""
        if device.type != "cpu":
            tensors = [torch.empty(shape, dtype=dtype, device=device) for _ in range(2 * layers)]
        else:
            size = torch.Size(shape).numel() * dtype.itemsize
            if arena is None:
                arena = torch.frombuffer(mmap.mmap(-1, 2 * layers * size), dtype=torch.uint8)
            tensors = [arena[n * size : (n + 1) * size].view(dtype).view(shape) for n in range(2 * layers)]
        return cls(tensors[:layers], tensors[layers:], arena)


@dataclass(eq=False)
class CachedPrefix:
    """One conversation's prefix: its ids, its keys and values per layer, its step scores inside it."""

    tokens: list[int]
    keys: list[torch.Tensor]  # per layer: (key/value heads, len(tokens), head_dim), after RoPE
    values: list[torch.Tensor]
    scores: dict[int, float]  # position of each separator inside the prefix -> its step score
    nbytes: int
    arena: torch.Tensor | None  # on CPU, the mapping its keys and values lie in (KeptBuffers.arena)
    digests: set[bytes] = field(default_factory=set)  # the index keys that lead here
    pins: int = 0  # batches in flight that read it


@dataclass(frozen=True)
class Hit:
    entry: CachedPrefix
    length: int  # tokens of the conversation that the entry holds: reused, not computed


def _locked(method):
    @wraps(method)
    def holding_the_lock(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)

    return holding_the_lock


class PrefixCache:
    def __init__(self, capacity_bytes: int, boundary_ids: frozenset[int], min_length: int, metrics=None):
        """`boundary_ids`: the special tokens after which a prefix may end; `min_length`: shorter prefixes
        are not worth attending to from the cache (the packing's --min-shared-prefix); `metrics`:
        service.metrics.Metrics, or None."""
        self.capacity_bytes = capacity_bytes
        self.boundary_ids = boundary_ids
        self.min_length = max(1, min_length)
        self.metrics = metrics
        self.bytes = 0  # the entries' and the spares'
        self._entries: OrderedDict[int, CachedPrefix] = OrderedDict()  # by id(), least recently used first
        self._spares: list[torch.Tensor] = []  # mappings that replaced entries left, oldest first
        self._index: dict[bytes, CachedPrefix] = {}
        self.lock = threading.RLock()
        self._publish()

    @property
    def entries(self) -> int:
        return len(self._entries)

    @_locked
    def lookup(self, tokens: list[int]) -> Hit | None:
        """The longest kept prefix of `tokens` that ends at one of its boundaries (at least one token is left
        to compute); the entry counts as just used."""
        for length, digest in reversed(self._digests(tokens, len(tokens) - 1)):
            if length < self.min_length:
                return None
            entry = self._index.get(digest)
            if entry is not None and entry.tokens[:length] == tokens[:length]:
                self._entries.move_to_end(id(entry))
                return Hit(entry, length)
        return None

    def keep_length(self, item_tokens: list[int], separator_positions: list[int], hit: Hit | None = None) -> int:
        """How much of a conversation to keep: up to its last separator, which is where a continuation (the
        next search step) or a repeat parts from it; its template's closing tokens, which no continuation
        shares, stay out, so an entry that a continuation extends holds nothing that the new one does not
        and is dropped for it (0: too short to keep, or `hit`, the kept prefix it continues, holds it all)."""
        length = separator_positions[-1] + 1 if separator_positions else 0
        if length < self.min_length or length >= len(item_tokens):
            return 0
        return length if hit is None or length > hit.length else 0

    @_locked
    def buffers(
        self, layers: int, shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device
    ) -> KeptBuffers:
        """Where a batch writes a conversation to keep (KeptBuffers.empty): on CPU in the smallest spare that
        holds it without wasting more than its own size, else in a mapping of its own."""
        need = 2 * layers * torch.Size(shape).numel() * dtype.itemsize
        fitting = [spare for spare in self._spares if need <= spare.numel() <= 2 * need]
        arena = min(fitting, key=torch.Tensor.numel) if device.type == "cpu" and fitting else None
        if arena is not None:
            self._spares = [spare for spare in self._spares if spare is not arena]
            self.bytes -= arena.numel()  # the batch holds it now; the cache again once it is inserted
            self._publish()
        return KeptBuffers.empty(layers, shape, dtype, device, arena)

    @_locked
    def insert(self, tokens: list[int], kept: KeptBuffers, scores: dict) -> None:
        """Keep `tokens` (ending at a boundary) with their keys and values (which may run on past them); entries
        it contains whole are dropped, leaving their mappings as spares, and spares, then the least recently
        used entries, go until the cache is within its capacity again."""
        nbytes = kept.nbytes
        if nbytes > self.capacity_bytes:
            return
        entry = CachedPrefix(tokens, kept.keys, kept.values, scores, nbytes, kept.arena)
        for _, digest in self._digests(tokens, len(tokens)):
            previous = self._index.get(digest)
            if previous is not None:
                previous.digests.discard(digest)
                if not previous.digests and previous.pins == 0:  # every prefix it held is in the new entry
                    self._remove(previous, evicted=False)  # (a pinned one goes when unpinned, see unpin)
            self._index[digest] = entry
            entry.digests.add(digest)
        self._entries[id(entry)] = entry
        self.bytes += nbytes
        while self.bytes > self.capacity_bytes and self._spares:
            self.bytes -= self._spares.pop(0).numel()
        for victim in list(self._entries.values()):
            if self.bytes <= self.capacity_bytes:
                break
            if victim.pins == 0 and victim is not entry:
                self._remove(victim, evicted=True)
        self._publish()

    @_locked
    def pin(self, hits: list[Hit]) -> None:
        for hit in hits:
            hit.entry.pins += 1

    @_locked
    def unpin(self, hits: list[Hit]) -> None:
        for hit in hits:
            hit.entry.pins -= 1
            if not hit.entry.digests and hit.entry.pins == 0 and id(hit.entry) in self._entries:
                self._remove(hit.entry, evicted=False)
        self._publish()

    @_locked
    def clear(self) -> None:
        """Let go of every entry that no batch in flight reads (the device ran out of memory)."""
        for entry in list(self._entries.values()):
            if entry.pins == 0:
                self._remove(entry, evicted=True)
        self.bytes -= sum(spare.numel() for spare in self._spares)
        self._spares.clear()
        self._publish()

    def record(self, hit_tokens: int, miss_tokens: int) -> None:
        """A batch's tokens: those whose keys and values came from here, and the others."""
        if self.metrics is not None:
            self.metrics.prefix_cache_hit_tokens.inc(hit_tokens)
            self.metrics.prefix_cache_miss_tokens.inc(miss_tokens)

    def _remove(self, entry: CachedPrefix, evicted: bool) -> None:
        """Drop an entry: evicted, its memory goes back; replaced by a longer one, its mapping stays a spare."""
        for digest in entry.digests:
            del self._index[digest]
        entry.digests.clear()
        del self._entries[id(entry)]
        if evicted or entry.arena is None:
            self.bytes -= entry.nbytes
            if evicted and self.metrics is not None:
                self.metrics.prefix_cache_evictions.inc()
        else:
            self._spares.append(entry.arena)
            while sum(spare.numel() for spare in self._spares) > self.capacity_bytes // 8:
                self.bytes -= self._spares.pop(0).numel()

    def _digests(self, tokens: list[int], end: int) -> list[tuple[int, bytes]]:
        """(length, digest of tokens[:length]) for every boundary length up to `end`, shortest first."""
        lengths = [index + 1 for index in range(end) if tokens[index] in self.boundary_ids]
        raw = array("q", tokens[:end]).tobytes()
        digest, done, out = hashlib.blake2b(digest_size=16), 0, []
        for length in lengths:
            digest.update(raw[done * 8 : length * 8])
            done = length
            out.append((length, digest.copy().digest()))
        return out

    def _publish(self) -> None:
        if self.metrics is not None:
            self.metrics.prefix_cache_bytes.set(self.bytes)
