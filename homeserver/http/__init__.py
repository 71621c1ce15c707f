"""Shared aiohttp pieces: error and CORS middleware, JSON in and out, the access log."""
