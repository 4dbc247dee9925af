"""Where a result comes from: the command, the library versions, the machine and the code version that every
written file records (provenance()), and reading it back (read_provenance)."""
import hashlib
import json
import os
import platform
import subprocess
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository


def command_line(script, argv):
    """'python SCRIPT ARGS' as a learner types it, from the repository root."""
    return " ".join(["python", os.path.relpath(os.path.abspath(script), ROOT)] + list(argv))


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


def vector_isa(cpu_flags):
    """The widest vector instructions an x86 CPU has ("AVX-512", "AVX2", "AVX", "SSE4.2"), else the machine
    ("aarch64", ...). The CPU's matrix-multiply kernels are chosen by it at run time, so two CPUs with different
    ISAs round differently: the digits of a result belong to this ISA (README, "Results and how they are made")."""
    flags = set((cpu_flags or "").split())
    for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sse4_2", "SSE4.2")):
        if flag in flags:
            return name
    return platform.machine() or None


def provenance():
    """-> {command, versions, machine, device, code, xla_flags}: what every file this repository writes records."""
    found = machine()
    flags = found.pop("cpu_flags")
    found["avx512"] = "avx512f" in flags.split() if flags else None
    found["isa"] = vector_isa(flags)
    info = dict(command=_run["command"], versions=versions(), machine=found, code=_run["code"] or code_version(),
                xla_flags=os.environ.get("XLA_FLAGS"))  # None: XLA's defaults
    jax = sys.modules.get("jax")
    if jax is not None:
        device = jax.devices()[0]
        info["device"] = dict(name=str(device), kind=device.device_kind, count=jax.device_count())
        if jax.process_count() > 1:  # a multi-process study: its devices are every process's (the machine: this one's)
            info["device"].update(processes=jax.process_count(), local_count=jax.local_device_count())
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
