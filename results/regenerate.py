"""For maintainers: regenerate this folder, all of it or some parts, with the docs' own commands.

    python results/regenerate.py --list              # the parts, what each writes, how long it took
    python results/regenerate.py paths step_sizes    # regenerate two parts
    python results/regenerate.py all                 # everything (about an hour on 2 CPU cores)

Each part is the command a chapter of docs/ (or the README) shows a learner, run from the
repository root with its output sent into results/: the same command with `--out results/...`,
or its printed output saved to a .txt file. A tests/test_docs_commands.py test checks that every
command here is, but for where its output goes, a command the docs show. MNIST comes from where
the scripts look: $MNIST_DATA_DIR, else ./data.

Nothing is deleted or mixed: a part whose outputs exist already is refused before anything
runs. Move the old outputs away first (git rm -r results/NAME, or mv), then run again.
Run the parts one after another on a quiet machine: their timings are part of the results.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsprop", "adam")
SWEEP = ("rmsprop:lr=0.00003,rho=0.9 rmsprop:lr=0.00003,rho=0.99 rmsprop:lr=0.0001,rho=0.9 "
         "rmsprop:lr=0.0001,rho=0.99 rmsprop:lr=0.0003,rho=0.9 rmsprop:lr=0.0003,rho=0.99 rmsprop:lr=0.001,rho=0.9 "
         "rmsprop:lr=0.001,rho=0.99 adam:lr=0.0003 adam:lr=0.0001 adam:lr=0.00003 adam:eps=0.0001 adam:eps=0.01 "
         "adam:eps=1").split()
SWEEP_SEEDS = "rmsprop:lr=0.0001,rho=0.99 rmsprop:lr=0.0002,rho=0.9 adam:lr=0.0003 adam:eps=0.001".split()


def step(command, out=None, stdout=None):
    """One command (a list, as the docs show it) -> (the argv to run, its --out, the file its stdout goes to)."""
    return dict(argv=command + (["--out", out] if out else []), out=out, stdout=stdout)


# name -> (minutes it took on the machine that wrote results/, its steps). The minutes are wall-clock
# times of the last regeneration, on the 2-core CPU that results/train_speed.txt describes.
PARTS = {
    "seed0": (2, [step(["python", "mlp_mnist.py", "--optimizer", name], f"results/seed0/{name}",
                       f"results/seed0/{name}.txt") for name in OPTIMIZERS]),
    "rmsprop-lr1e5": (0.3, [step("python mlp_mnist.py --optimizer rmsprop --lr 100000 --epochs 2 --train-subset 6000"
                                 .split(), "results/rmsprop-lr1e5", "results/rmsprop-lr1e5.txt")]),
    "comparison": (5, [step(["python", "compare_optimizers.py"], "results/comparison")]),
    "comparison-vmap": (4, [step(["python", "compare_optimizers.py", "--vmap-seeds"], "results/comparison-vmap")]),
    "sweep": (4, [step(["python", "compare_optimizers.py", "--configs", *SWEEP, "--seeds", "0"], "results/sweep")]),
    "sweep-seeds": (3, [step(["python", "compare_optimizers.py", "--configs", *SWEEP_SEEDS], "results/sweep-seeds")]),
    "step_sizes": (0.5, [step(["python", "step_sizes.py"], stdout="results/step_sizes.txt")]),
    "paths": (0.2, [step(["python", "optimizer_paths.py"], "results/paths")]),
    "sharpness": (3, [step(["python", "sharpness.py"], "results/sharpness")]),
    "tuning": (70, [step(["python", "tune_optimizers.py"], "results/tuning")]),  # run in 3 widening steps: docs/07
    "train_speed": (6, [step(["python", "benchmarks/train_speed.py"], stdout="results/train_speed.txt"),
                        step(["python", "benchmarks/train_speed.py", "--json"], stdout="results/train_speed.json")]),
    "verify_vectors": (1.2, [step(["python", "verify_vectors.py"], f"results/verify_vectors{repeat}")  # 3 runs:
                             for repeat in ("", "/repeat-2", "/repeat-3")]),  # docs/09 quotes their spread
}


def outputs(name):
    """The paths a part writes."""
    return [path for s in PARTS[name][1] for path in (s["out"], s["stdout"]) if path]


def run_step(s):
    """Run one step from the repository root; its stdout (also shown) goes to s["stdout"], atomically."""
    argv = [sys.executable] + s["argv"][1:]
    print("$ " + " ".join(s["argv"]), flush=True)
    if not s["stdout"]:
        return subprocess.run(argv, cwd=ROOT).returncode
    folder = os.path.join(ROOT, os.path.dirname(s["stdout"]))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".regenerate.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for line in process.stdout:
            print(line, end="", flush=True)
            f.write(line)
        code = process.wait()
    if code == 0:
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(ROOT, s["stdout"]))
    else:
        os.unlink(tmp)
    return code


def main(argv=None):
    p = argparse.ArgumentParser(description="Regenerate results/ with the docs' own commands (for maintainers).")
    p.add_argument("parts", nargs="*", metavar="PART", help="parts to regenerate, or 'all' (see --list)")
    p.add_argument("--list", action="store_true", help="list the parts, their outputs and minutes, and stop")
    args = p.parse_args(argv)
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
        print(f"error: {existing[0]} exists{f' (and {len(existing) - 1} more)' if len(existing) > 1 else ''}: "
              f"move the old outputs away first (git rm -r, or mv); nothing was run", file=sys.stderr)
        sys.exit(2)
    for name in names:
        start = time.perf_counter()
        for s in PARTS[name][1]:
            code = run_step(s)
            if code != 0:
                print(f"error: part {name}: `{' '.join(s['argv'])}` exited with {code}", file=sys.stderr)
                sys.exit(code)
        print(f"== {name}: {(time.perf_counter() - start) / 60:.1f} minutes", flush=True)


if __name__ == "__main__":
    main()
