"""How fast is squaring a vector in JAX, against NumPy, a Python loop and the memory floor?

    python verify_vectors.py                       # sizes 1e3 .. 1e7, a table per size, files in runs/verify_vectors
    python verify_vectors.py --sizes 1000 1e6 --json
    python verify_vectors.py --sizes 1e7 --seconds-per-config 2 --out runs/square-1e7

Each run writes table.txt (the tables it prints), results.json and square.png (median time
against size) into --out: a new or empty folder, runs/verify_vectors by default.

How the timing is done, because that is the point of this script:
1. Correctness first: every configuration's result must equal NumPy's before anything is
   timed; a mismatch stops the script (exit status 4, "the check failed"), and only the
   sizes finished before it are written.
2. JAX runs asynchronously: a call returns before the work is done. Every JAX result is
   waited for with block_until_ready(), or we would time only the dispatch.
3. Three costs are kept apart: copying the input to the device (host -> device), the
   first call (tracing + XLA compilation + one run) and the steady state.
4. Warm-up calls are not counted; the figure is the median of many repeats, as many as fit
   in about --seconds-per-config per configuration and size.
5. Memory is made visible: a copy into a preallocated array (np.copyto) is the floor for
   any operation that reads one array and writes another, and the minor page faults per
   call (getrusage) show which configurations get fresh memory from the operating system
   on every call.
6. Two configurations write over their input (a donated JAX buffer, NumPy's out=x): each
   call squares the previous call's output. They are checked on the random input first,
   then timed on ones, whose repeated squares stay 1 (multiplying costs the same for any
   finite float32), and checked again after the timing.
Everything is float32.
"""
import argparse
import json
import sys
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from plumbing import cli, exits, files, plots, provenance, stats

try:
    import resource  # getrusage: page-fault counts (Unix only)
except ImportError:
    resource = None

# Defaults, and why
DEFAULT_SIZES = [10**3, 10**4, 10**5, 10**6, 10**7]  # from dispatch-bound to well past a 32 MB L3 cache
DEFAULT_SECONDS = 0.5  # per configuration and size: 13 configurations x 5 sizes stays under a minute
LOOP_MAX_SIZE = 100_000  # a Python loop is timed only up to this size (~0.1 s a call here)
FAULT_SHARE = 10  # page faults are counted over a tenth as many calls as were timed (at least 3)
POLY = (0.5, -1.25, 2.0, 0.75, -0.5)  # p(x) = 0.5 x^4 - 1.25 x^3 + 2 x^2 + 0.75 x - 0.5


def python_loop_square(x):
    """(n,) -> (n,): one element at a time, in Python."""
    out = np.empty_like(x)
    for i in range(len(x)):
        out[i] = x[i] * x[i]
    return out


def horner(x, xp):
    """(n,) -> (n,): p(x) by Horner's rule with array module xp (numpy or jax.numpy): 4 multiplies, 4 adds."""
    result = xp.full_like(x, POLY[0])
    for coefficient in POLY[1:]:
        result = result * x + xp.float32(coefficient)
    return result


def scalar_square(v):
    return v * v


square_donated = jax.jit(jnp.square, donate_argnums=0)  # XLA may write the output into the input's buffer


# --- How each configuration is called: make(x_host) -> call(), which returns the finished result ---


def numpy_call(fn):
    """fn(x) on the host array; a fresh output each call."""
    return lambda x_host: lambda: fn(x_host)


def jax_call(fn):
    """fn(x) on a device copy of x, made once and not timed; waits for the result."""
    def make(x_host):
        x = jax.device_put(x_host).block_until_ready()
        return lambda: fn(x).block_until_ready()
    return make


def into_output(fn):
    """fn(x, out) into one preallocated output, its pages touched before any call."""
    def make(x_host):
        out = np.full_like(x_host, np.nan)

        def call():
            fn(x_host, out)
            return out
        return call
    return make


def donated_chain(x_host):
    """square_donated on a device buffer that it consumes: each call squares the previous output.

    A device_put buffer may share x_host's memory, which XLA cannot reuse: from the second call
    on (the first is the untimed warm-up) the input is always XLA's own previous output.
    """
    state = [jax.device_put(x_host).block_until_ready()]

    def call():
        state[0] = square_donated(state[0])
        return state[0].block_until_ready()
    return call


def numpy_in_place_chain(x_host):
    """np.multiply(b, b, out=b) on one host buffer: each call squares the previous output."""
    buffer = x_host.copy()
    return lambda: np.multiply(buffer, buffer, out=buffer)


