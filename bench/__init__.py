"""Performance benchmark of the re-encryption engine (issue 6). Run ``python -m bench.run``."""
