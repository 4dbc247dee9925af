"""What every script shares on its way in and out, one job per module, out of the learner's way:
cli (the command line), exits (one line and a status), files (output folders, atomic writes),
provenance (where a result comes from), stats (paired differences, timing medians), plots (matplotlib),
run_folder (one training run's files: what --resume reads, metrics.json, log.txt, model.npz, the plots),
warm_up (compiling every shape a run meets before the clock starts), processes (one study as several
processes: JAX's multi-controller runtime)."""