class Configuration(NamedTuple):
    make: Callable  # x_host (n,) float32 -> call(): runs once, returns the finished (n,) result
    kind: str  # what it computes: "square", "copy" or "poly"
    uses_jax: bool  # its first call at a new size traces and compiles
    chained: bool = False  # its output is its next input (timed on ones, see the module docstring)


CONFIGURATIONS = {
    "python loop": Configuration(numpy_call(python_loop_square), "square", False),
    "numpy x * x": Configuration(numpy_call(lambda x: x * x), "square", False),
    "numpy np.square": Configuration(numpy_call(np.square), "square", False),
    "numpy out=o": Configuration(into_output(lambda x, out: np.multiply(x, x, out=out)), "square", False),
    "numpy out=x (in place)": Configuration(numpy_in_place_chain, "square", False, chained=True),
    "memory floor (copy)": Configuration(into_output(lambda x, out: np.copyto(out, x)), "copy", False),
    "jax.numpy, no jit": Configuration(jax_call(jnp.square), "square", True),
    "jax.jit": Configuration(jax_call(jax.jit(jnp.square)), "square", True),
    "jax.jit, donated": Configuration(donated_chain, "square", True, chained=True),
    "jax.vmap, no jit": Configuration(jax_call(jax.vmap(scalar_square)), "square", True),
    "jax.jit(jax.vmap)": Configuration(jax_call(jax.jit(jax.vmap(scalar_square))), "square", True),
    "numpy polynomial": Configuration(numpy_call(lambda x: horner(x, np)), "poly", False),
    "jax.jit polynomial": Configuration(jax_call(jax.jit(lambda x: horner(x, jnp))), "poly", True),
}
REFERENCE = {"square": np.square, "copy": np.copy, "poly": lambda x: horner(x, np)}  # what NumPy says
NUMPY_BASELINE = {"square": "numpy x * x", "copy": "numpy x * x", "poly": "numpy polynomial"}  # "vs NumPy"
IN_PLACE_BASELINE = "numpy out=x (in place)"  # "vs NumPy" of a configuration that writes over its input
LOOP_BASELINE = {"square": "python loop"}  # the "vs loop" column (no loop for the polynomial)


class MismatchError(Exception):
    """A configuration computed something other than NumPy's answer."""


def check_result(name, result, expected, x_host):
    """Raise MismatchError, naming the first wrong element, unless result (n,) matches expected (n,)."""
    result = np.asarray(result)
    wrong = np.flatnonzero(~np.isclose(result, expected, rtol=1e-5, atol=1e-5))
    if len(wrong):
        i = wrong[0]
        raise MismatchError(f"{name!r} gives {result[i]} for x = {x_host[i]}, NumPy gives {expected[i]} "
                            f"({len(wrong)} of {len(x_host)} values differ)")


def check_correctness(configs, x_host):
    """Run every configuration once and compare with NumPy -> {name: seconds of that first call}.

    Raises MismatchError on the first wrong result, before anything else is timed. For JAX
    that first call at a new size includes tracing and XLA compilation for that shape.
    """
    first_call = {}
    for name, config in configs.items():
        call = config.make(x_host)
        start = time.perf_counter()
        result = call()
        first_call[name] = time.perf_counter() - start if config.uses_jax else None
        check_result(name, result, REFERENCE[config.kind](x_host), x_host)
    return first_call


def minor_faults():
    """Minor page faults of this process so far (all its threads), or None without getrusage."""
    return None if resource is None else resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def faults_per_call(call, calls):
    """Mean minor page faults per call() over `calls` calls, or None without getrusage."""
    before = minor_faults()
    for _ in range(calls):
        call()
    return None if before is None else (minor_faults() - before) / calls


