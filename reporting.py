"""What every script shares on its way in and out: the command line, the exits, the output files.

- The flags that several scripts take are made here (add_flags), so that each has one name,
  one type, one default and one help text everywhere (tests/test_contract.py checks it).
- run_script(main) is every script's __main__: bad input and disk errors end with one line on
  stderr and exit status 2, Ctrl-C with 130; never a traceback.
- Outputs: every script writes into one --out folder, which must be new or empty (default
  runs/NAME, numbered when taken). Every file is written to a temporary name and renamed into
  place, so an interrupted run never leaves half a file; and every file records where it comes
  from (provenance(): the command, the library versions, the machine and the code version).
- The plots' common parts (matplotlib, no display).
"""
import argparse
import atexit
import contextlib
import hashlib
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import matplotlib

matplotlib.use("Agg")  # draw to files; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))  # the repository
EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_CHECK_FAILED, EXIT_INTERRUPTED = 2, 3, 4, 130  # docs/A3-errors.md


# --- Command-line numbers ----------------------------------------------------------------

def number_type(kind, check, requirement):
    """An argparse type: parse with `kind` (int or float), require check(value), else a usage error.

    number_type(float, lambda v: v > 0, "positive")("-1") -> ArgumentTypeError("-1 is not positive")
    """

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"{text} is not {requirement}")
        return value

    parse.__name__ = requirement  # what argparse names in "invalid ... value"
    return parse


def float32_type(check, requirement):
    """An argparse type for a hyperparameter, which the training holds as a float32 array: check() must hold for the
    float32 value, not only for the number typed (0.99999999 is 1.0 in float32, 1e-50 is 0.0, 1e39 inf)."""

    def parse(text):
        value = number_type(float, lambda v: True, "a number")(text)
        with np.errstate(over="ignore", under="ignore"):
            single = float(np.float32(value))
        if check(single):
            return value
        if single == value or math.isnan(value):
            raise argparse.ArgumentTypeError(f"{text} is not {requirement}")
        raise argparse.ArgumentTypeError(f"{text} is {single:g} in float32, which the training computes in: "
                                         f"not {requirement}")

    parse.__name__ = requirement
    return parse


# 1.2e-38, float32's smallest normal number: XLA's CPU code flushes the subnormals below it to zero
FLOAT32_TINY = float(np.finfo(np.float32).tiny)


positive_float = float32_type(lambda v: FLOAT32_TINY <= v < math.inf,
                              "a positive finite number (float32: from 1.2e-38)")
positive_int = number_type(int, lambda v: v >= 1, "a whole number >= 1")
non_negative_int = number_type(int, lambda v: v >= 0, "a whole number >= 0")
unit_interval = float32_type(lambda v: 0 <= v < 1, "in [0, 1)")


# --- The flags several scripts share --------------------------------------------------------
# One entry per flag: argparse's keywords, the same in every script that takes it. A script may
# give a flag another default only through add_flags(..., flag=default), and only those listed in
# OWN_DEFAULTS, each with its reason (tests/test_contract.py holds every parser to this).

LOADERS = ("torch", "device")  # the DataLoader path first: the way JAX's tutorial feeds data

