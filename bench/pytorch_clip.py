#!/usr/bin/env python3
"""CLIP ViT-B/32 image embeddings on PyTorch CPU, for `clipcap bench clip --pytorch` (dev-only).

Usage: python3 bench/pytorch_clip.py --threads N --runs R --images DIR [--smoke] [--fixtures test/fixtures]

The vision tower + projection with weights by the fixture rule (bench/fullsize_torch.py), in eval mode under
torch.no_grad(). Cases (as src/bench/clip.ts):
- bs1, bs16: images/s from preprocessed pixels (the first 1 / 16 photos of DIR, sorted, repeated as needed).
- bs16_decode: images/s from the JPEG files: PIL decode + OpenAI CLIP's preprocessing (one image after the
  other, as the official parse_coco.py and predict.py do) + the batch-16 forward.
Each value is the median of R timed runs after one warm-up; peak_rss_mb is the peak RSS during the case.
Before timing, the embeddings of the two fixture photos are compared with fullsize_goldens `clip.image_embeds`
(a mismatch above 1e-4 of their scale prints a WARNING line on stderr).
Prints one JSON document on stdout: {"torch", "threads", "embeds_max_rel_diff", "results": [...]}.
"""
import json
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fullsize_torch as ft  # noqa: E402


def main():
    ap = ft.bench_arg_parser(runs=5, smoke_help="tiny model (same rule): checks the script runs")
    ap.add_argument("--images", required=True)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    torch, rule_diff = ft.start_torch(args)
    import numpy as np

    clip = ft.build_clip(torch, smoke=args.smoke)
    names = sorted(n for n in os.listdir(args.images) if n.lower().endswith((".jpg", ".jpeg")))
    if not names:
        sys.exit(f"{args.images}: no JPEG files")
    files = [os.path.join(args.images, names[i % len(names)]) for i in range(args.batch)]

    diff = None
    if not args.smoke:
        # Same model and preprocessing as the TypeScript side? The two golden photos' embeddings.
        with open(os.path.join(args.fixtures, "fullsize_goldens.json")) as f:
            golden_names = json.load(f)["images"]
        ref = ft.read_safetensors(os.path.join(args.fixtures, "fullsize_goldens.safetensors"))["clip.image_embeds"]
        px = torch.stack([ft.preprocess(torch, os.path.join(args.fixtures, "images", n)) for n in golden_names])
        with torch.no_grad():
            got = clip(px).numpy().astype(np.float64)
        diff = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
        if not diff <= 1e-4:
            print(f"WARNING: PyTorch CLIP embeddings differ from clip.image_embeds by {diff:.3g}", file=sys.stderr)

    pixels = torch.stack([ft.preprocess(torch, f) for f in files])  # (B, 3, 224, 224)
    results = []

    def encode(px):
        with torch.no_grad():
            return clip(px)

    def decode_and_encode():
        px = torch.stack([ft.preprocess(torch, f) for f in files])
        return encode(px)

    for case, n, fn in (
        ("bs1", 1, lambda: encode(pixels[:1])),
        (f"bs{args.batch}", args.batch, lambda: encode(pixels)),
        (f"bs{args.batch}_decode", args.batch, decode_and_encode),
    ):
        t, rss = ft.timed(fn, args.runs)
        value = n / t
        print(f"pytorch {case}: {value:.2f} images/s", file=sys.stderr)
        results.append(ft.result(case, "images_per_s", value, args.runs, rss))
    ft.print_report(torch, rule_diff, results, embeds_max_rel_diff=diff)


if __name__ == "__main__":
    main()
