"""ragft_dagster: docs -> specialised Q&A model, every stage a Dagster asset."""

__version__ = "0.1.0"