SHARED_FLAGS = {
    "--epochs": dict(type=positive_int, default=10, help="passes over the training images (default: %(default)s)"),
    "--batch-size": dict(type=positive_int, default=128, help="images per training step (default: %(default)s)"),
    "--seed": dict(type=non_negative_int, default=0,
                   help="seeds the initial weights (jax.random) and the order of the batches (each epoch's its own: "
                        "numpy's default_rng([seed, epoch])) (default: %(default)s)"),
    "--seeds": dict(type=non_negative_int, nargs="+", default=[0, 1, 2], metavar="SEED",
                    help="the seeds every setting is trained with, each as --seed does (default: 0 1 2)"),
    "--train-subset": dict(type=positive_int, default=None, metavar="N",
                           help="use only the first N training images (default: all of them; with --val-size, "
                                "all those before the validation images)"),
    "--val-size": dict(type=non_negative_int, default=0, metavar="N",
                       help="hold out the LAST N of the 60,000 training images as a validation set, the same for "
                            "every seed, and train on the images before them; each epoch then records "
                            "val_accuracy (default: %(default)s)"),
    "--loader": dict(choices=LOADERS, default=LOADERS[0],
                     help="how batches reach the training step: 'torch', a torch DataLoader feeding one jitted "
                          "step per batch, or 'device', the images kept on the JAX device and each epoch one "
                          "compiled program (jax.lax.scan over the batches); both train on the same batches in "
                          "the same order (default: %(default)s)"),
    "--vmap": dict(action="store_true",
                   help="train all the models of one optimizer (its settings and seeds) at once, as one program: "
                        "the device loader's epoch under jax.vmap over a model axis (implies --loader device; "
                        "default: off, one model after another)"),
    "--data-dir": dict(metavar="DIR",
                       help="folder with the four MNIST IDX files, gzipped or not, read-only is fine; when none is "
                            "there torchvision downloads them into DIR/MNIST/raw (default: $MNIST_DATA_DIR if set, "
                            "else ./data; now: %(default)s)"),
    "--out": dict(metavar="DIR", default=None,
                  help="new or empty folder for the files this script writes; a folder that holds files is "
                       "refused, so nothing you have is overwritten (default: runs/SCRIPT, or runs/SCRIPT-2, -3, "
                       "... when that one holds files)"),
    "--resume": dict(metavar="DIR", default=None,
                     help="go on with the run in DIR from its last finished epoch (its checkpoint), ending bit for "
                          "bit where it would have ended had it never stopped; its settings come from DIR: a flag "
                          "given too must agree with them, except --epochs, which may grow, and --data-dir "
                          "(default: start a new run)"),
    "--json": dict(action="store_true",
                   help="print the results as JSON instead of the tables; the files are written either way "
                        "(default: off)"),
}
OWN_DEFAULTS = {  # (script, flag) -> why it differs from SHARED_FLAGS' default
    ("tune_optimizers.py", "--val-size"): "the study chooses every setting on validation data",
    ("sharpness.py", "--train-subset"): "a whole-batch Hessian-vector product on all 60,000 images costs 30 times "
                                        "one on 2,000",
}


def add_flags(parser, *flags, **defaults):
    """Add the shared `flags` ("--epochs", ...) to parser; defaults: {"val_size": 10000} for OWN_DEFAULTS."""
    for flag in flags:
        spec = dict(SHARED_FLAGS[flag])
        if flag == "--data-dir":
            import mnist_data  # here, not at the top: a script with no MNIST (verify_vectors.py) needs no torch

            spec["default"] = mnist_data.default_data_dir()
        key = flag[2:].replace("-", "_")
        if key in defaults:
            spec["default"] = defaults.pop(key)
        parser.add_argument(flag, **spec)
    if defaults:
        raise TypeError(f"add_flags: no shared flag for {sorted(defaults)}")


HYPERPARAMETERS = {  # key -> (its argparse type, what it is); every optimizer takes lr and some of the others
    "lr": (positive_float, "learning rate"),
    "mu": (unit_interval, "momentum, nesterov: how much of the velocity is kept"),
    "rho": (unit_interval, "rmsprop: decay of the mean of g^2"),
    "beta1": (unit_interval, "adam: decay of the mean of g"),
    "beta2": (unit_interval, "adam: decay of the mean of g^2"),
    "eps": (positive_float, "rmsprop, adam: added to sqrt(mean of g^2)"),
}


def add_hyperparameter_flags(parser):
    """--lr, --mu, --rho, --beta1, --beta2, --eps: each defaults to the chosen optimizer's own value."""
    from optimized_sgd import OPTIMIZERS, hyperparameters

    for key, (kind, text) in HYPERPARAMETERS.items():
        defaults = ", ".join(f"{name} {hyperparameters(name)[key]:g}" for name in OPTIMIZERS
                             if key in hyperparameters(name))
        parser.add_argument(f"--{key}", type=kind, default=None, help=f"{text} (default: {defaults})")


