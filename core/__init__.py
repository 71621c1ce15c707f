"""The Matrix protocol as pure code: events, room versions, authorization rules, power
levels, server ACLs, redaction, state resolution, identifiers, errors and the clock.

Nothing here imports the rest of KT-Chat, touches storage or the network, or starts tasks:
everything above builds on it, and it can be tested with plain values.
"""
