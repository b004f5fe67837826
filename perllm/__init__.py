"""PerLLM: personalized edge-cloud inference scheduling for LLM services."""

__version__ = "0.1.0"
