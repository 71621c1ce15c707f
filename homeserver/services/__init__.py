"""Application layer: what the APIs call. Services get their collaborators in ``__init__``."""
