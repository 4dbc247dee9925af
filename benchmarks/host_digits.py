"""Why another CPU gives other digits: the model's operations one at a time, bit for bit, on two CPUs.

    python benchmarks/host_digits.py                           # this CPU -> runs/host_digits/
    python benchmarks/host_digits.py --compare A B             # which operations differ between two such folders

Each operation of one training step on the recipe's shapes (a batch of 128 images of raw 0-255 pixels,
N(0, 0.01^2) weights), on its own: its inputs are drawn by NumPy, the same bits on every CPU, so that a
difference belongs to that operation. The weights' draw, the three layers' matrix products, ReLU, log-softmax,
exp, log, sqrt and division, the loss, the backward pass, Adam's update; then 20 steps of SGD and of Adam on
that batch, where the differences add up. digits.json records a SHA-256 of
each result's bytes (equal hashes: the same bits), arrays.npz the results themselves, for --compare.

To see a CPU you do not have, --emulate CPU runs the script under QEMU's user mode (`apt-get install
qemu-user`) as that CPU model: QEMU runs the x86 code itself and tells the program, when it asks the CPU
for its features, that it has that model's, so the libraries choose that CPU's kernels. EPYC-Rome is an
AMD Zen 2: AVX2, no AVX-512. It takes minutes, not seconds, and /proc/cpuinfo still shows the real CPU
(so the provenance's machine does too; digits.json says "emulated").

    python benchmarks/host_digits.py --emulate EPYC-Rome --out runs/host_digits-avx2

--compare writes comparison.md into --out: per operation, whether the two are equal bit for bit, how many
elements differ, and the largest difference over the largest |value| of the result (float32's own
resolution is 6e-8 of a value). Exit status: 0 done, 2 bad input or a disk error.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from optimized_sgd import make_optimizer  # noqa: E402
from plumbing import cli, exits, files, provenance  # noqa: E402
from train_utils import LAYER_SIZES, init_params, inputs_from_uint8, loss, relu  # noqa: E402

BATCH = cli.SHARED_FLAGS["--batch-size"]["default"]
STEPS = 20  # training steps on the one batch: how far a last-bit difference grows in a few steps


def operations():
    """-> {name: array}: each operation of one training step on its own, its inputs drawn by NumPy (the same bits on
    every CPU), so that a difference belongs to that operation alone; then STEPS steps of training, where the
    differences of all of them add up."""
    rng = np.random.default_rng(0)
    normal = lambda *shape, scale=1.0: (scale * rng.standard_normal(shape)).astype(np.float32)  # noqa: E731
    x = inputs_from_uint8(jnp.asarray(rng.integers(0, 256, (BATCH, 28, 28), dtype=np.uint8)))  # raw pixels 0-255
    targets = jax.nn.one_hot(rng.integers(0, 10, BATCH), 10)
    params = [(normal(m, n, scale=0.01), normal(n, scale=0.01)) for m, n in zip(LAYER_SIZES[:-1], LAYER_SIZES[1:])]
    (w1, b1), (w2, b2), (w3, b3) = params
    h1, h2 = np.maximum(normal(BATCH, 512), 0), np.maximum(normal(BATCH, 512), 0)  # as the hidden layers' outputs
    batch = (x, targets)
    grads = jax.tree.map(lambda p: normal(*p.shape, scale=1e-3), params)
    positive = np.abs(normal(4096)) + np.float32(0.1)
    hyper = dict(lr=jnp.float32(0.001), beta1=jnp.float32(0.9), beta2=jnp.float32(0.999), eps=jnp.float32(1e-8))
    adam = make_optimizer("adam", **hyper)
    found = {
        "the weights' draw (jax.random, layer 1)": jax.jit(init_params)(jax.random.key(0))[0][0],
        "layer 1, forward: x @ w1 (128x784 @ 784x512)": jax.jit(jnp.matmul)(x, w1),
        "layer 2, forward: h1 @ w2 (128x512 @ 512x512)": jax.jit(jnp.matmul)(h1, w2),
        "layer 3, forward: h2 @ w3 (128x512 @ 512x10)": jax.jit(jnp.matmul)(h2, w3),
        "ReLU and bias: relu(z + b1)": jax.jit(lambda z, b: relu(z + b))(normal(BATCH, 512), b1),
        "log-softmax (exp, log, sums)": jax.jit(jax.nn.log_softmax)(normal(BATCH, 10, scale=3.0)),
        "exp": jax.jit(jnp.exp)(normal(4096)),
        "log": jax.jit(jnp.log)(positive),
        "sqrt and division": jax.jit(lambda v: 1 / (jnp.sqrt(v) + 1e-8))(positive),
        "loss (cross-entropy / 10), the whole forward pass": jax.jit(loss)(params, batch),
        "backward: the gradient of w1": jax.jit(jax.grad(loss))(params, batch)[0][0],
        "backward: the gradient of w3": jax.jit(jax.grad(loss))(params, batch)[2][0],
        "Adam's update of w1, from a given gradient": jax.jit(adam.update)(grads, adam.init(params), params)[0][0][0],
    }
    for name, hyper in (("SGD", dict(lr=jnp.float32(0.01))), ("Adam", hyper)):
        optimizer = make_optimizer(name.lower(), **hyper)

        @jax.jit
        def train(params):
            def one(carry, _):
                params, state = carry
                value, g = jax.value_and_grad(loss)(params, batch)
                return optimizer.update(g, state, params), value
            return jax.lax.scan(one, (params, optimizer.init(params)), None, length=STEPS)[1]

        found[f"{name}: the loss at each of {STEPS} steps on the batch"] = train(params)
    return {name: np.asarray(value) for name, value in found.items()}


def digest(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def compare(a, b):
    """Two folders of this script -> the Markdown table of which operations differ, and how much."""
    found = []
    for folder in (a, b):
        with open(os.path.join(folder, "digits.json")) as f:
            meta = json.load(f)
        with np.load(os.path.join(folder, "arrays.npz")) as arrays:
            found.append((meta, {key: arrays[key] for key in arrays.files}))
    (meta_a, arrays_a), (meta_b, arrays_b) = found
    isa = lambda meta: (f"emulated as {meta['emulated']} by QEMU" if meta.get("emulated")  # noqa: E731
                        else meta["provenance"]["machine"]["isa"])
    lines = [f"A: {a} ({meta_a['provenance']['machine']['cpu_model']}, {isa(meta_a)}); "
             f"B: {b} ({meta_b['provenance']['machine']['cpu_model']}, {isa(meta_b)})", "",
             "| operation | the same bits | elements that differ | largest difference / largest value |",
             "| --- | --- | ---: | ---: |"]
    for index, name in enumerate(meta_a["operations"]):
        x, y = arrays_a[str(index)].astype(np.float64), arrays_b[str(index)].astype(np.float64)
        differ = x != y
        scale = max(np.max(np.abs(x)), np.max(np.abs(y)), np.finfo(np.float32).tiny)
        relative = np.max(np.abs(x - y)) / scale  # against the largest |value|: near-zero sums would exaggerate
        lines.append(f"| {name} | {'yes' if not differ.any() else 'no'} | {int(differ.sum()):,} of {x.size:,} | "
                     f"{relative:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = provenance.record_command(__file__, argv)
    p = argparse.ArgumentParser(description="The model's operations one by one, bit for bit: which differ between "
                                            "two CPUs?",
                                epilog="Exit status: 0 done, 2 bad input or a disk error.")
    p.add_argument("--emulate", metavar="CPU", help="run under QEMU's user mode as this CPU model (qemu-x86_64 -cpu "
                   "help lists them), e.g. EPYC-Rome for an AVX2 CPU without AVX-512 (default: this CPU)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two folders this script wrote: write their "
                   "comparison (comparison.md) into --out instead of measuring (default: measure this CPU)")
    cli.add_flags(p, "--out")
    args = p.parse_args(argv)
    args.out = args.out or files.default_out_dir("host_digits" + ("-compare" if args.compare else ""))
    if args.emulate:
        qemu = shutil.which("qemu-x86_64")
        if qemu is None:
            p.error("--emulate needs QEMU's user mode, qemu-x86_64 (Debian: apt-get install qemu-user)")
        if args.compare:
            p.error("--emulate measures; --compare compares two folders already measured: one or the other")
        child = [qemu, "-cpu", args.emulate, sys.executable, os.path.abspath(__file__), "--out", args.out]
        sys.exit(subprocess.run(child, env=dict(os.environ, HOST_DIGITS_EMULATED=args.emulate)).returncode)
    if args.compare:
        for folder in args.compare:
            if not os.path.isfile(os.path.join(folder, "arrays.npz")):
                p.error(f"{folder} holds no arrays.npz: give two folders this script wrote")
        text = compare(*args.compare)
        exits.claim_out_dir_or_exit(args.out)
        exits.write_or_fail(args.out, lambda out: files.write_text(f"{out}/comparison.md", text, comment="<!--"),
                            "nothing else was written")
        print(text)
        return
    exits.claim_out_dir_or_exit(args.out)
    found = operations()
    meta = dict(operations=list(found), sha256={name: digest(value) for name, value in found.items()},
                emulated=os.environ.get("HOST_DIGITS_EMULATED"))  # the CPU model QEMU showed the program, or None
    for name, value in meta["sha256"].items():
        print(f"{value}  {name}")

    def write(out):
        files.write_json(f"{out}/digits.json", meta)
        files.write_npz(f"{out}/arrays.npz", {str(i): value for i, value in enumerate(found.values())})

    exits.write_or_fail(args.out, write, "digits.json, if written, is complete")
    print(f"wrote {args.out}/digits.json, arrays.npz", file=sys.stderr)


if __name__ == "__main__":
    exits.run_script(main)
