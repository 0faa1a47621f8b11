"""Side-by-side timing helper shared by the benchmark scripts.

Runs two callables alternately (A, B, A, B, ...) in one process after warm-up runs, so
machine load drifts hit both equally, and reports the median of each and their ratio.
"""
import argparse
import statistics
import subprocess
import time

import torch


def alternating_medians(fns, repeats=7, warmup=1):
    """Median seconds of each callable of ``fns``, run alternately (A, B, A, B, ...) after
    ``warmup`` rounds; a list in the order of ``fns``."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, fn_times in zip(fns, times):
            start = time.perf_counter()
            fn()
            fn_times.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def compare(name, ours, theirs, repeats=7, warmup=1, reference="torchvision"):
    """Times ours() and theirs() alternately; prints and returns (median_ours, median_theirs).
    ``reference`` names what theirs() runs in the printout."""
    ours_median, theirs_median = alternating_medians((ours, theirs), repeats, warmup)
    print(f"{name:<48} ours {ours_median * 1e3:9.2f} ms   {reference} {theirs_median * 1e3:9.2f} ms   "
          f"speed-up x{theirs_median / ours_median:6.2f}", flush=True)
    return ours_median, theirs_median


def timed(name, fn, repeats=7, warmup=1):
    """Median time of fn() alone (for ops torchvision lacks); prints and returns it."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"{name:<48} ours {median * 1e3:9.2f} ms", flush=True)
    return median


def bench_args(description, repeats, extra=lambda parser: None):
    """Parse a benchmark's --threads / --repeats (plus ``extra``'s options), set the threads."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=repeats)
    extra(parser)
    args = parser.parse_args()
    setup_threads(args.threads)
    return args


def setup_threads(threads):
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {describe_cpu()}",
          flush=True)


def describe_cpu():
    """lscpu's model name and the flags that decide oneDNN's kernels (AVX-512, bfloat16, AMX),
    which differ between the machines benchmarks run on."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return f"CPU: {fields.get('Model name', '?').strip()} ({', '.join(isa) or 'no AVX2'})"


def sgd_iteration(model, inputs, optimizer):
    """A callable running one training iteration of ``model`` on the keyword ``inputs``:
    forward, the sum of its losses backward, and an ``optimizer`` step."""
    def step():
        losses = model(**inputs)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
    return step