def resolve_hyperparameters(parser, config):
    """config (the parsed flags, a dict) -> the run's config: its optimizer's hyperparameters filled in and
    the others left out. One the optimizer does not take (--optimizer adam --mu 0.5) is a usage error."""
    from optimized_sgd import UnknownHyperparameter, hyperparameters

    config = dict(config)
    given = {key: config.pop(key) for key in HYPERPARAMETERS}
    try:
        return dict(config, **hyperparameters(config["optimizer"], **given))
    except UnknownHyperparameter as err:
        parser.error(f"argument --{err.key}: {err}")


def given_flags(parser, argv):
    """The flags that argv gives -> {dest: parsed value}; the ones left at their defaults are not in it."""
    unset = object()  # argparse fills in a default only where the namespace holds nothing yet
    namespace = argparse.Namespace(**{action.dest: unset for action in parser._actions})
    return {key: value for key, value in vars(parser.parse_args(argv, namespace)).items() if value is not unset}


def check_resumed_flags(parser, argv, saved, what):
    """saved: the settings of the run being resumed (a dict) -> them, with --epochs as argv gives it. Any other
    flag in argv must agree with them (--data-dir aside, and --resume itself); else one line, exit 2."""
    given = given_flags(parser, argv)
    if "out" in given:
        fail(f"{what}: --out too: a resumed run writes into the folder it resumes")
    for key, value in given.items():
        if key not in ("epochs", "data_dir", "resume") and json.loads(json.dumps(value)) != saved.get(key):
            fail(f"{what}: --{key.replace('_', '-')} {value} is not the run's ({saved.get(key)}); only --epochs "
                 f"(more of them) and --data-dir may change")
    return dict(saved, epochs=given.get("epochs", saved["epochs"]))


STUDY_FILE = "checkpoints/study.json"  # a study's settings, beside its checkpoints: what --resume DIR reads


def study_args(parser, argv, args, name):
    """A study's settings -> args: a new study's as parsed (--out by default runs/NAME), or with --resume DIR those
    saved in DIR by the same script, with the flags given now checked against them (check_resumed_flags) and
    --epochs no fewer than before; --out is then DIR."""
    if not args.resume:
        args.out = args.out or default_out_dir(name)
        args.settings = {key: value for key, value in vars(args).items() if key not in ("out", "data_dir", "resume")}
        args.settings["script"] = name
        return args
    what = f"--resume {args.resume}"
    saved = read_json_or_none(f"{args.resume}/{STUDY_FILE}")
    if not isinstance(saved, dict):
        fail(f"{what}: holds no study to resume (no readable {STUDY_FILE})")
    if saved.get("script") != name or not set(vars(args)) - {"out", "data_dir", "resume"} <= set(saved):
        fail(f"{what}: holds a study of another script ({saved.get('script')}), not of this one ({name})")
    saved.pop("provenance", None)
    settings = check_resumed_flags(parser, argv, saved, what)
    if not isinstance(settings["epochs"], int) or settings["epochs"] < saved["epochs"]:
        fail(f"{what}: --epochs {settings['epochs']} is fewer than the study's {saved['epochs']}")
    return argparse.Namespace(**dict(vars(args), **settings, out=args.resume, settings=settings))


def save_study_args(args):
    """After --out is claimed: the study's settings (args.settings; a resumed one's with --epochs as given now)
    into STUDY_FILE, for --resume."""
    os.makedirs(os.path.dirname(f"{args.out}/{STUDY_FILE}"), exist_ok=True)
    write_json(f"{args.out}/{STUDY_FILE}", args.settings)


def read_json_or_none(path):
    """A JSON file -> its content, or None when it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_log_lines(path):
    """A log.txt that write_text wrote -> its lines without the provenance footer ([] when there is none)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    while lines and (not lines[-1].strip() or lines[-1].startswith(f"# {PROVENANCE_MARK}")):
        lines.pop()
    return lines


