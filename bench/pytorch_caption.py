#!/usr/bin/env python3
"""The official ClipCap decoders on PyTorch CPU, for `clipcap bench caption --pytorch` (dev-only).

Usage: python3 bench/pytorch_caption.py --threads N --runs R [--tokens 20] [--batch 32] [--batch-calls C]
       [--decoders official,kv] [--smoke] [--fixtures test/fixtures]

Full-size GPT-2 small + the ClipCap MLP mapper with weights by the fixture rule (bench/fullsize_torch.py), and
predict.py's `generate_beam` / `generate2` as they are (no KV cache: every step recomputes the whole sequence).
Each case starts from a CLIP embedding made by the weight rule (tensor names `bench.clip_embedding.0` / `.1`),
like the TypeScript side (src/bench/caption.ts benchEmbeddings), so neither side needs fixture files:
- beam5_20tok / greedy_20tok: one prefix, `--tokens` tokens, no stop token; metric ms (+ *_per_token ms/token).
- batch32_beam5: the official code captions a batch by calling generate_beam once per image, so this is
  `--batch` sequential calls; only the first `--batch-calls` of them are timed (each takes as long as
  beam5_20tok) and captions_per_s = calls / seconds.
With `kv` in --decoders, the same cases run on PyTorch with a KV cache (bench/fullsize_torch.py forward_kv,
generate_beam_kv, greedy_kv: what a tuned PyTorch user runs; OMP_WAIT_POLICY=PASSIVE), reported with backend
"pytorch_kv"; batch32_beam5 is then one batched call of all 32 prefixes, timed whole. Their tokens for the first
embedding (`kv_tokens`: best beam and greedy) are printed so the TypeScript side can check they equal its own,
and they are checked here against the official decoders' for --check-tokens tokens.
Before timing, the model's 10 greedy tokens from both golden embeddings are checked against
`clipcap.greedy10`; a mismatch prints a WARNING line on stderr.
Prints one JSON document on stdout: {"torch", "threads", "greedy10_ok", "results": [...]}.
"""
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fullsize_torch as ft  # noqa: E402
import numpy as np  # noqa: E402


