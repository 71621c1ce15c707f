"""One store per area; each wraps the engine and returns frozen dataclasses, never rows."""
