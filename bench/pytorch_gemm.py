#!/usr/bin/env python3
"""PyTorch's CPU GEMM on the `clipcap bench gemm` cases, for comparison (dev-only; run by --pytorch).

Usage: python3 bench/pytorch_gemm.py --threads N --runs R --cases 1200x768x3072,768x1200x3072_tA,...
   or: python3 bench/pytorch_gemm.py --threads N --runs R --stdin

Case ids are MxKxN with _tA / _tB suffixes: op(A) is (M, K) and op(B) is (K, N); with _tA, A is stored
(K, M) and with _tB, B is stored (N, K) (the nn.Linear weight layout), and the product uses the transposed
views, as the native backend does. Prints one JSON document on stdout:
{"torch": VERSION, "threads": N, "results": [{"case", "backend": "pytorch", "metric": "gflops", "value", "runs"}]}
Each value is the median over R timed runs after one warm-up, writing into a preallocated output.

With --stdin (how `clipcap bench gemm --pytorch` runs it, alternating single native and PyTorch runs so
that both see the same machine load): prints {"torch": VERSION, "ready": true} once torch is imported, then
reads lines "CASE RUNS REPS" and answers each with {"case", "flops", "seconds": [per-product time of each
run]} on one line, each run timing REPS back-to-back products (a case's operands are made and warmed up on
its first request).
"""
import argparse
import json
import os
import statistics
import sys
import time


def parse_case(case):
    dims, *suffixes = case.split("_")
    m, k, n = (int(x) for x in dims.split("x"))
    return m, k, n, "tA" in suffixes, "tB" in suffixes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cases")
    ap.add_argument("--stdin", action="store_true")
    args = ap.parse_args()
    # BLAS thread pools read these at load time, before torch is imported.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    prepared = {}

    def prepare(case):
        # One case's operands at a time (the big ones are hundreds of MB), warmed up once.
        if case not in prepared:
            prepared.clear()
            m, k, n, ta, tb = parse_case(case)
            a = torch.rand(k, m) - 0.5 if ta else torch.rand(m, k) - 0.5
            b = torch.rand(n, k) - 0.5 if tb else torch.rand(k, n) - 0.5
            a_op = a.t() if ta else a
            b_op = b.t() if tb else b
            out = torch.empty(m, n)
            torch.matmul(a_op, b_op, out=out)  # warm-up
            prepared[case] = (a_op, b_op, out, 2.0 * m * n * k)
        return prepared[case]

    def time_runs(case, runs, reps=1):
        # Each run times `reps` back-to-back products (short ones are timed in steady state, as a model
        # issues them) and reports the time per product.
        a_op, b_op, out, flops = prepare(case)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            for _ in range(reps):
                torch.matmul(a_op, b_op, out=out)
            times.append((time.perf_counter() - t0) / reps)
        return flops, times

    def run(case):
        flops, times = time_runs(case, args.runs)
        value = flops / statistics.median(times) / 1e9
        return {"case": case, "backend": "pytorch", "metric": "gflops", "value": value, "runs": args.runs}

    if args.stdin:
        print(json.dumps({"torch": torch.__version__, "ready": True}), flush=True)
        for line in sys.stdin:
            if not line.strip():
                continue
            case, runs, reps = line.split()
            flops, times = time_runs(case, int(runs), int(reps))
            print(json.dumps({"case": case, "flops": flops, "seconds": times}), flush=True)
        return
    if not args.cases:
        ap.error("give --cases or --stdin")
    results = [run(case) for case in args.cases.split(",")]
    json.dump({"torch": torch.__version__, "threads": args.threads, "results": results}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