def batch_embeddings(embeds, n):
    """n distinct CLIP embeddings from the two base ones: row i = embeds[i % 2] * (1 + 0.05 * (i // 2))
    (the same rule as src/bench/caption.ts)."""
    base = embeds.numpy().astype(np.float64)  # v * s in float64, rounded once, as Math.fround(v * s)
    return [torch_from((base[i % 2] * (1.0 + 0.05 * (i // 2))).astype(np.float32)) for i in range(n)]


def torch_from(a):
    import torch

    return torch.from_numpy(a)


def main():
    ap = ft.bench_arg_parser(runs=1, smoke_help="tiny models (same rule): checks the script runs")
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batch-calls", type=int, default=2)
    ap.add_argument("--decoders", default="official,kv", help="official, kv or both (comma-separated)")
    ap.add_argument("--check-tokens", type=int, default=4, help="tokens the kv/official agreement check decodes")
    args = ap.parse_args()
    decoders = set(args.decoders.split(","))
    if not decoders or not decoders <= {"official", "kv"}:
        ap.error("--decoders takes official, kv or official,kv")
    torch, rule_diff = ft.start_torch(args)
    mapper, gpt = ft.build_captioner(torch, smoke=args.smoke)
    D = 24 if args.smoke else 512  # the tiny mapper takes 24-d embeddings
    embeds = torch.from_numpy(np.stack([ft.synthetic_values(f"bench.clip_embedding.{i}", D) for i in (0, 1)]))

    greedy_ok = None
    if not args.smoke:
        # Same model as the fixtures? Ten argmax tokens from each golden prefix, batched, no cache.
        golden = ft.read_safetensors(os.path.join(args.fixtures, "fullsize_goldens.safetensors"))
        with torch.no_grad():
            gen = mapper(torch.from_numpy(golden["clip.image_embeds"].copy()))
            toks = []
            for _ in range(10):
                nxt = gpt(gen)[:, -1, :].argmax(-1)
                toks.append(nxt)
                gen = torch.cat([gen, gpt.embed(nxt).unsqueeze(1)], 1)
        got = torch.stack(toks, 1).tolist()
        ref = golden["clipcap.greedy10"].tolist()
        greedy_ok = got == ref
        if not greedy_ok:
            print(f"WARNING: PyTorch model's greedy10 {got} != fixture clipcap.greedy10 {ref}", file=sys.stderr)

    def prefix_of(e):
        with torch.no_grad():
            return mapper(e.view(1, -1))  # (1, K, E)

    T = args.tokens
    results = []

    batch = batch_embeddings(embeds, args.batch)
    extra = {"greedy10_ok": greedy_ok}

    if "official" in decoders:
        # Warm-up: one short call of each decoder (first-call allocations), not timed.
        ft.generate_beam(torch, gpt, prefix_of(embeds[0]), 5, min(T, 2), stop_token_index=None)
        ft.generate2(torch, gpt, prefix_of(embeds[0]), min(T, 2), stop_token_index=None)

        for case, decode in (
            ("beam5_20tok", lambda p: ft.generate_beam(torch, gpt, p, 5, T, stop_token_index=None)),
            ("greedy_20tok", lambda p: ft.generate2(torch, gpt, p, T, stop_token_index=None)),
        ):

            def run():
                out = decode(prefix_of(embeds[0]))  # the mapper is part of the latency, as on the TypeScript side
                n = len(out[0]) if case.startswith("beam") else len(out)
                assert n == T, f"{case}: {n} tokens, expected {T}"

            t, rss = ft.timed(run, args.runs, warmup=0)
            ms = t * 1000
            print(f"pytorch {case}: {ms:.0f} ms", file=sys.stderr)
            results.append(ft.result(case, "ms", ms, args.runs, rss))
            results.append(ft.result(f"{case}_per_token", "ms_per_token", ms / T, args.runs))

        calls = max(1, min(args.batch_calls, args.batch))

        def run_calls():
            for i in range(calls):
                ft.generate_beam(torch, gpt, prefix_of(batch[i]), 5, T, stop_token_index=None)

        t, rss = ft.timed(run_calls, args.runs, warmup=0)
        rate = calls / t
        print(
            f"pytorch batch32_beam5: {rate:.3f} captions/s ({calls} of {args.batch} sequential calls timed)",
            file=sys.stderr,
        )
        results.append(ft.result("batch32_beam5", "captions_per_s", rate, args.runs, rss))
        extra["batch_calls_timed"] = calls

    if "kv" in decoders:
        # The KV-cache decoders give the official decoders' tokens (checked on a short run; the official beam
        # search is slow) and their own for the first embedding, which the TypeScript side compares with its own.
        n = min(args.check_tokens, T)
        p0 = prefix_of(embeds[0])
        same = ft.generate_beam_kv(torch, gpt, p0, 5, n, stop_token_index=None)[0] == ft.generate_beam(
            torch, gpt, p0, 5, n, stop_token_index=None
        ) and ft.greedy_kv(torch, gpt, p0, n, stop_token_index=None)[0] == ft.generate2(
            torch, gpt, p0, n, stop_token_index=None
        )
        extra["kv_matches_official"] = same
        if not same:
            print("WARNING: PyTorch's KV-cache decoders differ from the official ones", file=sys.stderr)
        kv_cases = (
            ("beam5_20tok", lambda: ft.generate_beam_kv(torch, gpt, prefix_of(embeds[0]), 5, T, stop_token_index=None)),
            ("greedy_20tok", lambda: ft.greedy_kv(torch, gpt, prefix_of(embeds[0]), T, stop_token_index=None)),
        )
        kv_tokens = {}
        for case, decode in kv_cases:
            out = decode()  # warm-up, and the tokens
            kv_tokens[case] = out[0][0] if case.startswith("beam") else out[0]
            t, rss = ft.timed(decode, args.runs, warmup=0)
            ms = t * 1000
            print(f"pytorch_kv {case}: {ms:.0f} ms", file=sys.stderr)
            results.append(ft.result(case, "ms", ms, args.runs, rss, backend="pytorch_kv"))
            results.append(ft.result(f"{case}_per_token", "ms_per_token", ms / T, args.runs, backend="pytorch_kv"))
        extra["kv_tokens"] = kv_tokens
        stacked = torch.stack(batch)  # (32, D)

        def run_batch():
            with torch.no_grad():
                prefixes = mapper(stacked)
            out = ft.generate_beam_kv(torch, gpt, prefixes, 5, T, stop_token_index=None)
            assert all(len(b[0]) == T for b in out)

        t, rss = ft.timed(run_batch, max(1, args.runs // 3), warmup=0)
        rate = args.batch / t
        print(f"pytorch_kv batch32_beam5: {rate:.3f} captions/s", file=sys.stderr)
        results.append(ft.result("batch32_beam5", "captions_per_s", rate, max(1, args.runs // 3), rss, backend="pytorch_kv"))

    ft.print_report(torch, rule_diff, results, **extra)


if __name__ == "__main__":
    main()
