"""The multiple-choice benchmark: scoring, statistics and the report."""
