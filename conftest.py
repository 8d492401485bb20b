"""pytest setup shared by the tests and the notebooks (run by nbmake)."""

import os

# The notebooks read their size from the environment: small in the test suite.
os.environ.setdefault("MLESEARCH_SIZE", "small")
os.environ.setdefault("MPLBACKEND", "Agg")
