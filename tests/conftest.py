"""Shared test configuration: fixtures live in tests/fixtures as plugins."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

pytest_plugins = [
    "tests.fixtures.pg",
    "tests.fixtures.s3",
    "tests.fixtures.ray_cluster",
    "tests.fixtures.serve",
]