def command_line(script, argv):
    """'python SCRIPT ARGS' as a learner types it, from the repository root."""
    return " ".join(["python", os.path.relpath(os.path.abspath(script), ROOT)] + list(argv))


# --- Exits: one line, never a traceback -------------------------------------------------------


def fail(message, code=EXIT_BAD_INPUT):
    """End the program: 'error: message' on stderr, exit status `code`."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def write_or_fail(path, write, kept):
    """write(path) -> what it returns; a disk error (full, no permission) ends the program with one line, exit 2."""
    try:
        return write(path)
    except OSError as err:
        fail(f"cannot write {err.filename or path} ({err.strerror or err}); {kept}")


def load_data_or_exit(parser, args, batch_size=1):
    """Claim args.out, load MNIST as args says -> (train, validation or None, test) datasets.

    Reads args.data_dir, args.train_subset and args.val_size (0 and None when the script has no such
    flag). Any bad input ends the program with one line and exit status 2.
    """
    import mnist_data  # here, not at the top: verify_vectors.py needs no MNIST (and no torch)

    try:
        if not getattr(args, "resume", None):  # a resumed run writes into its own folder, which holds its files
            claim_out_dir(args.out)
        splits = mnist_data.load_mnist(args.data_dir, getattr(args, "train_subset", None),
                                              getattr(args, "val_size", 0))
    except (mnist_data.DataError, OutDirError) as err:
        fail(err)
    if batch_size > len(splits[0]):
        parser.error(f"argument --batch-size: {batch_size} is larger than the {len(splits[0])} training images")
    return splits


def run_script(main, argv=None):
    """Every script's entry point: main(argv); Ctrl-C -> exit 130, a disk error -> one line and exit 2.

    A script that has finished part of its work writes it before it lets Ctrl-C through (its own
    except KeyboardInterrupt); what reaches this function has nothing left to save.
    """
    try:
        main(argv)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C); every file written before is complete", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except WriteError as err:
        fail(f"cannot write {err.filename} ({err.strerror}); every file written before is complete")
    except OSError as err:  # reading, say: the data's own errors are DataError, with their own message
        fail(f"{err.filename or 'a file'}: {err.strerror or err}")


# --- Timing and the machine ---------------------------------------------------------------


def median_seconds(call, repeats=None, seconds=None):
    """Median wall-clock seconds of call() after one warm-up call -> (median, repeats).

    call() must block until its work is done (JAX: block_until_ready). Either `repeats`
    calls are timed, or as many as fit in about `seconds` (3 to 10,000).
    """
    call()  # warm-up, not counted
    if repeats is None:
        start = time.perf_counter()
        call()
        one = time.perf_counter() - start
        repeats = int(min(10_000, max(3, seconds / max(one, 1e-7))))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), repeats


# Student's t quantile t(0.975, df): a 95% interval for a mean of n = df + 1 paired differences. Between two
# entries the smaller df's is used (a wider interval, never a narrower one); above 120, the normal's 1.96.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086,
         25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t_975(df):
    """t(0.975, df) from T_975, df >= 1."""
    return 1.96 if df > 120 else T_975[max(k for k in T_975 if k <= df)]


def mean_std(values):
    """-> (mean, sample standard deviation, or None with fewer than two values)."""
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def paired_difference(a, b):
    """a, b: {seed: value}, two settings run with the same seeds (the same initial weights and batch order)
    -> dict(seeds, mean, low, high): the mean of a - b over their common seeds and its 95% t interval
    (low and high None with fewer than 2 seeds). Pairing removes what the seed does to both."""
    seeds = sorted(set(a) & set(b))
    differences = [a[s] - b[s] for s in seeds]
    if not differences:
        return dict(seeds=[], mean=None, low=None, high=None)
    mean, std = mean_std(differences)
    half = None if std is None else t_975(len(seeds) - 1) * std / math.sqrt(len(seeds))
    return dict(seeds=seeds, mean=mean, low=None if half is None else mean - half,
                high=None if half is None else mean + half)


def verdict(difference, points=100):
    """A paired difference in words, only as strong as its 95% interval: "higher: ...", "lower: ...",
    "cannot tell apart: ..." (the interval holds 0), or "too few seeds to say"; in points (x 100)."""
    if difference["low"] is None:
        return "too few seeds to say"
    low, high = points * difference["low"], points * difference["high"]
    interval = f"{points * difference['mean']:+.2f} [{low:+.2f}, {high:+.2f}]"
    if difference["low"] > 0:
        return f"higher: {interval}"
    if difference["high"] < 0:
        return f"lower: {interval}"
    return f"cannot tell apart: {interval}"


def machine():
    """What the numbers were measured on: CPU model, its flags, cores, memory (Linux; None elsewhere)."""
    info = dict(cpu_model=platform.processor() or None, cpu_flags=None, cpu_count=os.cpu_count(), memory_gb=None)
    try:
        with open("/proc/cpuinfo") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)  # the last CPU's, all alike
        info["cpu_model"] = fields.get("model name\t", "").strip() or info["cpu_model"]
        info["cpu_flags"] = fields.get("flags\t\t", "").strip() or None
        with open("/proc/meminfo") as f:
            kib = int(next(line for line in f if line.startswith("MemTotal:")).split()[1])
        info["memory_gb"] = round(kib / 2 ** 20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    return info


# --- Provenance: where a result comes from --------------------------------------------------

_run = dict(command="python", code=None)  # set by record_command(): what provenance() reports


def record_command(script, argv):
    """Every main calls this first: remember the command, and the code version as it is now, after the
    imports (a file edited while the run goes on does not change what ran) -> argv as a list."""
    argv = sys.argv[1:] if argv is None else list(argv)
    _run.update(command=command_line(script, argv), code=code_version())
    return argv


def _git(*args):
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def code_version():
    """The code that ran: {commit, dirty, untracked, files: {path: sha256 of each of this repository's .py files
    the run imported}, hash: sha256 over those}.

    Only imported .py files count (tests and results/ aside), so that a commit that changes docs, tests or
    another script is not a new version of this run's code. dirty: one of them differs from the commit, or
    is not in git at all (untracked lists those); None without git.
    """
    files = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path or not path.endswith(".py") or not os.path.isabs(path) or not os.path.isfile(path):
            continue  # a module that no file on disk is (torch makes some)
        relative = os.path.relpath(path, ROOT)
        if relative.startswith("..") or relative.startswith(("tests" + os.sep, "results" + os.sep)):
            continue  # not this repository's, or a test's or a tool's: not the code under study
        with open(path, "rb") as f:
            files[relative] = hashlib.sha256(f.read()).hexdigest()[:16]
    files = dict(sorted(files.items()))
    tracked = _git("ls-files", "-z", "--", *files)
    status = _git("status", "--porcelain", "--", *files)
    commit = _git("rev-parse", "HEAD")
    untracked = None if tracked is None else sorted(set(files) - set(tracked.split("\0")))
    return dict(commit=commit.strip() if commit else None, dirty=None if status is None else bool(status.strip()),
                untracked=untracked, hash=hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16], files=files)


def versions():
    """The versions of the libraries this run imported."""
    found = dict(python=platform.python_version())
    for name in ("jax", "jaxlib", "numpy", "torch", "torchvision", "matplotlib"):
        module = sys.modules.get(name)
        if module is not None:
            found[name] = getattr(module, "__version__", None)
    return found


def provenance():
    """-> {command, versions, machine, device, code}: what every file this repository writes records."""
    found = machine()
    flags = (found.pop("cpu_flags") or "").split()
    found["avx512"] = "avx512f" in flags if flags else None
    info = dict(command=_run["command"], versions=versions(), machine=found, code=_run["code"] or code_version())
    jax = sys.modules.get("jax")
    if jax is not None:
        device = jax.devices()[0]
        info["device"] = dict(name=str(device), kind=device.device_kind, count=jax.device_count())
    return info


PROVENANCE_MARK = "provenance: "  # text files end with a comment line: PROVENANCE_MARK + JSON


def read_provenance(path):
    """The provenance a file written here records, or None: a JSON file's "provenance", a text file's
    last comment line, a PNG's text chunk."""
    try:
        if path.endswith(".json"):
            with open(path) as f:
                return json.load(f).get("provenance")
        if path.endswith(".png"):
            from PIL import Image  # matplotlib's own dependency

            with Image.open(path) as image:
                text = image.text.get("provenance")
            return json.loads(text) if text else None
        with open(path) as f:
            lines = f.read().rstrip("\n").splitlines()
    except (OSError, ValueError, AttributeError):
        return None
    last = lines[-1] if lines else ""
    start = last.find(PROVENANCE_MARK)
    if start < 0:
        return None
    body = last[start + len(PROVENANCE_MARK):].removesuffix("-->").strip()
    try:
        return json.loads(body)
    except ValueError:
        return None


