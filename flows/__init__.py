"""Orchestration: the pipeline's step functions, the Prefect flow, the gate, the registry and the CLI."""
