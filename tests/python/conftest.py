"""Shared pytest fixtures for tests/python.

Environment:
  SPARSESERVE_BUILD   CMake build directory holding bin/ (default: <repo>/build)
  SPARSESERVE_MODEL   GGUF model (default: models/SmolLM2-135M-Instruct.Q4_1.gguf); relative paths
                      are taken from the repository root
Tests that need the model are skipped when it is missing (scripts/fetch-model.sh fetches it).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# The HTTP and gRPC tests import their plugin's helpers before pytest loads it as a plugin: rewritten
# here so that their asserts report their operands.
pytest.register_assert_rewrite("conftest_grpc", "conftest_server")

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = "models/SmolLM2-135M-Instruct.Q4_1.gguf"


def build_dir_path() -> Path:
    return Path(os.environ.get("SPARSESERVE_BUILD", str(REPO_ROOT / "build"))).resolve()


def model_file_path() -> Path:
    p = Path(os.environ.get("SPARSESERVE_MODEL", DEFAULT_MODEL))
    return p if p.is_absolute() else REPO_ROOT / p


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def build_dir() -> Path:
    return build_dir_path()


@pytest.fixture(scope="session")
def model_path() -> Path:
    p = model_file_path()
    if not p.is_file():
        pytest.skip(f"model not found: {p} (run scripts/fetch-model.sh or set SPARSESERVE_MODEL)")
    return p


@pytest.fixture(scope="session")
def tool(build_dir):
    """tool(name) -> path of build_dir/bin/<name>; fails with a build hint when it is not built."""
    def find(name: str) -> Path:
        p = build_dir / "bin" / name
        if not p.is_file():
            pytest.fail(f"{p} is not built: ninja -C {build_dir} {name} "
                        f"(or point SPARSESERVE_BUILD at the build directory)")
        return p
    return find


@pytest.fixture(scope="session")
def hf_model_dir(model_path, tmp_path_factory) -> Path:
    """The default GGUF model converted once per session into a Hugging Face directory
    (tests/python/hf_fixture.py: F32 safetensors in two shards, config.json, tokenizer files)."""
    from hf_fixture import make_hf_dir

    return make_hf_dir(model_path, tmp_path_factory.mktemp("hf_model"))