# --- Where results go ---------------------------------------------------------------------


class OutDirError(Exception):
    """An output folder or file cannot be used; the message is one line for the user."""


_created_out_dirs = []  # folders claim_out_dir made: removed at exit if the run left them empty


def claim_out_dir(path, flag="--out"):
    """Create --out, or accept it when empty; refuse a folder that already holds files."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutDirError(f"{flag} {path}: is a file, not a folder")
    if os.path.isdir(path) and os.listdir(path):
        shown = ", ".join(sorted(os.listdir(path))[:3])
        raise OutDirError(f"{flag} {path}: already holds files ({shown}, ...); a run never mixes its "
                          f"results with another's: choose a new or empty folder")
    missing = []
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise OutDirError(f"{flag} {path}: cannot be created ({err.strerror or err})") from None
    if missing and not _created_out_dirs:
        atexit.register(remove_unused_out_dirs)
    _created_out_dirs.extend(missing)  # deepest first


def claim_out_dir_or_exit(path):
    """claim_out_dir, or end the program with one line and exit status 2."""
    try:
        claim_out_dir(path)
    except OutDirError as err:
        fail(err)


def remove_unused_out_dirs():
    """Remove the folders claim_out_dir created that are still empty (a run that failed early)."""
    while _created_out_dirs:
        folder = _created_out_dirs.pop(0)
        try:
            if os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)
        except OSError:
            pass  # not ours to worry about: it stays


RUNS_DIR = "runs"  # git-ignored: where the scripts write by default; results/ is only ever written on request


def default_out_dir(name):
    """The default --out of a script: runs/NAME, or runs/NAME-2, -3, ... when that one holds files.

    A learner can run the same command twice and lose nothing; an explicit --out is never
    renamed, only refused when it holds files.
    """
    candidates = [os.path.join(RUNS_DIR, name)] + [os.path.join(RUNS_DIR, f"{name}-{i}") for i in range(2, 10_000)]
    return next(c for c in candidates if not (os.path.isdir(c) and os.listdir(c)) and not os.path.isfile(c))


class WriteError(OSError):
    """A file could not be written (disk full, no permission); its filename is the file's path."""


