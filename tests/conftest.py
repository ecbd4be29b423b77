"""Shared fixtures: tiny random priors/probes, and one intra-op thread for tiny models."""

from __future__ import annotations

import pytest
import torch

from tests.tiny_models import make_tiny_embedded, make_tiny_probe


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared CPU spinning OpenMP
    threads make the tests several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Folders of a tiny random embedded prior and a tiny random probe: ``(prior, probe)``."""
    base = tmp_path_factory.mktemp("tiny")
    return make_tiny_embedded(base / "prior"), make_tiny_probe(base / "probe")
