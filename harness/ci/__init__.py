"""CI matrices (``migconform ci``): a plan of QEMU x lab kernel x shard jobs, rendered for GitLab, GitHub
or as JSON, run here as a CI would, and merged with ``migconform merge --plan`` (docs/ci.md)."""