def _atomic_write(path, write):
    """Call write(file object) on a temporary file beside `path`, then rename it to `path`.

    A failure raises WriteError naming `path`, so that the one-line message can say which file failed.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    except OSError as err:
        raise WriteError(err.errno, err.strerror, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            raise WriteError(err.errno, err.strerror or str(err), path) from None
        raise


def write_text(path, text, comment="#"):
    """A text file, its last line a comment that records provenance() ("#" for .txt, "<!--" for Markdown)."""
    end = " -->" if comment == "<!--" else ""
    footer = f"{comment} {PROVENANCE_MARK}{json.dumps(provenance(), separators=(',', ':'))}{end}\n"
    _atomic_write(path, lambda f: f.write((text.rstrip("\n") + "\n\n" + footer).encode()))


def write_markdown(path, text):
    write_text(path, text, comment="<!--")


def write_json(path, obj):
    """obj (a dict) as JSON, with a "provenance" entry added."""
    content = json.dumps(dict(obj, provenance=provenance()), indent=2) + "\n"
    _atomic_write(path, lambda f: f.write(content.encode()))


def write_npz(path, arrays):
    """{name: array} as one uncompressed .npz (np.savez), atomically: NumPy alone reads it back."""
    _atomic_write(path, lambda f: np.savez(f, **arrays))


def save_figure(fig, path):
    """Save a matplotlib figure as PNG atomically (provenance in a PNG text chunk), then close it."""
    metadata = {"provenance": json.dumps(provenance(), separators=(",", ":"))}
    try:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100, metadata=metadata)
        _atomic_write(path, lambda f: f.write(buffer.getvalue()))
    finally:
        plt.close(fig)


def stamp_png(path, **extra):
    """Add provenance() (and `extra`) to a PNG that something else drew (a browser's screenshot), atomically."""
    from PIL import Image, PngImagePlugin  # matplotlib's own dependency

    text = PngImagePlugin.PngInfo()
    text.add_text("provenance", json.dumps(dict(provenance(), **extra), separators=(",", ":")))
    with Image.open(path) as image:
        image.load()
    buffer = io.BytesIO()
    image.save(buffer, format="png", pnginfo=text)
    _atomic_write(path, lambda f: f.write(buffer.getvalue()))


# --- Plots of one run ----------------------------------------------------------------


def plot_run_curves(records, title, path, loss_note=""):
    """Training loss and train/(val/)test accuracy against epoch, for one run's records.

    loss_note says where the loss is measured when that is not the params themselves
    (Nesterov: at the look-ahead point).
    """
    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.8))
    ax_loss.plot(epochs, [r["train_loss"] for r in records], marker="o", label="training loss" + loss_note)
    ax_loss.set(xlabel="epoch", ylabel="mean training loss (cross-entropy / 10)", yscale="log")
    ax_loss.legend(fontsize=8)
    for key, label, marker, color in (("train_accuracy", "train", "o", "tab:blue"),
                                      ("val_accuracy", "validation", "s", "tab:green"),
                                      ("test_accuracy", "test", "^", "tab:red")):
        if all(r.get(key) is not None for r in records):
            ax_acc.plot(epochs, [100 * r[key] for r in records], marker=marker, color=color, label=label)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)")
    ax_acc.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def confusion_matrix(true, predicted, num_classes=10):
    """(N,), (N,) int -> counts (num_classes, num_classes), rows true, columns predicted."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (true, predicted), 1)
    return counts


def plot_confusion(true, predicted, title, path):
    """The confusion matrix with its counts written in; the colour is log(1 + count), so that the few
    errors off the diagonal show next to the thousands on it."""
    counts = confusion_matrix(true, predicted)
    fig, ax = plt.subplots(figsize=(6.2, 5))
    image = ax.imshow(np.log1p(counts), cmap="Blues")
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = [t for t in (0, 1, 10, 100, 1000) if t <= counts.max()]
    bar.set_ticks(np.log1p(ticks), labels=[str(t) for t in ticks])
    bar.set_label("count (colour: log(1 + count))")
    for i in range(10):
        for j in range(10):
            ax.text(j, i, counts[i, j], ha="center", va="center", fontsize=7,
                    color="white" if i == j else "black")
    ax.set(xlabel="predicted", ylabel="true", xticks=range(10), yticks=range(10), title=title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_misclassified(images, true, predicted, path, max_shown=40):
    """A grid of up to max_shown misclassified images (N, 28, 28), labelled 'true -> predicted'."""
    wrong = np.flatnonzero(true != predicted)[:max_shown]
    cols = 10
    rows = max(1, -(-len(wrong) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 1.05), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong):
        ax.imshow(images[i], cmap="gray_r")
        ax.set_title(f"{true[i]} -> {predicted[i]}", fontsize=8)
    fig.suptitle(f"first {len(wrong)} of {int(np.sum(true != predicted))} misclassified test digits "
                 f"(above each: true -> predicted)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
