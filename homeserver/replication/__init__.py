"""Several processes of one server: the Redis bus between them, the internal calls workers
make to the event persister, and the wiring that keeps a worker's memory current.

The main process writes: every event (it is the persister of every room), every other
stream (account data, receipts, typing, presence, to-device, device lists). It publishes
what each write changed on the bus; a worker applies it to its own notifier, caches and
mirrors, so its syncs wake and answer as the main process's would. A worker's event sends
reach the persister through the replication listener (``roomserver_client``); every other
request it does not serve itself it relays to the main process (``relay``).
"""
