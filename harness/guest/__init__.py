"""Real guests: a Linux image built from Debian packages, a memory workload with a self-check, and the hooks that
run them across a migration (docs/guests.md)."""
