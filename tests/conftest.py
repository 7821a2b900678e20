"""Shared fixtures for every test package: the servers in tests/servers.py (a package's own
conftest may override one by name, e.g. the fault tests' restartable OpenBao)."""

pytest_plugins = ["tests.servers"]
