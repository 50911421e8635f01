"""Small data sets built from real text that arrives offline, for demos, docs and tests."""
