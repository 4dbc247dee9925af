"""For maintainers: regenerate this folder, all of it or some parts, with the docs' own commands; check it.

    python results/regenerate.py --list              # the parts, what each writes, how long it took
    python results/regenerate.py paths step_sizes    # regenerate two parts
    python results/regenerate.py all                 # everything (about 2.6 h on 2 CPU cores)
    python results/regenerate.py --check             # one code version; the digits from one kind of CPU?
    python results/regenerate.py --verify seed0      # rerun a cheap slice of a part: the same digits?

Each part is the command a chapter of docs/ (or the README) shows a learner, run from the
repository root with its output sent into results/: the same command with `--out results/...`.
A tests/test_docs_commands.py test checks that every command here is, but for where its output
goes, a command the docs show. MNIST comes from where the scripts look: $MNIST_DATA_DIR, else ./data.

Nothing is deleted or mixed: a part whose outputs exist already is refused before anything
runs. Move the old outputs away first (git rm -r results/NAME, or mv), then run again.

Two kinds of part. A timing part (TIMING) is measured in seconds that the docs compare: run it on a quiet
machine, and all of them on one machine. Every other part is a result in digits (losses, accuracies): those
follow the CPU's vector ISA (AVX-512, AVX2, ...), because the CPU's matrix-multiply kernels are chosen by it
at run time (README, "Results and how they are made"), so they may be remade on any machine whose CPU has the
same ISA, in another session, and agree to the last bit: --verify shows it. (host_digits, made on this CPU and
on an emulated one, shows which operations differ.)

--check reads the provenance every file records (provenance.provenance: a JSON file's "provenance",
a text file's last line, a PNG's text chunk) and fails (exit status 4) when a file records none or belongs
to no part, when two files ran different contents of the same module, a module that differs from its
commit or from the tree's file now, when two digit files come from CPUs of different ISAs or under
different XLA_FLAGS, or when two timing files come from different machines. It names the files.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from plumbing import exits, provenance  # noqa: E402

OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsprop", "adam")
SWEEP = ("rmsprop:lr=0.00003,rho=0.9 rmsprop:lr=0.00003,rho=0.99 rmsprop:lr=0.0001,rho=0.9 "
         "rmsprop:lr=0.0001,rho=0.99 rmsprop:lr=0.0003,rho=0.9 rmsprop:lr=0.0003,rho=0.99 rmsprop:lr=0.001,rho=0.9 "
         "rmsprop:lr=0.001,rho=0.99 adam:lr=0.0003 adam:lr=0.0001 adam:lr=0.00003 adam:eps=0.0001 adam:eps=0.01 "
         "adam:eps=1").split()
SWEEP_SEEDS = "rmsprop:lr=0.0001,rho=0.99 rmsprop:lr=0.0002,rho=0.9 adam:lr=0.0003 adam:eps=0.001".split()
TUNED = ("sgd:lr=0.1 momentum:lr=0.0316227766 nesterov:lr=0.01 rmsprop:lr=0.0003162278 adam:lr=3.16228e-05 "
         "adam:lr=0.001,eps=0.01").split()  # the settings results/tuning selected: its report, one model at a time
REPORT_SEEDS = [str(seed) for seed in range(3, 13)]
MACHINE_KEYS = ("cpu_model", "cpu_count", "memory_gb")  # what "one machine" means to --check
DIGITS_KEYS = ("isa", "xla_flags")  # what makes two CPUs give the same digits (see the docstring)
TIMING = ("train_speed", "verify_vectors", "many_machines")  # the parts whose seconds the docs compare
HOSTS = ("host_digits",)  # the parts made on two CPUs on purpose (one emulated): no one-ISA rule for them
STUDY = ("tune_optimizers.py --vmap --optimizers sgd adam --lrs 0.01 0.1 --seeds 0 --report-seeds 1 2 "
         "--epochs 2").split()  # docs/A4's small study, as one process and as two
PROCESSES = "--coordinator 127.0.0.1:12355 --num-processes 2".split()


def step(command, out, env=None, out_env=None, beside=()):
    """One command (a list, as the docs show it) -> the argv to run, with --out, and its --out.

    env: environment variables for it. out_env: instead of --out, the environment variable that names the
    output (the explorer's screenshot). beside: commands started at the same time, which write nothing
    (the other processes of a multi-process study)."""
    return dict(argv=command if out_env else command + ["--out", out], out=out,
                env=dict(env or {}, **({out_env: out} if out_env else {})), beside=[list(b) for b in beside])


# name -> (minutes it took when it last ran, its steps): wall-clock minutes of the last regeneration, on the
# 2-core AMD EPYC its files name, most parts with other work beside them (tests, an emulator), so a quiet
# machine is faster; the timing parts (TIMING) and tuning-one-at-a-time ran alone.
PARTS = {
    "seed0": (6.5, [step(["python", "mlp_mnist.py", "--optimizer", name], f"results/seed0/{name}")
                  for name in OPTIMIZERS]),
    "rmsprop-lr1e5": (0.3, [step("python mlp_mnist.py --optimizer rmsprop --lr 100000 --epochs 2 --train-subset 6000"
                                 .split(), "results/rmsprop-lr1e5")]),
    "comparison": (12.5, [step(["python", "compare_optimizers.py"], "results/comparison")]),
    "comparison-vmap": (7.3, [step(["python", "compare_optimizers.py", "--vmap"], "results/comparison-vmap")]),
    "comparison-device": (7.3, [step(["python", "compare_optimizers.py", "--loader", "device"],
                                   "results/comparison-device")]),  # docs/04: the loader apart from vmap
    "sweep": (5.7, [step(["python", "compare_optimizers.py", "--configs", *SWEEP, "--seeds", "0"], "results/sweep")]),
    "sweep-seeds": (4.9, [step(["python", "compare_optimizers.py", "--configs", *SWEEP_SEEDS], "results/sweep-seeds")]),
    "step_sizes": (0.6, [step(["python", "step_sizes.py"], "results/step_sizes")]),
    "paths": (0.3, [step(["python", "optimizer_paths.py"], "results/paths")]),
    "sharpness": (5.1, [step(["python", "sharpness.py"], "results/sharpness")]),
    "tuning": (73.2, [step(["python", "tune_optimizers.py", "--vmap"], "results/tuning")]),
    "tuning-one-at-a-time": (20, [step(["python", "compare_optimizers.py", "--configs", *TUNED, "--seeds",
                                        *REPORT_SEEDS, "--val-size", "10000", "--loader", "device"],
                                       "results/tuning-one-at-a-time")]),  # docs/06: the program's share
    "train_speed": (8.5, [step(["python", "benchmarks/train_speed.py"], "results/train_speed")]),
    "verify_vectors": (1.3, [step(["python", "verify_vectors.py"], f"results/verify_vectors{repeat}")  # 3 runs:
                             for repeat in ("", "/repeat-2", "/repeat-3")]),  # docs/A1 quotes their spread
    "explorer": (0.5, [step("python -m pytest tests/test_explorer.py -k browser".split(), "results/explorer.png",
                            out_env="EXPLORER_SCREENSHOT")]),  # docs/03's screenshot of docs/explorer.html
    "host_digits": (2.8, [step(["python", "benchmarks/host_digits.py"], "results/host_digits/this-cpu"),  # README
                          step(["python", "benchmarks/host_digits.py"], "results/host_digits/this-cpu-pinned",
                               env=dict(XLA_FLAGS="--xla_cpu_max_isa=AVX2")),
                          step(["python", "benchmarks/host_digits.py", "--emulate", "EPYC-Rome"],
                               "results/host_digits/epyc-rome"),
                          step(["python", "benchmarks/host_digits.py", "--compare", "results/host_digits/this-cpu",
                                "results/host_digits/epyc-rome"], "results/host_digits/comparison"),
                          step(["python", "benchmarks/host_digits.py", "--compare",
                                "results/host_digits/this-cpu-pinned", "results/host_digits/epyc-rome"],
                               "results/host_digits/comparison-pinned")]),
    "many_machines": (1.8, [step(["python", *STUDY], "results/many_machines/one-process",  # docs/A4: 2 devices in
                               env=dict(JAX_NUM_CPU_DEVICES="2")),                      # one process, then
                          step(["python", *STUDY, *PROCESSES, "--process-id", "0"],      # 1 in each of 2
                               "results/many_machines/two-processes",
                               beside=[["python", *STUDY, *PROCESSES, "--process-id", "1"]])]),
}
# --verify PART: a cheap slice of the part -> (its command, with --out added, then pairs (file it writes,
# the committed file it must equal, which entries to compare)). Seconds and provenance are never compared.
VERIFY = {
    "seed0": (["python", "mlp_mnist.py", "--optimizer", "sgd", "--epochs", "2"],  # 2 of the 10 epochs
              [("metrics.json", "results/seed0/sgd/metrics.json", lambda d: d["epochs"][:2])]),
    "rmsprop-lr1e5": (PARTS["rmsprop-lr1e5"][1][0]["argv"][:-2],
                      [("metrics.json", "results/rmsprop-lr1e5/metrics.json", lambda d: d["epochs"])]),
    "paths": (["python", "optimizer_paths.py"], [(name, f"results/paths/{name}", lambda d: d)
                                                  for name in ("paths.json", "rates.json")]),
    "step_sizes": (["python", "step_sizes.py"],
                   [("step_sizes.json", "results/step_sizes/step_sizes.json", lambda d: d)]),
}


def outputs(name):
    """The paths a part writes."""
    return [s["out"] for s in PARTS[name][1]]


def files_under(folder):
    """Every file under `folder` (results/) that is committed: not this script, nor what .gitignore keeps out
    (checkpoints and models: *.npz, checkpoints/)."""
    for parent, folders, names in os.walk(folder):
        folders[:] = sorted(f for f in folders if f not in ("__pycache__", "checkpoints"))
        for name in sorted(names):
            path = os.path.join(parent, name)
            if os.path.abspath(path) != os.path.abspath(__file__) and not name.endswith(".npz"):
                yield path


def part_of(shown):
    """results/... -> the part that writes it, or None."""
    return next((name for name in PARTS for out in outputs(name) if shown == out or shown.startswith(out + "/")),
                None)


def grouped(problems, what, groups, keys):
    """More than one group of files -> a problem line per group: "what {key: value}: N files, e.g. ..."."""
    if len(groups) > 1:
        for values, paths in groups.items():
            problems.append(f"{what} {dict(zip(keys, values))}: {len(paths)} files, e.g. {paths[0]}")


def tree_digest(root, module):
    """`module` (a path under root) as the tree has it now -> the digest provenance would record, or None: gone."""
    path = os.path.join(root, module)
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def check(folder):
    """-> the problems of results/ ([line, ...]): files with no provenance or no part, more than one code
    version, a version that is not the code of the tree folder sits in, digit files from CPUs of different
    ISAs (or XLA flags), timing files from different machines."""
    root = os.path.dirname(os.path.abspath(folder))
    problems, timing_machines, digits, modules = [], {}, {}, {}
    for path in files_under(folder):
        shown = os.path.join("results", os.path.relpath(path, folder))
        found = provenance.read_provenance(path)
        part = part_of(shown)
        if not found or "code" not in found or "machine" not in found:
            problems.append(f"{shown}: records no provenance")
            continue
        if part is None:
            problems.append(f"{shown}: no part of results/regenerate.py writes it")
        elif part in HOSTS:
            pass  # two CPUs on purpose
        elif part in TIMING:
            machine = tuple(found["machine"].get(key) for key in MACHINE_KEYS)
            timing_machines.setdefault(machine, []).append(shown)
        elif "isa" not in found["machine"] or "xla_flags" not in found:
            problems.append(f"{shown}: records no ISA or XLA flags (made before they were recorded)")
        else:
            digits.setdefault((found["machine"]["isa"], found["xla_flags"]), []).append(shown)
        for module, digest in found["code"]["files"].items():
            modules.setdefault(module, {}).setdefault(digest, []).append(shown)
        if found["code"].get("dirty"):
            problems.append(f"{shown}: ran with .py files that differ from commit {found['code']['commit']}")
    grouped(problems, "timing files from machine", timing_machines, MACHINE_KEYS)
    grouped(problems, "digit files from", digits, DIGITS_KEYS)
    for module, versions in modules.items():
        if len(versions) > 1:
            for digest, paths in versions.items():
                problems.append(f"{module} at {digest}: {len(paths)} files, e.g. {', '.join(paths[:2])}")
        now = tree_digest(root, module)
        for digest, paths in versions.items():
            if digest != now:
                problems.append(f"{module}: {len(paths)} files ran it at {digest}, e.g. {paths[0]}, but the tree's is "
                                + (f"at {now}" if now else "gone") + ": regenerate them")
    return problems


def run_step(s):
    """Run one step (and the commands beside it, at the same time) from the repository root -> its exit status."""
    print("$ " + "".join(f"{k}={v} " for k, v in s["env"].items()) + " ".join(s["argv"])
          + "".join(f" & {' '.join(b)}" for b in s["beside"]), flush=True)
    env = dict(os.environ, **s["env"])
    beside = [subprocess.Popen([sys.executable] + b[1:], cwd=ROOT, env=env) for b in s["beside"]]
    code = subprocess.run([sys.executable] + s["argv"][1:], cwd=ROOT, env=env).returncode
    codes = [b.wait() for b in beside]
    return next((c for c in [code] + codes if c != 0), 0)


def without(entries):
    """JSON entries without what no two runs share: seconds and provenance (and where the output went)."""
    if isinstance(entries, dict):
        return {k: without(v) for k, v in entries.items()
                if "second" not in k and k not in ("provenance", "out", "data_dir")}
    if isinstance(entries, list):
        return [without(v) for v in entries]
    return entries


def first_difference(a, b, where=""):
    """-> where two JSON values first differ ("epochs[1].train_loss: 0.0123 != 0.0124"), or None: equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                return f"{where}.{key}: only in one of them"
            found = first_difference(a[key], b[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where}: {len(a)} entries != {len(b)}"
        return next((f for i, (x, y) in enumerate(zip(a, b)) if (f := first_difference(x, y, f"{where}[{i}]"))), None)
    return None if a == b else f"{where}: {a!r} != {b!r}"


def verify(name, root=ROOT):
    """Rerun `name`'s slice (VERIFY) and compare it with the committed files under root, bit for bit
    -> [committed file that differs, ...]."""
    command, pairs = VERIFY[name]
    here = dict(isa=provenance.vector_isa(provenance.machine()["cpu_flags"]), xla_flags=os.environ.get("XLA_FLAGS"))
    for _, committed, _ in pairs:
        made = provenance.read_provenance(os.path.join(root, committed)) or {}
        there = dict(isa=made.get("machine", {}).get("isa"), xla_flags=made.get("xla_flags"))
        if there["isa"] is None:
            exits.fail(f"{committed} records no ISA (made before it was recorded): regenerate the part first",
                       exits.EXIT_CHECK_FAILED)
        if there != here:
            exits.fail(f"{committed} was made on a CPU with {there}, this one has {here}: their digits differ "
                       f"by design; verify it on a CPU like {there['isa']}", exits.EXIT_CHECK_FAILED)
    problems = []
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, name)
        code = run_step(step(command, out))
        if code != 0:
            exits.fail(f"--verify {name}: `{' '.join(command)}` exited with {code}", code)
        for written, committed, entries in pairs:
            with open(os.path.join(out, written)) as f, open(os.path.join(root, committed)) as g:
                difference = first_difference(without(entries(json.load(f))), without(entries(json.load(g))))
            print(f"{committed}: " + ("equal, bit for bit" if difference is None else f"DIFFERS at {difference}"))
            problems += [committed] if difference else []
    return problems


def main(argv=None):
    argv = provenance.record_command(__file__, argv)
    p = argparse.ArgumentParser(description="Regenerate results/ with the docs' own commands (for maintainers).",
                                epilog="Exit status: 0 done, 2 bad input, 4 the check failed (--check, --verify), "
                                       "or a part's own exit status.")
    p.add_argument("parts", nargs="*", metavar="PART", help="parts to regenerate, or 'all' (see --list; default: none)")
    p.add_argument("--list", action="store_true", help="list the parts, their outputs and minutes, and stop "
                                                       "(default: off)")
    p.add_argument("--check", action="store_true", help="check that results/ comes from one code version, its digits "
                                                        "from one ISA and its timings from one machine, and stop "
                                                        "(default: off)")
    p.add_argument("--verify", metavar="PART", choices=list(VERIFY), help=f"rerun a cheap slice of PART "
                   f"({', '.join(VERIFY)}) and compare it with the committed files, bit for bit (default: off)")
    args = p.parse_args(argv)
    if args.verify:
        problems = verify(args.verify)
        if problems:
            exits.fail(f"--verify {args.verify}: {len(problems)} of the committed files differ (above)",
                       exits.EXIT_CHECK_FAILED)
        return
    if args.check:
        problems = check(os.path.join(ROOT, "results"))
        for line in problems:
            print(line)
        if problems:
            exits.fail(f"results/ does not come from one code version, one ISA and one timing machine "
                       f"({len(problems)} problems above)", exits.EXIT_CHECK_FAILED)
        files = list(files_under(os.path.join(ROOT, "results")))
        print(f"{len(files)} files: one code version, the digits from one ISA, the timings from one machine")
        return
    if args.list or not args.parts:
        for name, (minutes, steps) in PARTS.items():
            print(f"{name:<16} ~{minutes:g} min   " + ", ".join(outputs(name)))
        print(f"all              ~{sum(m for m, _ in PARTS.values()):g} min")
        return
    names = list(PARTS) if args.parts == ["all"] else args.parts
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        p.error(f"unknown part {unknown[0]!r} (choose from {', '.join(PARTS)}, or all)")
    existing = [path for n in names for path in outputs(n) if os.path.lexists(os.path.join(ROOT, path))]
    if existing:
        exits.fail(f"{existing[0]} exists{f' (and {len(existing) - 1} more)' if len(existing) > 1 else ''}: "
                   f"move the old outputs away first (git rm -r, or mv); nothing was run")
    total = time.perf_counter()
    for name in names:
        start = time.perf_counter()
        for s in PARTS[name][1]:
            code = run_step(s)
            if code != 0:
                exits.fail(f"part {name}: `{' '.join(s['argv'])}` exited with {code}", code)
        print(f"== {name}: {(time.perf_counter() - start) / 60:.1f} minutes", flush=True)
    print(f"== all {len(names)} parts: {(time.perf_counter() - total) / 60:.1f} minutes", flush=True)


if __name__ == "__main__":
    exits.run_script(main)
