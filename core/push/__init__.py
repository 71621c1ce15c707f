"""Push rules: the spec's predefined rules and their evaluation (pure code)."""
