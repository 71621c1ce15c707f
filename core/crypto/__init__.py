"""Pure cryptographic helpers: signing keys, JSON signing, password hashing, TLS material."""
