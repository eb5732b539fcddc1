/**
 * The benchmarks `clipcap bench WHAT` can run. To add one: write src/bench/WHAT.ts exporting a runner
 * `(opts: BenchRunOptions) => Promise<BenchReport>` and add an entry here (its module is imported only when
 * that bench runs, so heavy model code does not slow down the CLI). Options declared in `options` are added
 * to the `bench` command and reach the runner in `opts.extra` under their camelCase name.
 */
import type { BenchReport, BenchRunOptions } from './report.js';

export interface BenchOptionSpec {
  /** commander flags, e.g. '--pytorch' or '--cases <LIST>' */
  flags: string;
  description: string;
}

export interface BenchEntry {
  description: string;
  options?: readonly BenchOptionSpec[];
  run: (opts: BenchRunOptions) => Promise<BenchReport>;
}

/** --smoke of the full-size model benches (clip, caption, extract). */
const SMOKE_OPTION: BenchOptionSpec = {
  flags: '--smoke',
  description: 'clip, caption, extract: tiny models, 1 run (checks the bench; numbers mean nothing)',
};

/** Options of both full-size model benches with a PyTorch peer (clip, caption). */
const MODEL_BENCH_OPTIONS: readonly BenchOptionSpec[] = [
  {
    flags: '--pytorch',
    description:
      'clip, caption: also time PyTorch (caption: official decoders and a KV cache) in the same run (dev-only: a source checkout and python3 with torch)',
  },
  SMOKE_OPTION,
];

/** CLIP's weights (clip, extract). */
const CLIP_OPTIONS: readonly BenchOptionSpec[] = [
  {
    flags: '--clip <DIR|HUB_ID>',
    description: 'clip, extract: real CLIP weights instead of the synthetic ViT-B/32',
  },
  {
    flags: '--model <NAME>',
    description:
      'clip, extract: vit-b32 or rn50x4 (the ResNet CLIP of the Transformer COCO model, 288 px) (default: vit-b32)',
  },
];

export const BENCHES: Record<string, BenchEntry> = {
  gemm: {
    description: 'GEMM GFLOP/s on GPT-2/CLIP shapes (forward and the transposed backward products)',
    options: [
      {
        flags: '--pytorch',
        description:
          'gemm: also time PyTorch on the same cases (dev-only: a source checkout and python3 with torch)',
      },
      {
        flags: '--reference',
        description: 'gemm: time the slow reference backend on every case (default: small ones)',
      },
      {
        flags: '--cases <LIST>',
        description:
          'gemm: comma-separated MxKxN[_tA][_tB][_pB][_cold] cases instead of the default set (_pB: B prepacked with packWeight; _cold: B read from memory, cycling through 128 MiB of copies)',
      },
    ],
    run: async (opts) => (await import('./gemm.js')).runGemmBench(opts),
  },
  clip: {
    description:
      'full-size CLIP image embeddings/s (ViT-B/32, or RN50x4 with --model rn50x4) at batch 1 and 16, and from JPEG files',
    options: [
      ...MODEL_BENCH_OPTIONS,
      ...CLIP_OPTIONS,
      {
        flags: '--images <DIR>',
        description: 'clip: JPEG photos to read (default: synthetic 640x480 JPEGs in a temporary folder)',
      },
      {
        flags: '--cases <LIST>',
        description: 'clip: comma-separated cases (bs1, bs16, bs16_decode; default: all)',
      },
    ],
    run: async (opts) => (await import('./clip.js')).runClipBench(opts),
  },
  caption: {
    description: 'full-size captioning: beam 5 / greedy latency for 20 tokens, captions/s for 32 images',
    options: [
      ...MODEL_BENCH_OPTIONS,
      {
        flags: '--clipcap <FILE>',
        description: 'caption: a ClipCap checkpoint instead of the synthetic weights',
      },
      { flags: '--gpt2 <DIR|HUB_ID>', description: 'caption: GPT-2 config/weights for --clipcap' },
      {
        flags: '--weights <FORMAT>',
        description: "caption: GPT-2's weights: f32, bf16 or int8 (weight-only; default: f32)",
      },
      {
        flags: '--pytorch-decoders <LIST>',
        description:
          'caption: PyTorch decoders to time: official (predict.py, no cache), kv (KV cache) (default: official,kv)',
      },
      {
        flags: '--pytorch-batch-calls <N>',
        description:
          'caption: how many of the 32 sequential PyTorch calls of batch32_beam5 to time (default: 2)',
      },
    ],
    run: async (opts) => (await import('./caption.js')).runCaptionBench(opts),
  },
  extract: {
    description:
      'clipcap extract end to end in images/s (JPEG decode + preprocessing + CLIP ViT-B/32 + the safetensors output) on synthetic 640x480 and 2048x1536 photos',
    options: [
      SMOKE_OPTION,
      ...CLIP_OPTIONS,
      {
        flags: '--cases <LIST>',
        description: 'extract: comma-separated cases (jpeg_640x480, jpeg_2048x1536; default: both)',
      },
    ],
    run: async (opts) => (await import('./extract.js')).runExtractBench(opts),
  },
  train: {
    description:
      'training samples/s of one optimizer step: MLP + GPT-2 fine-tuned, transformer + frozen GPT-2',
    options: [{ flags: '--smoke', description: 'train: tiny models, 1 run (checks the bench)' }],
    run: async (opts) => (await import('./train.js')).runTrainBench(opts),
  },
  serve: {
    description:
      'HTTP serving: requests/s and p50/p99 latency at 1, 8, 32 concurrent clients (loopback), with peak RSS',
    options: [
      { flags: '--smoke', description: 'serve: tiny models, 1 s per level (checks the bench)' },
      { flags: '--seconds <S>', description: 'serve: timed seconds per concurrency level (default: 10)' },
      { flags: '--clients <LIST>', description: 'serve: comma-separated client counts (default: 1,8,32)' },
    ],
    run: async (opts) => (await import('./serve.js')).runServeBench(opts),
  },
};
