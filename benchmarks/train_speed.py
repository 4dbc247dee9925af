"""How close does mlp_mnist.py's training epoch come to what the hardware allows?

    python benchmarks/train_speed.py                 # a few minutes on 2 cores
    python benchmarks/train_speed.py --json

Measured in one run, so that the ratios are fair on a noisy machine:
1. The float32 matmul rate XLA reaches, at 2048x2048x2048 and at each of the network's
   own matmul shapes, and the floor each implies: the seconds one epoch's matmuls need.
2. The project's epoch, through the real mlp_mnist.py path (torchvision dataset,
   DataLoader, the jitted step all five optimizers share, plain SGD), and its evaluation
   of 70,000 images: medians over epochs, compilation timed apart.
3. The same epoch through --loader device: the images on the device, the whole epoch one
   compiled program (jax.lax.scan over the same batches).
4. --vmap-seeds: 3 seeds trained at once by the device path under jax.vmap
   (many_models.train_many); the epoch of all three, and its share per seed.
   And the DataLoader alone: one epoch of its batches, with no training.
5. The PyTorch equivalent: nn.Sequential + torch.optim.SGD, the same loss, in-memory
   batches, torch's own thread pool.
6. The evaluation in chunks of 2,000 images (mlp_mnist.EVAL_CHUNK) against one of 10,000,
   and the peak memory of the process.
7. Ten epochs of the device loader, setup and compilation included, timed as one run.
On a GPU there is no CPU floor to compare with: the script prints the device and times.
The machine (CPU model and flags, cores, memory) is printed first and kept in the JSON.
"""
import argparse
import functools
import json
import os
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
import reporting  # noqa: E402
from train_utils import LAYER_SIZES, init_params  # noqa: E402

TRAIN_IMAGES, TEST_IMAGES, BATCH = 60_000, 10_000, 128
VMAP_SEEDS = (0, 1, 2)  # as many seeds as the comparison of docs/04 trains


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
    key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
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
    seconds_per_product = reporting.median_seconds(lambda: products(a, b, count).block_until_ready(), repeats=5)[0] / count
    return 2 * m * k * n / seconds_per_product


def pytorch_epochs(train_images, train_labels, test_images, epochs, threads):
    """The same network, loss and SGD step in PyTorch -> (median epoch s, median eval s)."""
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
    return statistics.median(epoch_times), statistics.median(eval_times)


def evaluation_by_chunk(train_set, test_set, chunks, repeats):
    """-> {chunk: median seconds of mlp_mnist's evaluation of all 70,000 images, `chunk` at a time}."""
    params = init_params(jax.random.PRNGKey(0))
    images = [jax.device_put(s.data.numpy()) for s in (train_set, test_set)]
    return {chunk: reporting.median_seconds(lambda: [mlp_mnist.predict_all(params, i, chunk=chunk) for i in images], repeats)[0]
            for chunk in chunks}


