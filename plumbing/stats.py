"""The few statistics the studies use: the median of repeated timings, and paired differences between two
settings run with the same seeds, with a 95% t interval and a verdict only as strong as that interval."""
import math
import statistics
import time


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
