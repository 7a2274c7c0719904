"""Safety checks that run before any work: what an output may replace, one run per output,
what a model folder may make us execute, and the limits a run's flags must respect.

One job a file: guard (the one entry: check, lock, clear leftovers), outputs (which folder
-o/--force may touch), lock (one run per output), remote_code (models load as data only),
limits (flags the model cannot honour), input_paths (a --fisher-file that cannot be one),
memory (activation memory before calibrating),
interrupt (Ctrl-C / SIGTERM and what to say), oserrors (disk full / permission as one line).
"""
