"""Fast tests first: modules whose tests are all quick run before modules with `slow` tests, and
those before modules with `lab` tests, so that a broken unit shows within minutes and the lab is
brought up once, late, for every lab test together. Modules that use the session's deployed lab
(`deployed_lab`) run after the deploy tests that need a lab nothing was deployed on yet; modules with
`acceptance` tests (opt-in, tests/acceptance.py) last of all: they change the whole site (new keys,
new champions, new bundles) that the deployed lab's other modules share.

A pytest plugin, loaded by tests/conftest.py. Whole modules move, never single tests: tests of one
module keep their file order (some depend on it) and module-scoped fixtures are set up once. Within
each group the usual order (path, then file order) holds.
"""

from __future__ import annotations

import pytest

QUICK, SLOW, LAB, DEPLOYED, ACCEPTANCE = 0, 1, 2, 3, 4


def item_rank(item: pytest.Item) -> int:
    if item.get_closest_marker("acceptance") is not None:
        return ACCEPTANCE
    if "deployed_lab" in getattr(item, "fixturenames", ()):
        return DEPLOYED
    if item.get_closest_marker("lab") is not None:
        return LAB
    if item.get_closest_marker("slow") is not None:
        return SLOW
    return QUICK


def module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def module_ranks(items: list[pytest.Item]) -> dict[str, int]:
    """Each module's rank: that of its slowest test."""
    ranks: dict[str, int] = {}
    for item in items:
        module = module_of(item.nodeid)
        ranks[module] = max(ranks.get(module, QUICK), item_rank(item))
    return ranks


def fast_first(items: list[pytest.Item]) -> list[pytest.Item]:
    """`items` with each module at its slowest test's rank; a stable sort keeps the order within."""
    ranks = module_ranks(items)
    return sorted(items, key=lambda item: ranks[module_of(item.nodeid)])


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items[:] = fast_first(items)
