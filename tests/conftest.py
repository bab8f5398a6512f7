"""Shared fixtures: a tiny checkpoint in the exact Hub layout, the reference scorer, the checkpoint loaded
for scoring in process (one load per test module) with its ProcessBench items encoded, a live server."""

from pathlib import Path

import pytest

from service.prm.formatting import ScoringInput
from service.prm.loading import load_prm
from tests.checkpoints import build_random_checkpoint
from tests.helpers import Server, load_processbench_sample, tokenizer_corpus
from tests.model_card import ModelCardPRM


@pytest.fixture(scope="session")
def processbench_items() -> list[dict]:
    return load_processbench_sample()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    return build_random_checkpoint(tmp_path_factory.mktemp("prm") / "tiny-prm", tokenizer_corpus())


@pytest.fixture(scope="session")
def reference(checkpoint) -> ModelCardPRM:
    return ModelCardPRM(checkpoint)


@pytest.fixture(scope="module")
def prm(checkpoint):
    return load_prm(str(checkpoint), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def encoded(prm, processbench_items):
    return [prm.formatter.encode(ScoringInput(item["problem"], item["steps"])) for item in processbench_items]


@pytest.fixture(scope="session")
def server(checkpoint):
    server = Server("--model", str(checkpoint)).wait_ready()
    yield server
    server.stop()
