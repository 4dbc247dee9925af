"""How close does mlp_mnist.py's training epoch come to what the hardware allows?

    python benchmarks/train_speed.py                 # about 15 minutes on 2 cores; writes runs/train_speed/
    python benchmarks/train_speed.py --timed-epochs 2 --vmap-models 3

Measured in one run, so that the ratios are fair on a noisy machine. The training paths (2, 3, 4, 6) are timed
in --rounds rounds, each round running them in a random order; each ratio is taken within a round and reported
as the median over the rounds with their range:
1. The float32 matmul rate XLA reaches at each of the network's own matmul shapes (measured
   --rate-repeats times, spread apart over the run) and at 2048x2048x2048, and the floor each
   implies: the seconds one epoch's matmuls need at those rates.
2. The project's epoch through the real mlp_mnist.py path (the DataLoader, one jitted
   train_step per batch, plain SGD), and its evaluation of the 70,000 images: medians over the
   timed epochs, compilation apart.
3. The same epoch through --loader device: the images on the device, the whole epoch one
   compiled program (jax.lax.scan over the same batches). And the DataLoader alone.
4. Many models as one program (many_models.py: the device epoch under jax.vmap): the epoch of
   3 and of 10 models (--vmap-models), against one model's device epoch, all on the same
   50,000 images (a 10,000-image validation split held out, as in docs/06's study).
5. Compilation: the compile seconds of a first run, and of a second run with another lr and
   seed, which must find every program compiled already (the hyperparameters are data).
6. The PyTorch equivalent: nn.Sequential + torch.optim.SGD, the same loss, in-memory
   batches, torch's own thread pool.
7. The evaluation in chunks of 2,000 images (mlp_mnist.EVAL_CHUNK) against one of 10,000.
On a GPU there is no CPU floor to compare with: the script reports the device and the times.
Writes train_speed.json and table.txt (what it prints) into --out. Exit status: 0 done,
2 bad input or a disk error, 130 interrupted (what was measured so far is written, marked partial).
"""
import argparse
import functools
import json
import os
import random
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import many_models  # noqa: E402
import mlp_mnist  # noqa: E402
import mnist_data  # noqa: E402
from plumbing import cli, exits, files, provenance, stats  # noqa: E402
from train_utils import LAYER_SIZES, init_params  # noqa: E402

BATCH = cli.SHARED_FLAGS["--batch-size"]["default"]
VAL_SHARE = 6  # the vmap comparison holds out the last sixth (10,000 of 60,000) and trains on the rest, as docs/06


def matmul_shapes(batch=BATCH, sizes=LAYER_SIZES):
    """The matmuls of one training step, as (name, m, k, n): an (m, k) @ (k, n) product each.

    Forward, per layer: x (B, n_in) @ w (n_in, n_out). Backward, per layer: the weight
    gradient x^T (n_in, B) @ dy (B, n_out), and, except for the first layer (the pixels need
    no gradient), the input gradient dy (B, n_out) @ w^T (n_out, n_in).
    """
    shapes = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        shapes.append((f"forward {i}", batch, n_in, n_out))
        shapes.append((f"weight grad {i}", n_in, batch, n_out))
        if i > 1:
            shapes.append((f"input grad {i}", batch, n_out, n_in))
    return shapes


def flops_per_image(shapes=None):
    shapes = shapes or matmul_shapes()
    train = sum(2 * m * k * n for _, m, k, n in shapes) / BATCH
    forward = sum(2 * m * k * n for name, m, k, n in shapes if name.startswith("forward")) / BATCH
    return train, forward


