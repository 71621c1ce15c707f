"""KT-Chat homeserver: composition root, configuration and the protocol core."""

__version__ = "0.1.0"
