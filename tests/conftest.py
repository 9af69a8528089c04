"""Fixtures for every test: the real servers the tests start (tests/servers.py)."""

pytest_plugins = ["tests.servers"]
