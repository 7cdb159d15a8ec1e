"""Runtimes that start resources: local processes, PostgreSQL servers and Docker containers."""