def matmul_rate(m, k, n, seconds=0.5):
    """XLA's float32 rate (FLOP/s) on an (m, k) @ (k, n) product, many in a row inside one program.

    One program, so that no dispatch from Python sits between two products (it would cost
    more than a small product here). Each product's input is scaled by a number taken from
    the one before (always 1, but XLA cannot know it), so none can be hoisted or skipped;
    the scaling and the max are a pass over (m, k) and (m, n), small against the product's 2 m k n.
    """
    key_a, key_b = jax.random.split(jax.random.key(0))
    a, b = jax.random.normal(key_a, (m, k)), jax.random.normal(key_b, (k, n))

    @functools.partial(jax.jit, static_argnums=2)
    def products(a, b, count):
        def one(_, scale):
            return 1 + 0 * jnp.max((scale * a) @ b)  # all of the product is needed
        return jax.lax.fori_loop(0, count, one, jnp.float32(1))

    products(a, b, 1).block_until_ready()
    start = time.perf_counter()
    products(a, b, 1).block_until_ready()
    count = max(1, int(seconds / 5 / max(time.perf_counter() - start, 1e-6)))
    seconds = stats.median_seconds(lambda: products(a, b, count).block_until_ready(), repeats=5)[0]
    seconds_per_product = seconds / count
    return 2 * m * k * n / seconds_per_product


def pytorch_epochs(train_images, train_labels, test_images, epochs, threads):
    """The same network, loss and SGD step in PyTorch -> (epoch seconds, eval seconds), one of each per epoch."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                                torch.nn.ReLU(), torch.nn.Linear(512, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    images = torch.from_numpy(train_images).reshape(-1, 784)  # uint8, cast per batch as in JAX
    labels = torch.from_numpy(train_labels).long()
    test = torch.from_numpy(test_images).reshape(-1, 784)
    generator = torch.Generator().manual_seed(0)
    epoch_times, eval_times = [], []
    for _ in range(epochs):
        start = time.perf_counter()
        for index in torch.randperm(len(images), generator=generator).split(BATCH):
            log_probs = torch.log_softmax(model(images[index].float()), dim=1)
            loss = -(log_probs * torch.nn.functional.one_hot(labels[index], 10)).mean()  # CE / 10
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epoch_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        with torch.no_grad():
            for chunk in (images, test):
                [model(part.float()).argmax(1) for part in chunk.split(mlp_mnist.EVAL_CHUNK)]
        eval_times.append(time.perf_counter() - start)
    torch.set_num_threads(1)
    return epoch_times, eval_times


def evaluation_seconds(train_set, test_set, chunk, repeats):
    """Median seconds of mlp_mnist's evaluation of every training and test image, `chunk` images per call."""
    params = init_params(jax.random.key(0))
    images = [jax.device_put(s.data.numpy()) for s in (train_set, test_set)]
    default, mlp_mnist.EVAL_CHUNK = mlp_mnist.EVAL_CHUNK, chunk  # the one knob this measurement turns
    try:
        return stats.median_seconds(
            lambda: [mlp_mnist.predict_all(mlp_mnist.predicted_digits, params, i) for i in images], repeats)[0]
    finally:
        mlp_mnist.EVAL_CHUNK = default


RATIOS = (("DataLoader path / device loader", "DataLoader path", "device loader"),
          ("PyTorch / device loader", "PyTorch", "device loader"),
          ("PyTorch / DataLoader path", "PyTorch", "DataLoader path"))


def spread(values):
    """-> dict(median, min, max) of a list of numbers."""
    return dict(median=statistics.median(values), min=min(values), max=max(values))


