"""Long acceptance runs on the lab, opt-in: tests marked `acceptance` run only with `--acceptance`
(or AIFACTORY_ACCEPTANCE=1), and are otherwise skipped with that reason.

Why: these are the day-2 proofs of the issues' acceptance lines (a rolling upgrade and a rollback
through the front door, rotating the token key and the site CA, two turns of the retraining loop
and a canary). Each changes the whole site (new bundles, new keys, new champions) and together they
take longer than the rest of the lab suite, which CI's time limit cannot hold. They keep their ids
(tests/expected_test_ids.txt) and are listed in tests/expected_skipped_ids.txt, so the suite still
notices one that disappears. Run them on the lab with:

    .venv/bin/pytest --acceptance -m acceptance

A module marks itself `pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.acceptance]`.
"""

from __future__ import annotations

import os

import pytest

ENVIRONMENT = "AIFACTORY_ACCEPTANCE"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--acceptance",
        action="store_true",
        default=False,
        help="also run the long acceptance tests on the lab (marked `acceptance`; tests/acceptance.py)",
    )


def wanted(config: pytest.Config) -> bool:
    return bool(config.getoption("--acceptance")) or os.environ.get(ENVIRONMENT) == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if wanted(config):
        return
    skip = pytest.mark.skip(reason="an acceptance run on the lab: give --acceptance (tests/acceptance.py)")
    for item in items:
        if item.get_closest_marker("acceptance") is not None:
            item.add_marker(skip)
