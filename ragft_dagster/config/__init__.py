"""The recipe (what to build) and profile (where and how) schemas, checked against upstream
schemas; no execution code."""
