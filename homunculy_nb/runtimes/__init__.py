"""Where a resource runs: local processes, PostgreSQL servers, Docker containers."""
