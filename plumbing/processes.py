"""One study, several processes: JAX's multi-controller runtime (docs/A4-many-machines.md).

Every process runs the same script with the same flags. jax.distributed.initialize joins them: jax.devices() then
lists every process's devices, one global mesh spans them, and each process computes only on its own
(jax.local_devices()). A process builds only its own part of a global array (`put`), and reads the whole of one
only through a collective (`gather`). Only process 0 writes files.

A process whose peer dies, or never joins, cannot always say so itself: JAX's runtime may end it with an abort
from C++. So each process is a small supervisor around the real one (`start`): it runs the same command again,
keeps the worker's stderr in a log file, and turns an abort into one line and exit status 5.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile

from plumbing import exits, files
from plumbing.exits import EXIT_PROCESS_LOST, fail

WORKER = "ML_IN_JAX_WORKER"  # set in the supervisor's child: this process is the worker, it joins the study
JOINED = "process joined the study"  # the worker's first line on stderr once every process has joined
TIMEOUT = 60  # seconds to wait for every process to join, and for a silent peer before it counts as lost


class PeerLost(Exception):
    """A collective failed: another process of the study stopped or cannot be reached."""


def add_flags(parser):
    """--coordinator, --num-processes, --process-id, --join-timeout: the layout of a multi-process study."""
    group = parser.add_argument_group("several processes (with --vmap; docs/A4-many-machines.md)")
    group.add_argument("--coordinator", metavar="HOST:PORT",
                       help="where process 0 listens; every process is given the same (default: one process, or "
                            "what SLURM or Open MPI say when the script runs under srun or mpirun)")
    group.add_argument("--num-processes", type=int, metavar="N",
                       help="how many processes run the study (default: one, or what srun or mpirun say)")
    group.add_argument("--process-id", type=int, metavar="I",
                       help="this process's number, 0 .. N-1; process 0 writes (default: 0, or what srun or mpirun "
                            "say)")
    group.add_argument("--join-timeout", type=int, default=TIMEOUT, metavar="SECONDS",
                       help="how long to wait for every process to join, and for a silent one before the others "
                            "stop (default: %(default)s)")


LAYOUT_FLAGS = ("coordinator", "num_processes", "process_id", "join_timeout")  # not a study setting: may change


def layout(parser, args):
    """The parsed flags -> None for one process, else {coordinator, num_processes, process_id} (None where JAX
    finds them itself, under srun or mpirun). A bad layout is a usage error."""
    given = [args.coordinator, args.num_processes, args.process_id]
    if any(v is not None for v in given):
        if any(v is None for v in given):
            parser.error("--coordinator, --num-processes and --process-id go together")
        host, _, port = args.coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            parser.error(f"argument --coordinator: {args.coordinator!r} is not HOST:PORT")
        if args.num_processes < 1 or not 0 <= args.process_id < args.num_processes:
            parser.error(f"argument --process-id: {args.process_id} is not in 0 .. --num-processes - 1 "
                         f"({args.num_processes - 1})")
        found = dict(coordinator=args.coordinator, num_processes=args.num_processes, process_id=args.process_id)
    elif int(os.environ.get("SLURM_STEP_NUM_TASKS", 1)) > 1 and "SLURM_STEP_NODELIST" in os.environ:  # in srun
        found = dict(coordinator=None, num_processes=None, process_id=int(os.environ["SLURM_PROCID"]))
    elif int(os.environ.get("OMPI_COMM_WORLD_SIZE", 1)) > 1:
        found = dict(coordinator=None, num_processes=None, process_id=int(os.environ["OMPI_COMM_WORLD_RANK"]))
    else:
        return None
    if args.join_timeout < 1:
        parser.error(f"argument --join-timeout: {args.join_timeout} is not a whole number >= 1")
    if not args.vmap:
        parser.error("several processes need --vmap: they share the models of one program, not runs")
    return found


def start(parser, args, argv, script):
    """Join the study if the flags or the environment say there are several processes; else do nothing.

    The process started by the user supervises (never returns); its worker joins: jax.distributed.initialize,
    and only process 0 keeps the right to write (plumbing.files.WRITER)."""
    where = layout(parser, args)
    if where is None:
        return
    if os.environ.get(WORKER) != "1":
        supervise(script, argv, where["process_id"], args.join_timeout)
    import jax

    jax.distributed.initialize(where["coordinator"], where["num_processes"], where["process_id"],
                               initialization_timeout=args.join_timeout,
                               heartbeat_timeout_seconds=args.join_timeout,
                               shutdown_timeout_seconds=args.join_timeout)
    print(f"{JOINED}: {jax.process_index()} of {jax.process_count()}", file=sys.stderr, flush=True)
    exits.QUICK_EXIT = True
    files.WRITER = jax.process_index() == 0
    if not files.WRITER:  # one process reports: the others' output would repeat it
        print(f"process {jax.process_index()} of {jax.process_count()}: training its share of the models; process 0 "
              f"prints the study and writes its files", flush=True)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the runtime's own lines (Gloo's) too
    settings = {k: v for k, v in vars(args).items() if k not in ("process_id", "out", "data_dir")}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    if len(set(gather_text(digest))) > 1:
        fail(f"process {jax.process_index()}: the processes were given different settings (every process must run "
             f"the same command, --process-id aside)")


def supervise(script, argv, process_id, timeout):
    """Run this command again as the worker, stderr into a log file -> exit with its status; an abort (the
    runtime's own, when a peer is lost or never joins) becomes one line and EXIT_PROCESS_LOST."""
    log = tempfile.NamedTemporaryFile("w+", prefix=f"ml_in_jax-process{process_id}-", suffix=".log", delete=False)
    signal.signal(signal.SIGINT, lambda *_: None)  # Ctrl-C reaches the worker too (one process group): it decides
    worker = subprocess.Popen([sys.executable, script, *argv], env=dict(os.environ, **{WORKER: "1"}),
                              stderr=log)
    signal.signal(signal.SIGTERM, lambda *_: worker.terminate())  # srun and scancel stop a step with SIGTERM
    status = worker.wait()
    log.seek(0)
    lines = log.read().splitlines()
    log.close()
    if status >= 0 and status != EXIT_PROCESS_LOST:  # it ended itself: its messages as they are, minus the join line
        sys.stderr.write("".join(line + "\n" for line in lines if not line.startswith(JOINED)))
        os.unlink(log.name)
        sys.exit(status)
    ours = [line[len("error: "):] for line in lines if line.startswith("error: ")]  # the runtime's own lines aside
    if ours:
        why = ours[-1]
    elif status != -signal.SIGABRT:  # not the runtime's abort: this process itself was stopped (OOM, scancel)
        why = f"this process was stopped by signal {-status}; every file written before is complete"
    elif any(line.startswith(JOINED) for line in lines):
        why = "another process stopped or cannot be reached; the study stopped, every file written before is complete"
    else:
        why = f"the processes did not all join within {timeout} s; nothing was written"
    fail(f"process {process_id}: {why} (JAX's report: {log.name})", EXIT_PROCESS_LOST)


def put(host_array, sharding):
    """host_array (NumPy, whole in every process) -> a global jax.Array, each process placing only its devices'
    parts: jax.device_put cannot place parts on another process's devices."""
    import jax

    return jax.make_array_from_callback(host_array.shape, sharding, lambda index: host_array[index])


def put_rows(shape, sharding, rows):
    """A global jax.Array of `shape` whose rows come from rows(start, stop) -> NumPy array: each process computes
    only the rows of its own devices (each model's batch order: no process needs another's)."""
    import jax

    def part(index):
        start, stop, _ = index[0].indices(shape[0])
        return rows(start, stop)[(slice(None), *index[1:])]

    return jax.make_array_from_callback(shape, sharding, part)


def gather(tree):
    """Global jax.Arrays (a pytree of them) -> the whole of each as a NumPy array, in every process; PeerLost when
    another process is gone. In one process this is jax.device_get."""
    import jax
    from jax.experimental import multihost_utils

    if all(leaf.is_fully_addressable for leaf in jax.tree.leaves(tree)):
        return jax.device_get(tree)
    try:
        return multihost_utils.process_allgather(tree, tiled=True)
    except jax.errors.JaxRuntimeError as err:  # the runtime's words: in the worker's log, not the one line
        raise PeerLost("another process of the study stopped or cannot be reached") from err


def gather_text(text):
    """Every process's `text` (a short string, the same length in each) -> the list of them, process 0's first."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    mine = np.frombuffer(text.encode(), np.uint8)
    try:
        every = multihost_utils.process_allgather(mine)
    except jax.errors.JaxRuntimeError as err:
        raise PeerLost("another process of the study stopped or cannot be reached") from err
    return [bytes(row).decode() for row in np.asarray(every)]


def ready():
    """Wait until every process has loaded its data (and process 0 claimed --out); PeerLost if one failed."""
    gather_text("ready")


def stop(status):
    """End a worker of a multi-process study with `status` now, without JAX's shutdown, which would wait for peers
    that may be gone: what it had to say is said, its files are written (the empty folders it made removed)."""
    files.remove_unused_out_dirs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
