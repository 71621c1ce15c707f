"""The roomserver: the one owner of every room's event graph and state.

Code outside imports only :mod:`roomserver.api`; the composition root builds
:class:`roomserver.server.RoomServer` and hands its Protocols to services and federation.

Inside: ``writer`` (per-room locks, snapshots, the batch commit loop) is the core the step
modules call into: ``local`` (events built here), ``receive`` (events from other servers),
``remote_state`` (outliers, remote joins and invites, backfill); ``state`` resolves the state
of forks (state resolution v2, from :mod:`core.state_res`); ``reads`` answers questions about
rooms; ``store`` is the only code that writes the event, edge, state and extremity tables.
"""
