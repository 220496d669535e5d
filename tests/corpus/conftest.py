"""Corpora built once per test session (they are pure files on disk; no servers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corpus.malformed import generate_malformed
from corpus.models import CorpusEntry, CorpusManifest
from corpus.sample import build_sample_corpus


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("sample") / "corpus"
    build_sample_corpus(dest, seed=0)
    return dest


@pytest.fixture(scope="session")
def sample_manifest(sample_dir: Path) -> CorpusManifest:
    from corpus.models import load_manifest

    return load_manifest(sample_dir)


@pytest.fixture(scope="session")
def malformed_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[CorpusEntry]]:
    dest = tmp_path_factory.mktemp("malformed")
    return dest, generate_malformed(dest, seed=0)
