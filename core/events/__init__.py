"""Pure protocol code for events: room versions, the PDU model, hashes, IDs, signatures,
redaction. No I/O, no clock: everything here is a function of its arguments."""
