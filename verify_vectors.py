"""How fast is squaring a vector in JAX, against NumPy and a Python loop? Timed properly.

    python verify_vectors.py                       # sizes 1e3 .. 1e7, a table per size
    python verify_vectors.py --sizes 1000 1e6 --json
    python verify_vectors.py --plot square.png

How the timing is done, because that is the point of this script:
1. Correctness first: every configuration's result must equal NumPy's before anything is
   timed; a mismatch stops the script (exit status 1).
2. JAX runs asynchronously: a call returns before the work is done. Every JAX result is
   waited for with block_until_ready(), or we would time only the dispatch.
3. Three costs are kept apart: copying the input to the device (host -> device), the
   first call (tracing + XLA compilation + one run) and the steady state.
4. Warm-up calls are not counted; the figure is the median of many repeats, as many as fit
   in about --seconds per configuration and size.
Everything is float32.
"""
import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import reporting

LOOP_MAX_SIZE = 100_000  # a Python loop is timed only up to this size (~0.1 s a call here)
POLY = (0.5, -1.25, 2.0, 0.75, -0.5)  # p(x) = 0.5 x^4 - 1.25 x^3 + 2 x^2 + 0.75 x - 0.5


def python_loop_square(x):
    out = np.empty_like(x)
    for i in range(len(x)):
        out[i] = x[i] * x[i]
    return out


def horner(x, xp):
    """p(x) by Horner's rule with array module xp (numpy or jax.numpy): 4 multiplies, 4 adds."""
    result = xp.full_like(x, POLY[0])
    for coefficient in POLY[1:]:
        result = result * x + xp.float32(coefficient)
    return result


def scalar_square(v):
    return v * v


# name -> (function, "numpy" or "jax", what it computes: "square" or "poly")
CONFIGURATIONS = {
    "python loop": (python_loop_square, "numpy", "square"),
    "numpy x * x": (lambda x: x * x, "numpy", "square"),
    "numpy np.square": (np.square, "numpy", "square"),
    "jax.numpy, no jit": (jnp.square, "jax", "square"),
    "jax.jit": (jax.jit(jnp.square), "jax", "square"),
    "jax.vmap, no jit": (jax.vmap(scalar_square), "jax", "square"),
    "jax.jit(jax.vmap)": (jax.jit(jax.vmap(scalar_square)), "jax", "square"),
    "numpy polynomial": (lambda x: horner(x, np), "numpy", "poly"),
    "jax.jit polynomial": (jax.jit(lambda x: horner(x, jnp)), "jax", "poly"),
}
NUMPY_BASELINE = {"square": "numpy x * x", "poly": "numpy polynomial"}  # the "vs NumPy" column
LOOP_BASELINE = {"square": "python loop"}  # the "vs loop" column (no loop for the polynomial)


class MismatchError(Exception):
    """A configuration computed something other than NumPy's answer."""


def reference(kind, x):
    return np.square(x) if kind == "square" else horner(x, np)


def wait(result):
    """Block until a JAX result is computed (NumPy results are ready already)."""
    return result.block_until_ready() if isinstance(result, jax.Array) else result


def check_correctness(configs, x_host, x_device):
    """Run every configuration once and compare with NumPy -> {name: seconds of that first call}.

    Raises MismatchError on the first wrong result, before anything else is timed. For JAX
    that first call at a new size includes tracing and XLA compilation for that shape.
    """
    first_call = {}
    for name, (fn, backend, kind) in configs.items():
        start = time.perf_counter()
        result = wait(fn(x_device if backend == "jax" else x_host))
        first_call[name] = time.perf_counter() - start if backend == "jax" else None
        result, expected = np.asarray(result), reference(kind, x_host)
        wrong = np.flatnonzero(~np.isclose(result, expected, rtol=1e-5, atol=1e-5))
        if len(wrong):
            i = wrong[0]
            raise MismatchError(f"{name!r} gives {result[i]} for x = {x_host[i]}, NumPy gives {expected[i]} "
                                f"({len(wrong)} of {len(x_host)} values differ)")
    return first_call


