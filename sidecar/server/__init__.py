"""The sidecar process: HTTP endpoint, expiry watcher, embedded server, command line."""
