"""Fixtures for every test: the real servers the tests start (tests/servers.py: an
S3 store; tests/postgres.py: PostgreSQL)."""

pytest_plugins = ["tests.servers", "tests.postgres"]
