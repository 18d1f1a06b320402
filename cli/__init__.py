"""The `zray` command."""
