"""Everything that learns. Imports torch and numpy only (never Prefect or Feast) so it runs alone on a GPU host."""
