"""The GCS: broker shards, their tables and write-ahead logs, and the agent's link to them."""
