"""For maintainers: regenerate this folder, all of it or some parts, with the docs' own commands; check it.

    python results/regenerate.py --list              # the parts, what each writes, how long it took
    python results/regenerate.py paths step_sizes    # regenerate two parts
    python results/regenerate.py all                 # everything (about 1 h 45 min on 2 CPU cores)
    python results/regenerate.py --check             # one machine and one code version in every file?

Each part is the command a chapter of docs/ (or the README) shows a learner, run from the
repository root with its output sent into results/: the same command with `--out results/...`.
A tests/test_docs_commands.py test checks that every command here is, but for where its output
goes, a command the docs show. MNIST comes from where the scripts look: $MNIST_DATA_DIR, else ./data.

Nothing is deleted or mixed: a part whose outputs exist already is refused before anything
runs. Move the old outputs away first (git rm -r results/NAME, or mv), then run again.
Run the parts one after another on a quiet machine: their timings are part of the results.

--check reads the provenance every file records (provenance.provenance: a JSON file's "provenance",
a text file's last line, a PNG's text chunk) and fails (exit status 4) when a file records none,
when two files name different machines, or when two files ran different contents of the same
module: the results then do not come from one code version on one machine. It names the files.
"""
import argparse
import os
import subprocess
import sys
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
MACHINE_KEYS = ("cpu_model", "cpu_count", "memory_gb")  # what "one machine" means to --check


def step(command, out, env=None):
    """One command (a list, as the docs show it) -> the argv to run, with --out, and its --out.

    env: instead of --out, an environment variable that names the output (the explorer's screenshot)."""
    return dict(argv=command if env else command + ["--out", out], out=out, env={env: out} if env else {})


# name -> (minutes it took when it last ran, its steps): wall-clock minutes of the last regeneration, on the
# machine its files name (sharpness and train_speed: a 2-core Intel Xeon; the rest: a 2-core AMD EPYC; seed0's
# minutes are its five runs' own seconds plus their start-up, as its log was not kept).
PARTS = {
    "seed0": (3, [step(["python", "mlp_mnist.py", "--optimizer", name], f"results/seed0/{name}")
                  for name in OPTIMIZERS]),
    "rmsprop-lr1e5": (0.3, [step("python mlp_mnist.py --optimizer rmsprop --lr 100000 --epochs 2 --train-subset 6000"
                                 .split(), "results/rmsprop-lr1e5")]),
    "comparison": (8.3, [step(["python", "compare_optimizers.py"], "results/comparison")]),
    "comparison-vmap": (7.3, [step(["python", "compare_optimizers.py", "--vmap"], "results/comparison-vmap")]),
    "comparison-device": (6.6, [step(["python", "compare_optimizers.py", "--loader", "device"],
                                   "results/comparison-device")]),  # docs/04: the loader apart from vmap
    "sweep": (5.9, [step(["python", "compare_optimizers.py", "--configs", *SWEEP, "--seeds", "0"], "results/sweep")]),
    "sweep-seeds": (4.7, [step(["python", "compare_optimizers.py", "--configs", *SWEEP_SEEDS], "results/sweep-seeds")]),
    "step_sizes": (0.3, [step(["python", "step_sizes.py"], "results/step_sizes")]),
    "paths": (0.1, [step(["python", "optimizer_paths.py"], "results/paths")]),
    "sharpness": (9.8, [step(["python", "sharpness.py"], "results/sharpness")]),
    "tuning": (63.4, [step(["python", "tune_optimizers.py", "--vmap"], "results/tuning")]),
    "train_speed": (6.4, [step(["python", "benchmarks/train_speed.py"], "results/train_speed")]),
    "verify_vectors": (1.2, [step(["python", "verify_vectors.py"], f"results/verify_vectors{repeat}")  # 3 runs:
                             for repeat in ("", "/repeat-2", "/repeat-3")]),  # docs/A1 quotes their spread
    "explorer": (0.3, [step("python -m pytest tests/test_explorer.py -k browser".split(), "results/explorer.png",
                            env="EXPLORER_SCREENSHOT")]),  # docs/03's screenshot of docs/explorer.html
}


def outputs(name):
    """The paths a part writes."""
    return [s["out"] for s in PARTS[name][1]]


def files_under(folder):
    """Every file under `folder` (results/), but this script."""
    for parent, _, names in os.walk(folder):
        for name in sorted(names):
            path = os.path.join(parent, name)
            if os.path.abspath(path) != os.path.abspath(__file__) and "__pycache__" not in path:
                yield path


def check(folder):
    """-> the problems of results/: files with no provenance, other machines, other code -> [line, ...]."""
    problems, machines, modules = [], {}, {}
    for path in files_under(folder):
        shown = os.path.relpath(path, ROOT)
        found = provenance.read_provenance(path)
        if not found or "code" not in found or "machine" not in found:
            problems.append(f"{shown}: records no provenance")
            continue
        machine = tuple(found["machine"].get(key) for key in MACHINE_KEYS)
        machines.setdefault(machine, []).append(shown)
        for module, digest in found["code"]["files"].items():
            modules.setdefault(module, {}).setdefault(digest, []).append(shown)
        if found["code"].get("dirty"):
            problems.append(f"{shown}: ran with .py files that differ from commit {found['code']['commit']}")
    if len(machines) > 1:
        for machine, paths in machines.items():
            problems.append(f"machine {dict(zip(MACHINE_KEYS, machine))}: {len(paths)} files, e.g. {paths[0]}")
    for module, versions in modules.items():
        if len(versions) > 1:
            for digest, paths in versions.items():
                problems.append(f"{module} at {digest}: {len(paths)} files, e.g. {', '.join(paths[:2])}")
    return problems


def run_step(s):
    """Run one step from the repository root -> its exit status."""
    print("$ " + "".join(f"{k}={v} " for k, v in s["env"].items()) + " ".join(s["argv"]), flush=True)
    return subprocess.run([sys.executable] + s["argv"][1:], cwd=ROOT, env=dict(os.environ, **s["env"])).returncode


def main(argv=None):
    argv = provenance.record_command(__file__, argv)
    p = argparse.ArgumentParser(description="Regenerate results/ with the docs' own commands (for maintainers).",
                                epilog="Exit status: 0 done, 2 bad input, 4 the check failed (--check), or a "
                                       "part's own exit status.")
    p.add_argument("parts", nargs="*", metavar="PART", help="parts to regenerate, or 'all' (see --list; default: none)")
    p.add_argument("--list", action="store_true", help="list the parts, their outputs and minutes, and stop "
                                                       "(default: off)")
    p.add_argument("--check", action="store_true", help="check that every file of results/ records one machine "
                                                        "and one code version, and stop (default: off)")
    args = p.parse_args(argv)
    if args.check:
        problems = check(os.path.join(ROOT, "results"))
        for line in problems:
            print(line)
        if problems:
            exits.fail(f"results/ does not come from one code version on one machine ({len(problems)} "
                       f"problems above)", exits.EXIT_CHECK_FAILED)
        files = list(files_under(os.path.join(ROOT, "results")))
        print(f"{len(files)} files: one machine, one code version")
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
