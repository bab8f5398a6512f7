"""Shared fixtures: a tiny checkpoint in the exact Hub layout, the reference scorer, a live server."""

from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def server(checkpoint):
    server = Server("--model", str(checkpoint)).wait_ready()
    yield server
    server.stop()
