"""Hardware drivers; each imports its vendor SDK lazily so that installing one extra is enough."""