def measure(args, train_set, test_set, result, say):
    """Every measurement of the module docstring, in order, into `result` (a dict filled as it goes)."""
    shapes = matmul_shapes()
    train_flops, forward_flops = flops_per_image(shapes)
    n, n_eval = len(train_set), len(train_set) + len(test_set)
    result.update(train_images=n, eval_images=n_eval, epoch_gflop=n * train_flops / 1e9,
                  eval_gflop=n_eval * forward_flops / 1e9)
    say(f"FLOP count: each matmul (m, k) @ (k, n) costs 2 m k n; per image {train_flops / 1e6:.3f} MFLOP to train, "
        f"{forward_flops / 1e6:.3f} MFLOP forward; one epoch of {n:,} images {result['epoch_gflop']:.1f} GFLOP, "
        f"evaluation of {n_eval:,} images {result['eval_gflop']:.1f} GFLOP")
    rates = {name: [] for name, *_ in shapes}

    def measure_rates():
        for name, m, k, n in shapes:
            rates[name].append(matmul_rate(m, k, n) / 1e9)
        result["matmul_gflops"] = {name: spread(values) for name, values in rates.items()}

    measure_rates()
    result["matmul_2048_gflops"] = matmul_rate(2048, 2048, 2048, seconds=2) / 1e9

    parser = mlp_mnist.build_parser()
    config = cli.resolve_hyperparameters(parser, vars(parser.parse_args(
        ["--optimizer", "sgd", "--epochs", str(args.timed_epochs + 1)])))
    quiet = lambda line: None  # noqa: E731

    def epochs_of(run, key="train_seconds"):
        if run["status"] == "interrupted":
            raise KeyboardInterrupt  # the loop caught Ctrl-C; this measurement is not whole: stop here
        return [r[key] for r in run["records"][1:]]  # epoch 1 is not timed: it warms caches and the allocator

    say("compiling: a first run of one epoch, then another lr and seed, then the device loader ...")
    result["first_compile_s"] = mlp_mnist.train(dict(config, epochs=1), train_set, test_set, log=quiet)[
        "compile_seconds"]
    result["second_compile_s"] = mlp_mnist.train(dict(config, lr=0.02, seed=1, epochs=1), train_set, test_set,
                                                 log=quiet)["compile_seconds"]
    result["device_compile_s"] = mlp_mnist.train(dict(config, loader="device", epochs=1), train_set, test_set,
                                                 log=quiet)["compile_seconds"]
    say("the DataLoader alone: one epoch of its batches, no training ...")
    loader = mnist_data.train_loader(train_set, BATCH, seed=0)
    result["loader_alone_epoch_s"] = stats.median_seconds(
        lambda: [(images.numpy(), labels.numpy()) for images, labels in loader], args.timed_epochs)[0]

    held_out = n // VAL_SHARE
    fifty, val_set = train_set.rows(0, n - held_out), train_set.rows(n - held_out, n)
    # Each path is timed once per round, the paths of a round in a random order (seeded by the round), so that
    # a machine that slows down or speeds up over the run does not favour the path that always runs first; every
    # ratio is taken within a round and reported as the median over the rounds, with their range.
    tasks = {"DataLoader path": lambda: mlp_mnist.train(config, train_set, test_set, log=quiet),
             "device loader": lambda: mlp_mnist.train(dict(config, loader="device"), train_set, test_set, log=quiet),
             "PyTorch": lambda: pytorch_epochs(train_set.data.numpy(), train_set.targets.numpy(),
                                               test_set.data.numpy(), args.timed_epochs + 1, args.pytorch_threads),
             "one model": lambda: mlp_mnist.train(dict(config, loader="device", val_size=held_out), fifty, test_set,
                                                  val_set, log=quiet)}
    for count in args.vmap_models:
        tasks[f"{count} models"] = functools.partial(
            lambda count: many_models.train_many([dict(config, seed=seed, val_size=held_out) for seed in range(count)],
                                                 fifty, test_set, val_set, log=quiet)[0], count)
    epochs, evals, result["rounds"] = {task: [] for task in tasks}, {task: [] for task in tasks}, []
    for index in range(args.rounds):
        order = list(tasks)
        random.Random(index).shuffle(order)
        say(f"round {index + 1} of {args.rounds}, {args.timed_epochs} timed epochs each after one untimed: "
            + ", ".join(order) + " ...")
        medians = {}
        for task in order:
            done = tasks[task]()
            if task == "PyTorch":
                times, eval_times = done[0][1:], done[1][1:]
            else:
                times, eval_times = epochs_of(done), epochs_of(done, "eval_seconds")
            epochs[task] += times
            evals[task] += eval_times
            medians[task] = statistics.median(times)
        result["rounds"].append(dict(order=order, median_epoch_s=medians))
    result.update(torch_loader_epoch_s=spread(epochs["DataLoader path"]),
                  torch_loader_eval_s=spread(evals["DataLoader path"]), device_epoch_s=spread(epochs["device loader"]),
                  pytorch_epoch_s=spread(epochs["PyTorch"]), pytorch_eval_s=spread(evals["PyTorch"]),
                  pytorch_threads=args.pytorch_threads)
    result["vmap"] = dict(images=len(fifty), one_model_epoch_s=spread(epochs["one model"]), models={})
    for count in args.vmap_models:
        per_model = [s / count for s in epochs[f"{count} models"]]
        result["vmap"]["models"][str(count)] = dict(
            epoch_s=spread(epochs[f"{count} models"]), per_model_epoch_s=spread(per_model),
            per_model_over_one=spread([r["median_epoch_s"][f"{count} models"] / count / r["median_epoch_s"]["one model"]
                                       for r in result["rounds"]]))

    say(f"evaluation of {n_eval:,} images in chunks of {mlp_mnist.EVAL_CHUNK:,} and of 10,000 ...")
    result["eval_chunk_s"] = {str(chunk): evaluation_seconds(train_set, test_set, chunk, args.timed_epochs)
                              for chunk in (mlp_mnist.EVAL_CHUNK, 10_000)}
    say(f"PyTorch equivalent ({args.pytorch_threads} threads, {args.timed_epochs} timed epochs after one untimed) ...")
    epoch_times, eval_times = pytorch_epochs(train_set.data.numpy(), train_set.targets.numpy(), test_set.data.numpy(),
                                             args.timed_epochs + 1, args.pytorch_threads)
    result.update(pytorch_epoch_s=spread(epoch_times[1:]), pytorch_eval_s=spread(eval_times[1:]),
                  pytorch_threads=args.pytorch_threads)
    say("the matmul rates again, at the end of the run: their spread ...")
    measure_rates()
    if jax.devices()[0].platform == "cpu":
        floor = sum(2 * m * k * n / (1e9 * result["matmul_gflops"][name]["median"]) for name, m, k, n in shapes)
        lowest = sum(2 * m * k * n / (1e9 * result["matmul_gflops"][name]["max"]) for name, m, k, n in shapes)
        highest = sum(2 * m * k * n / (1e9 * result["matmul_gflops"][name]["min"]) for name, m, k, n in shapes)
        steps = n / BATCH
        result["shape_floor_epoch_s"] = dict(median=floor * steps, min=lowest * steps, max=highest * steps)
        result["floor_2048_epoch_s"] = result["epoch_gflop"] / result["matmul_2048_gflops"]
    result["ratios"] = {name: spread([r["median_epoch_s"][a] / r["median_epoch_s"][b] for r in result["rounds"]])
                        for name, a, b in RATIOS}
    if "shape_floor_epoch_s" in result:
        result["ratios"]["device loader / shape floor"] = spread(
            [r["median_epoch_s"]["device loader"] / result["shape_floor_epoch_s"]["median"] for r in result["rounds"]])
    result["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def table(result):
    """What the script prints: the rates, then the times and the ratios measured in this run."""
    r = result
    lines = [r["header"], "", f"{'matmul':<14} {'m x k x n':>17} {'GFLOP/s median (min - max over repeats)':>40}"]
    for name, m, k, n in matmul_shapes():
        g = r["matmul_gflops"][name]
        lines.append(f"{name:<14} {f'{m}x{k}x{n}':>17} {g['median']:>12.1f}  ({g['min']:.1f} - {g['max']:.1f})")
    lines.append(f"{'large':<14} {'2048x2048x2048':>17} {r['matmul_2048_gflops']:>12.1f}")

    def seconds(key, spread_of="epochs"):
        value = r.get(key)
        if value is None:
            return "-"
        return f"{value['median']:8.3f} s  ({spread_of}: {value['min']:.3f} - {value['max']:.3f})"

    lines += ["", "seconds per epoch, median over the timed epochs (their range):",
              f"  DataLoader path (mlp_mnist default): {seconds('torch_loader_epoch_s')}",
              f"  device loader:                       {seconds('device_epoch_s')}",
              f"  PyTorch ({r['pytorch_threads']} threads):                {seconds('pytorch_epoch_s')}",
              f"  the DataLoader alone, no training:   {r['loader_alone_epoch_s']:8.3f} s"]
    if "shape_floor_epoch_s" in r:
        lines += [f"  shape floor (each matmul at its own rate): {seconds('shape_floor_epoch_s', 'from the rates')}",
                  f"  2048 floor (every matmul at the 2048 rate): {r['floor_2048_epoch_s']:.3f} s"]
    lines += ["", f"ratios of median epochs, each within one round; the median over {len(r['rounds'])} rounds, the "
                  f"paths of each in a random order (the rounds' range):"]
    lines += [f"  {name + ':':<33}{v['median']:.2f}x  (rounds: {v['min']:.2f} - {v['max']:.2f})"
              for name, v in r["ratios"].items()]
    lines += ["", f"many models as one program, on {r['vmap']['images']:,} images: one model's device epoch "
                  f"{r['vmap']['one_model_epoch_s']['median']:.3f} s"]
    for count, v in r["vmap"]["models"].items():
        x = v["per_model_over_one"]
        lines.append(f"  {count:>3} models: {v['epoch_s']['median']:.3f} s an epoch, "
                     f"{v['per_model_epoch_s']['median']:.3f} s per model = {x['median']:.2f}x one model's "
                     f"(rounds: {x['min']:.2f} - {x['max']:.2f})")
    lines += ["", f"compile seconds: first run {r['first_compile_s']:.3f}, a second run with another lr and seed "
                  f"{r['second_compile_s']:.3f}, the device epoch {r['device_compile_s']:.3f}",
              f"evaluation of {r['eval_images']:,} images: " + ", ".join(f"chunks of {int(c):,}: {s:.3f} s"
                                                          for c, s in r["eval_chunk_s"].items())
              + f"; the DataLoader path's evaluation {r['torch_loader_eval_s']['median']:.3f} s, PyTorch's "
                f"{r['pytorch_eval_s']['median']:.3f} s",
              f"peak memory of this process: {r['peak_memory_mb']:.0f} MB"]
    return "\n".join(lines)


def main(argv=None):
    argv = provenance.record_command(__file__, argv)
    p = argparse.ArgumentParser(description="Training speed of mlp_mnist.py against the matmul floor, many models "
                                            "as one program, and PyTorch.",
                                epilog="Exit status: 0 done, 2 bad input or a disk error, 130 interrupted.")
    p.add_argument("--timed-epochs", type=cli.positive_int, default=4,
                   help="epochs timed for each training path, after one untimed epoch each; medians and ranges are "
                        "reported (default: %(default)s)")
    p.add_argument("--vmap-models", type=cli.positive_int, nargs="+", default=[3, 10], metavar="S",
                   help="how many models to train as one program, each count timed against one model "
                        "(default: 3 10)")
    p.add_argument("--rounds", type=cli.positive_int, default=3,
                   help="how many times each path is timed, in a random order each round; every ratio is the median "
                        "over the rounds (default: %(default)s)")
    p.add_argument("--pytorch-threads", type=cli.positive_int, default=os.cpu_count(),
                   help="threads of the PyTorch baseline (default: all cores, %(default)s)")
    cli.add_flags(p, "--data-dir", "--json", "--out")
    args = p.parse_args(argv)
    args.out = args.out or files.default_out_dir("train_speed")
    torch.set_num_threads(1)  # as mlp_mnist.main does
    train_set, _, test_set = exits.load_data_or_exit(p, args)
    machine = provenance.machine()
    avx512 = "yes" if "avx512f" in (machine["cpu_flags"] or "").split() else "no"
    result = dict(status="partial", device=str(jax.devices()[0]),
                  header=f"device {jax.devices()[0]}, jax {jax.__version__}, torch {torch.__version__}; "
                         f"{machine['cpu_model']}, {machine['cpu_count']} cores, {machine['memory_gb']} GB; "
                         f"AVX-512: {avx512}")
    say = (lambda line: None) if args.json else (lambda line: print(line, flush=True))
    say(result["header"] + "\n")
    try:
        measure(args, train_set, test_set, result, say)
        result["status"] = "completed"
    except KeyboardInterrupt:
        pass
    text = table(result) if result["status"] == "completed" else json.dumps(result, indent=2)
    exits.write_or_fail(args.out, lambda out: (files.write_json(f"{out}/train_speed.json", result),
                                               files.write_text(f"{out}/table.txt", text)),
                        "the files written before it are complete")
    if result["status"] != "completed":
        print(f"interrupted: {args.out}/train_speed.json holds what was measured, marked partial", file=sys.stderr)
        sys.exit(exits.EXIT_INTERRUPTED)
    print(json.dumps(result, indent=2) if args.json else "\n" + text)
    print(f"wrote {args.out}/train_speed.json, table.txt", file=sys.stderr)


if __name__ == "__main__":
    exits.run_script(main)
