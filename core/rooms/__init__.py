"""Pure protocol code for rooms: authorization rules and power levels (later: state resolution,
DAG helpers). No I/O, no clock: everything here is a function of its arguments."""
