"""Shared fixtures: tiny random-weight surrogates of the real diffusers classes, small images."""

from __future__ import annotations

import pytest
import torch

from anti_i2v.surrogates import tiny_surrogate

pytest_plugins = ["tests.conftest_comfy"]

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session", params=["cogvideox", "wan21", "svd"])
def family(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny(family):
    """One tiny surrogate per family for the session (never mutated by well-behaved code)."""
    return tiny_surrogate(family, seed=0)


@pytest.fixture
def photo() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(1, 3, 37, 53, generator=g)


def pytest_sessionfinish(session, exitstatus):
    """With ANTI_I2V_REQUIRE_ALL=1 (the README's test command sets it) a skipped test fails the run."""
    import os

    if not os.environ.get("ANTI_I2V_REQUIRE_ALL"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped and session.exitstatus == 0:
        if reporter:
            reporter.write_line(f"ANTI_I2V_REQUIRE_ALL: {skipped} test(s) skipped: the full suite must run", red=True)
        session.exitstatus = 1
