"""The cluster-facing commands: `rayzero submit`, `rayzero jobs`, `rayzero cluster render` (the Ray
plumbing itself is in cluster/)."""
