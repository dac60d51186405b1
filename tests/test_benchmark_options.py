"""Integration: every installed benchmark refuses a mistyped -o option before it runs anything."""

import pytest
from click.testing import CliRunner

from crossedge.core import get_registry
from crossedge.core.cli import build_cli

BENCHMARKS = get_registry("benchmark").names()


def test_every_first_party_package_registers_a_benchmark():
    assert {"model-load", "specdec", "quant-eval", "retrieval"} <= set(BENCHMARKS)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_mistyped_option_is_refused_listing_the_valid_ones(name):
    result = CliRunner().invoke(build_cli(), ["bench", "run", name, "-o", "no_such_option=1"])
    assert result.exit_code == 1, result.output
    assert "no_such_option" in result.output and "Traceback" not in result.output
    assert "valid" in result.output or "its options:" in result.output
