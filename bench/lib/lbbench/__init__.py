"""lb's benchmark harness; the entry point is bench/run (see bench/README.md)."""
