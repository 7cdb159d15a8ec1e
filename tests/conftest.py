"""Settings shared by the whole suite. Each area keeps its fixtures in its own folder's conftest.py."""