def main(argv=None):
    p = argparse.ArgumentParser(description="Training speed of mlp_mnist.py against the matmul floor and PyTorch.")
    p.add_argument("--epochs", type=mlp_mnist.positive_int, default=5,
                   help="epochs timed for the project and for PyTorch; medians are reported (default: %(default)s)")
    mlp_mnist.add_data_dir_argument(p)
    p.add_argument("--torch-threads", type=mlp_mnist.positive_int, default=os.cpu_count(),
                   help="threads for the PyTorch baseline (default: all cores, %(default)s)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    say = (lambda *a: None) if args.json else print
    train_set, test_set = mlp_mnist.load_data_or_exit(p, args.data_dir)  # fail fast on bad data

    device = jax.devices()[0]
    on_cpu = device.platform == "cpu"
    shapes = matmul_shapes()
    train_flops, forward_flops = flops_per_image(shapes)
    epoch_flops, eval_flops = TRAIN_IMAGES * train_flops, (TRAIN_IMAGES + TEST_IMAGES) * forward_flops
    machine = reporting.machine()
    say(f"device {device}, jax {jax.__version__}, torch {torch.__version__}; {machine['cpu_model']}, "
        f"{machine['cpu_count']} cores, {machine['memory_gb']} GB; AVX-512: "
        f"{'yes' if 'avx512f' in (machine['cpu_flags'] or '').split() else 'no'}\n")
    say("FLOP count: each matmul (m, k) @ (k, n) costs 2 m k n; a step's matmuls for a batch of 128:")
    say(f"  {'matmul':<14} {'m x k x n':>17} {'MFLOP':>8} {'XLA GFLOP/s':>12}")

    rates = {}
    for name, m, k, n in shapes:
        rates[name] = matmul_rate(m, k, n)
        say(f"  {name:<14} {f'{m}x{k}x{n}':>17} {2 * m * k * n / 1e6:8.1f} {rates[name] / 1e9:12.1f}")
    big_rate = matmul_rate(2048, 2048, 2048, seconds=2)
    say(f"  {'large':<14} {'2048x2048x2048':>17} {2 * 2048**3 / 1e6:8.0f} {big_rate / 1e9:12.1f}")
    shape_floor_step = sum(2 * m * k * n / rates[name] for name, m, k, n in shapes)
    eval_rates = {name: matmul_rate(mlp_mnist.EVAL_CHUNK, k, n) for name, _, k, n in shapes if name.startswith("forward")}
    say("  evaluation, in chunks of " + f"{mlp_mnist.EVAL_CHUNK:,} images: " + ", ".join(
        f"{name} {mlp_mnist.EVAL_CHUNK}x{k}x{n} {eval_rates[name] / 1e9:.1f}" for name, _, k, n in shapes
        if name in eval_rates) + " GFLOP/s")
    forward_floor_chunk = sum(2 * mlp_mnist.EVAL_CHUNK * k * n / eval_rates[name]
                              for name, _, k, n in shapes if name in eval_rates)
    say(f"  per image: {train_flops / 1e6:.3f} MFLOP to train (forward, weight and input gradients), "
        f"{forward_flops / 1e6:.3f} MFLOP forward")
    say(f"  one epoch: 60,000 x {train_flops / 1e6:.3f} M = {epoch_flops / 1e9:.1f} GFLOP; evaluation: "
        f"70,000 x {forward_flops / 1e6:.3f} M = {eval_flops / 1e9:.1f} GFLOP\n")

    torch.set_num_threads(1)  # as mlp_mnist.main does
    config = mlp_mnist.resolve_config(mlp_mnist.build_parser().parse_args(
        ["--optimizer", "sgd", "--epochs", str(args.epochs), "--data-dir", args.data_dir]))
    say(f"the project's training (mlp_mnist.train, sgd, {args.epochs} epochs, --loader torch):")
    run = mlp_mnist.train(config, train_set, test_set, log=lambda line: say("  " + line))
    project_epoch = statistics.median(r["train_seconds"] for r in run["records"])
    project_eval = statistics.median(r["eval_seconds"] for r in run["records"])

    say(f"\nthe same, --loader device ({args.epochs} epochs):")
    device_run = mlp_mnist.train(dict(config, loader="device"), train_set, test_set, log=lambda line: say("  " + line))
    device_epoch = statistics.median(r["train_seconds"] for r in device_run["records"])

    say(f"\n{len(VMAP_SEEDS)} seeds at once (many_models.train_many, {args.epochs} epochs):")
    seed_runs = many_models.train_many([dict(config, seed=seed) for seed in VMAP_SEEDS], train_set, test_set,
                                       log=lambda line: say("  " + line))
    vmap_epoch = statistics.median(r["train_seconds"] for r in seed_runs[0]["records"])

    say("\nten epochs of the device loader, setup and compilation included, as one timed run ...")
    start = time.perf_counter()
    ten_run = mlp_mnist.train(dict(config, loader="device", epochs=10), train_set, test_set, log=lambda line: None)
    ten_epochs_seconds = time.perf_counter() - start
    assert ten_run["status"] == "completed", ten_run["status"]

    say("\nthe DataLoader alone: one epoch of batches, no training ...")
    loader = mnist_data.train_loader(train_set, BATCH, seed=0)
    loader_epoch, _ = reporting.median_seconds(lambda: [(images.numpy(), labels.numpy()) for images, labels in loader], args.epochs)

    say("\nevaluation of 70,000 images in chunks of 2,000 and of 10,000 ...")
    chunk_seconds = evaluation_by_chunk(train_set, test_set, (mlp_mnist.EVAL_CHUNK, 10_000), args.epochs)

    say(f"\nPyTorch equivalent ({args.torch_threads} threads, {args.epochs} epochs) ...")
    torch_epoch, torch_eval = pytorch_epochs(train_set.data.numpy(), train_set.targets.numpy(),
                                             test_set.data.numpy(), args.epochs, args.torch_threads)

    result = dict(device=str(device), jax=jax.__version__, torch=torch.__version__, cpu_cores=os.cpu_count(),
                  machine=machine,
                  epoch_gflop=epoch_flops / 1e9, eval_gflop=eval_flops / 1e9,
                  matmul_gflops={name: r / 1e9 for name, r in rates.items()}, matmul_2048_gflops=big_rate / 1e9,
                  project_compile_s=run["compile_seconds"], project_epoch_s=project_epoch,
                  project_eval_s=project_eval, pytorch_epoch_s=torch_epoch, pytorch_eval_s=torch_eval,
                  pytorch_threads=args.torch_threads, pytorch_over_project=torch_epoch / project_epoch,
                  loader_epoch_s=loader_epoch,
                  device_compile_s=device_run["compile_seconds"], device_epoch_s=device_epoch,
                  device_ten_epochs_measured_s=ten_epochs_seconds,
                  project_over_device=project_epoch / device_epoch, pytorch_over_device=torch_epoch / device_epoch,
                  vmap_seeds=len(VMAP_SEEDS), vmap_epoch_s=vmap_epoch, vmap_per_seed_epoch_s=vmap_epoch / len(VMAP_SEEDS),
                  vmap_per_seed_over_device=vmap_epoch / len(VMAP_SEEDS) / device_epoch,
                  eval_chunk_s={str(chunk): seconds for chunk, seconds in chunk_seconds.items()},
                  peak_memory_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if on_cpu:
        result.update(floor_epoch_s=epoch_flops / big_rate, floor_eval_s=eval_flops / big_rate,
                      shape_floor_epoch_s=shape_floor_step * TRAIN_IMAGES / BATCH,
                      shape_floor_eval_s=forward_floor_chunk * (TRAIN_IMAGES + TEST_IMAGES) / mlp_mnist.EVAL_CHUNK)
        result.update(epoch_over_floor=project_epoch / result["floor_epoch_s"],
                      device_epoch_over_floor=device_epoch / result["floor_epoch_s"],
                      device_epoch_over_shape_floor=device_epoch / result["shape_floor_epoch_s"],
                      eval_over_floor=project_eval / result["floor_eval_s"],
                      epoch_over_shape_floor=project_epoch / result["shape_floor_epoch_s"],
                      eval_over_shape_floor=project_eval / result["shape_floor_eval_s"])

    if args.json:
        print(json.dumps(result, indent=2))
        return
    r = result
    print(f"\n{'':<34} {'seconds':>8} {'floor (2048)':>13} {'/ floor':>8} {'shape floor':>12} {'/ shape':>8}")
    for label, key in (("torch loader: training epoch", "epoch"), ("evaluation (70,000)", "eval")):
        seconds = r[f"project_{key}_s"]
        if on_cpu:
            print(f"{label:<34} {seconds:8.3f} {r[f'floor_{key}_s']:13.3f} {r[f'{key}_over_floor']:7.2f}x "
                  f"{r[f'shape_floor_{key}_s']:12.3f} {r[f'{key}_over_shape_floor']:7.2f}x")
        else:
            print(f"{label:<34} {seconds:8.3f}")
    print(f"{'torch loader: compile (apart)':<34} {r['project_compile_s']:8.3f}")
    print(f"{'the DataLoader alone, no training':<34} {r['loader_epoch_s']:8.3f}")
    seconds = r["device_epoch_s"]
    print(f"{'device loader: training epoch':<34} {seconds:8.3f}" + (
        f" {r['floor_epoch_s']:13.3f} {r['device_epoch_over_floor']:7.2f}x {r['shape_floor_epoch_s']:12.3f} "
        f"{r['device_epoch_over_shape_floor']:7.2f}x" if on_cpu else ""))
    print(f"{'device loader: compile (apart)':<34} {r['device_compile_s']:8.3f}")
    print(f"{f'{len(VMAP_SEEDS)} vmapped seeds: epoch of all':<34} {r['vmap_epoch_s']:8.3f}")
    print(f"{f'{len(VMAP_SEEDS)} vmapped seeds: per seed':<34} {r['vmap_per_seed_epoch_s']:8.3f}   "
          f"per seed / device loader = {r['vmap_per_seed_over_device']:.2f}x")
    print(f"{'PyTorch: training epoch':<34} {r['pytorch_epoch_s']:8.3f}")
    print(f"{'PyTorch: evaluation (70,000)':<34} {r['pytorch_eval_s']:8.3f}")
    for chunk, chunk_s in r["eval_chunk_s"].items():
        print(f"{f'evaluation in chunks of {int(chunk):,}':<34} {chunk_s:8.3f}")
    print(f"\nepoch: DataLoader path / device loader = {r['project_over_device']:.2f}x, PyTorch / device loader = "
          f"{r['pytorch_over_device']:.2f}x, PyTorch / DataLoader path = {r['pytorch_over_project']:.2f}x")
    print(f"device loader, 10 epochs with setup and compilation, measured as one run: "
          f"{r['device_ten_epochs_measured_s']:.2f} s")
    print(f"peak memory of this process: {r['peak_memory_mb']:.0f} MB")
    if on_cpu:
        print("floor (2048): the epoch's FLOP at the 2048x2048 matmul rate; shape floor: each of the step's "
              "matmuls at the rate XLA reaches on that shape alone")


if __name__ == "__main__":
    main()
