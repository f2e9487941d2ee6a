"""The `wanserve` command line."""
