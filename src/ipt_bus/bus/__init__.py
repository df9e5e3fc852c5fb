"""The actors of one bus node: router, stats, connections, dead letters, and `run_bus`."""
