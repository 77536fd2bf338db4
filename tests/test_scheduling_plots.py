"""`plot_sps`: a profiled-style table and a roofline table drawn side by side into one PNG."""

from __future__ import annotations

from pathlib import Path

import pytest

from dspark.errors import ConfigError
from dspark.scheduling import SPSTable, roofline_table
from dspark.scheduling.plots import plot_sps

PNG = b"\x89PNG\r\n\x1a\n"


def _profiled() -> SPSTable:
    tokens = [1, 2, 4, 8, 16, 32, 64]
    return SPSTable(tokens, [1 / (1e-3 + 2e-6 * b) for b in tokens], {1: 4e-4, 8: 6e-4, 32: 1.1e-3},
                    request_cost={1: 1e-4, 8: 3e-4, 32: 9e-4}, monotone=True, meta={"source": "made up"})


def test_plot_sps_draws_profiled_and_roofline_tables(tmp_path: Path) -> None:
    tables = {"profiled": _profiled(), "roofline": roofline_table("h200", "qwen3-4b", context_len=1024, drafter="dspark",
                                                                  max_tokens=512, max_requests=64),
              "verify curve only": SPSTable([1, 8, 64], [900.0, 850.0, 400.0])}
    out = plot_sps(tables, tmp_path / "sub" / "sps.png", title="made-up tables")
    assert out == tmp_path / "sub" / "sps.png"
    data = out.read_bytes()
    assert data[:8] == PNG and len(data) > 10_000


def test_plot_sps_without_per_request_costs_has_one_panel(tmp_path: Path) -> None:
    out = plot_sps({"a": SPSTable([1, 4], [100.0, 90.0])}, tmp_path / "one.png")
    assert out.read_bytes()[:8] == PNG


def test_plot_sps_needs_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least one"):
        plot_sps({}, tmp_path / "none.png")
