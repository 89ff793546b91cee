"""The machinery behind the three steps, one module per job (the top-level scripts are what a user runs)."""