def time_configuration(name, config, x_host, seconds):
    """Median seconds, repeats and page faults per call of one configuration on x_host (n,)."""
    timing_input = np.ones_like(x_host) if config.chained else x_host
    call = config.make(timing_input)
    median, repeats = stats.median_seconds(call, seconds=seconds)
    faults = faults_per_call(call, max(3, repeats // FAULT_SHARE))
    if config.chained:  # ones squared any number of times: still ones
        check_result(name, call(), timing_input, timing_input)
    return median, repeats, faults


def measure_size(size, seconds, configs):
    """All timings for one vector size -> dict with one row per configuration."""
    x_host = np.random.default_rng(0).uniform(-2, 2, size).astype(np.float32)
    timed = {name: c for name, c in configs.items() if name != "python loop" or size <= LOOP_MAX_SIZE}
    first_call = check_correctness(timed, x_host)
    transfer, _ = stats.median_seconds(lambda: jax.device_put(x_host).block_until_ready(), seconds=seconds / 4)

    rows = {}
    for name, config in timed.items():
        median, repeats, faults = time_configuration(name, config, x_host, seconds)
        rows[name] = dict(kind=config.kind, first_call_s=first_call[name], median_s=median,
                          minor_faults_per_call=faults, repeats=repeats,
                          gb_per_s=8 * size / median / 1e9)  # 4 bytes read + 4 written per element
    for name, row in rows.items():
        loop = rows.get(LOOP_BASELINE.get(row["kind"]))
        row["speedup_vs_numpy"] = rows[NUMPY_BASELINE[row["kind"]]]["median_s"] / row["median_s"]
        if configs[name].chained:  # like for like: against NumPy writing over its input too
            row["speedup_vs_numpy_in_place"] = rows[IN_PLACE_BASELINE]["median_s"] / row["median_s"]
        row["speedup_vs_loop"] = loop["median_s"] / row["median_s"] if loop else None
    return dict(size=size, host_to_device_s=transfer, rows=rows,
                skipped=[name for name in configs if name not in timed])


def cpu_caches():
    """{'L1d': '32K', 'L2': '1024K', 'L3': '32768K'} of CPU 0, from Linux's sysfs; {} elsewhere."""
    caches = {}
    for index in range(8):
        folder = f"/sys/devices/system/cpu/cpu0/cache/index{index}"
        try:
            fields = {}
            for field in ("level", "type", "size"):
                with open(f"{folder}/{field}") as f:
                    fields[field] = f.read().strip()
        except OSError:
            break
        suffix = {"Data": "d", "Instruction": "i"}.get(fields["type"], "")
        caches[f"L{fields['level']}{suffix}"] = fields["size"]
    return caches


def format_header(device, seconds, caches):
    cache_text = ", ".join(f"{name} {size}" for name, size in caches.items()) or "caches unknown"
    return (f"JAX {jax.__version__} on {device}; NumPy {np.__version__}; float32; medians over repeats of ~{seconds} s "
            f"each; vs NumPy: NumPy's time (x * x, or its polynomial) / this one's; vs in place: for the two that "
            f"write over their input, NumPy's out=x / this one's\n{provenance.machine()['cpu_model']}; {cache_text}")


def format_table(result):
    def ms(t):
        return "-" if t is None else f"{1e3 * t:10.4f}"

    def ratio(r):
        return "-" if r is None else f"{r:8.2f}x"

    def faults(f):
        return "-" if f is None else f"{f:,.1f}"

    size = result["size"]
    lines = [f"size {size:,} float32 ({4 * size / 1e6:g} MB in, as much out); "
             f"host -> device transfer {ms(result['host_to_device_s']).strip()} ms",
             f"  {'configuration':<23} {'first call ms':>13} {'median ms':>10} {'GB/s':>7} "
             f"{'page faults/call':>16} {'vs NumPy':>9} {'vs in place':>11} {'vs loop':>9}"]
    for name, row in result["rows"].items():
        lines.append(f"  {name:<23} {ms(row['first_call_s']):>13} {ms(row['median_s'])} "
                     f"{row['gb_per_s']:7.2f} {faults(row['minor_faults_per_call']):>16} "
                     f"{ratio(row['speedup_vs_numpy']):>9} {ratio(row.get('speedup_vs_numpy_in_place')):>11} "
                     f"{ratio(row['speedup_vs_loop']):>9}")
    for name in result["skipped"]:
        lines.append(f"  {name:<23} skipped: above {LOOP_MAX_SIZE:,} elements it takes too long")
    return "\n".join(lines)


# name -> (colour, line style, marker): NumPy solid, JAX dashed, the polynomial dotted, the floor thick black;
# no two share both a colour and a marker
PLOT_STYLE = {
    "python loop": ("tab:gray", "-", "x"),
    "numpy x * x": ("tab:blue", "-", "o"),
    "numpy np.square": ("tab:cyan", "-", "v"),
    "numpy out=o": ("tab:green", "-", "s"),
    "numpy out=x (in place)": ("tab:olive", "-", "D"),
    "memory floor (copy)": ("black", "-", ""),
    "jax.numpy, no jit": ("tab:purple", "--", "o"),
    "jax.jit": ("tab:red", "--", "s"),
    "jax.jit, donated": ("tab:orange", "--", "D"),
    "jax.vmap, no jit": ("tab:brown", "--", "^"),
    "jax.jit(jax.vmap)": ("tab:pink", "--", "v"),
    "numpy polynomial": ("navy", ":", "P"),
    "jax.jit polynomial": ("darkred", ":", "X"),
}


def plot(results, title, path):
    """Median milliseconds per call against size, log-log, one line per configuration; legend outside."""
    fig, ax = plots.plt.subplots(figsize=(9, 5))
    for name, (colour, style, marker) in PLOT_STYLE.items():
        points = [(r["size"], 1e3 * r["rows"][name]["median_s"]) for r in results if name in r["rows"]]
        if not points:
            continue
        floor = name == "memory floor (copy)"
        ax.plot(*zip(*points), color=colour, linestyle=style, marker=marker or None, linewidth=3 if floor else 1.3,
                zorder=3 if floor else 2, label="memory floor: np.copyto(o, x)" if floor else name)
    ax.set(xscale="log", yscale="log", xlabel="vector size (float32 elements)",
           ylabel="median time per call (ms)", title=title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    plots.save_figure(fig, path)


def write_outputs(out, report, table_text, title):
    """results.json, table.txt and square.png into the claimed folder `out`."""
    files.write_json(f"{out}/results.json", report)
    files.write_text(f"{out}/table.txt", table_text)
    plot(report["results"], title, f"{out}/square.png")


size_arg = cli.number_type(float, lambda v: 1 <= v <= 1e9 and v.is_integer(), "a whole number from 1 to 1e9")
seconds_arg = cli.number_type(float, lambda v: 0 < v <= 60, "in (0, 60]")


def main(argv=None):
    argv = provenance.record_command(__file__, argv)
    p = argparse.ArgumentParser(description="Time a float32 vector square in JAX, NumPy and a Python loop, "
                                            "against the memory floor (a copy), with page faults per call.",
                                epilog="Exit status: 0 done, 2 bad input or a disk error, 4 the check failed "
                                       "(a configuration disagrees with NumPy), 130 interrupted.")
    p.add_argument("--sizes", type=size_arg, nargs="+", default=DEFAULT_SIZES,
                   help="vector lengths, e.g. 1000 1e6 (default: 1e3 1e4 1e5 1e6 1e7)")
    p.add_argument("--seconds-per-config", type=seconds_arg, default=DEFAULT_SECONDS, metavar="SECONDS",
                   help="wall-clock seconds spent repeating each configuration at each size; the median of "
                        "those calls is reported (default: %(default)s)")
    cli.add_flags(p, "--json", "--out")
    args = p.parse_args(argv)
    args.out = args.out or files.default_out_dir("verify_vectors")
    exits.claim_out_dir_or_exit(args.out)

    device, caches = str(jax.devices()[0]), cpu_caches()
    header = format_header(device, args.seconds_per_config, caches)
    tables, results, problem = [header], [], None
    if not args.json:
        print(header + "\n", flush=True)
    try:
        for size in (int(s) for s in args.sizes):
            result = measure_size(size, args.seconds_per_config, CONFIGURATIONS)
            results.append(result)
            tables.append(format_table(result))
            if not args.json:
                print(tables[-1] + "\n", flush=True)
    except MismatchError as err:
        problem = (f"wrong result at size {size:,}: {err}", exits.EXIT_CHECK_FAILED)
    except KeyboardInterrupt:
        problem = ("interrupted (Ctrl-C)", exits.EXIT_INTERRUPTED)
    report = dict(device=device, seconds_per_config=args.seconds_per_config, caches=caches,
                  status="completed" if problem is None else "partial", results=results)
    if args.json:
        print(json.dumps(report, indent=2))
    title = f"x * x (NumPy solid, JAX dashed) and a degree-4 polynomial (dotted) on {device}"
    kept = f"{args.out} holds the sizes finished before it" if results else "nothing was written"
    if results:
        exits.write_or_fail(args.out, lambda out: write_outputs(out, report, "\n\n".join(tables), title),
                            "the files written before it are complete")
    if problem:
        print(f"error: {problem[0]}; {kept}", file=sys.stderr)
        sys.exit(problem[1])
    print(f"wrote table.txt, results.json and square.png to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    exits.run_script(main)