def measure_size(size, seconds, configs):
    """All timings for one vector size -> dict with one row per configuration."""
    x_host = np.random.default_rng(0).uniform(-2, 2, size).astype(np.float32)
    timed = {name: c for name, c in configs.items() if name != "python loop" or size <= LOOP_MAX_SIZE}
    x_device = jax.device_put(x_host).block_until_ready()
    first_call = check_correctness(timed, x_host, x_device)
    transfer, _ = reporting.median_seconds(lambda: jax.device_put(x_host).block_until_ready(), seconds=seconds / 4)

    rows = {}
    for name, (fn, backend, kind) in timed.items():
        x = x_device if backend == "jax" else x_host
        median, repeats = reporting.median_seconds(lambda: wait(fn(x)), seconds=seconds)
        rows[name] = dict(kind=kind, first_call_s=first_call[name], median_s=median, repeats=repeats,
                          gb_per_s=8 * size / median / 1e9)  # 4 bytes read + 4 written per element
    for row in rows.values():
        loop = rows.get(LOOP_BASELINE.get(row["kind"]))
        row["speedup_vs_numpy"] = rows[NUMPY_BASELINE[row["kind"]]]["median_s"] / row["median_s"]
        row["speedup_vs_loop"] = loop["median_s"] / row["median_s"] if loop else None
    return dict(size=size, host_to_device_s=transfer, rows=rows,
                skipped=[name for name in configs if name not in timed])


def format_table(result):
    def ms(t):
        return "-" if t is None else f"{1e3 * t:10.4f}"

    def ratio(r):
        return "-" if r is None else f"{r:8.2f}x"

    size = result["size"]
    lines = [f"size {size:,} float32 ({4 * size / 1e6:g} MB in, as much out); "
             f"host -> device transfer {ms(result['host_to_device_s']).strip()} ms",
             f"  {'configuration':<20} {'first call ms':>13} {'median ms':>10} {'GB/s':>7} "
             f"{'vs NumPy':>9} {'vs loop':>9}"]
    for name, row in result["rows"].items():
        lines.append(f"  {name:<20} {ms(row['first_call_s']):>13} {ms(row['median_s'])} "
                     f"{row['gb_per_s']:7.2f} {ratio(row['speedup_vs_numpy']):>9} "
                     f"{ratio(row['speedup_vs_loop']):>9}")
    for name in result["skipped"]:
        lines.append(f"  {name:<20} skipped: above {LOOP_MAX_SIZE:,} elements it takes too long")
    return "\n".join(lines)


def plot(results, path):
    """Median time against size, log-log, one line per configuration."""

    fig, ax = reporting.plt.subplots(figsize=(7, 4.5))
    for name in CONFIGURATIONS:
        points = [(r["size"], r["rows"][name]["median_s"]) for r in results if name in r["rows"]]
        if points:
            ax.plot(*zip(*points), marker="o", label=name, linestyle="--" if "polynomial" in name else "-")
    ax.set(xscale="log", yscale="log", xlabel="vector size (float32 elements)",
           ylabel="median seconds per call",
           title=f"x * x (solid) and a degree-4 polynomial (dashed) on {jax.devices()[0]}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    reporting.save_figure(fig, path)


def size_arg(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value >= 1 and value == int(value) and value <= 1e9):
        raise argparse.ArgumentTypeError(f"{text} is not a whole number from 1 to 1e9")
    return int(value)


def seconds_arg(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 60]")
    return value


def main(argv=None):
    p = argparse.ArgumentParser(description="Time a float32 vector square in JAX, NumPy and a Python loop.")
    p.add_argument("--sizes", type=size_arg, nargs="+", default=[10**3, 10**4, 10**5, 10**6, 10**7],
                   help="vector lengths, e.g. 1000 1e6 (default: 1e3 1e4 1e5 1e6 1e7)")
    p.add_argument("--seconds", type=seconds_arg, default=0.5,
                   help="time spent repeating each configuration at each size (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    p.add_argument("--plot", metavar="FILE.png", help="also draw median time against size (log-log)")
    args = p.parse_args(argv)

    device = str(jax.devices()[0])
    if not args.json:
        print(f"JAX {jax.__version__} on {device}; NumPy {np.__version__}; float32; "
              f"medians over repeats of ~{args.seconds} s each\n")
    results = []
    for size in args.sizes:
        try:
            result = measure_size(size, args.seconds, CONFIGURATIONS)
        except MismatchError as err:
            print(f"error: wrong result at size {size:,}: {err}", file=sys.stderr)
            sys.exit(1)
        results.append(result)
        if not args.json:
            print(format_table(result) + "\n", flush=True)
    if args.json:
        print(json.dumps(dict(device=device, jax=jax.__version__, numpy=np.__version__,
                              seconds=args.seconds, results=results), indent=2))
    if args.plot:
        try:
            plot(results, args.plot)
        except OSError as err:
            print(f"error: --plot {args.plot}: cannot be written ({err.strerror or err})", file=sys.stderr)
            sys.exit(2)
        print(f"wrote {args.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()
