"""Audio formats at the byte level: frames, joins, tags. Pure functions, no I/O beyond what they are given."""
