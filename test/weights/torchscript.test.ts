/**
 * OpenAI's CLIP TorchScript archives (test/fixtures/openai_clip_tiny/, made by test/weights/data/make_openai_clip.py
 * with PyTorch 1.13): the archive is read without running anything, its vision tower is mapped onto the Hugging
 * Face names, and our image embeddings match the PyTorch module's (float32 on the fp16-rounded weights).
 */
import { existsSync, promises as fs, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { availableBackends, getBackend } from '../../src/engine/index.js';
import { ClipVisionModel } from '../../src/models/clip.js';
import { loadImageEncoder } from '../../src/pipeline/load.js';
import { UserError } from '../../src/util/errors.js';
import { loadOpenAIClipVision, openaiClipVision } from '../../src/weights/families/openai-clip.js';
import type { HostTensor, StateDict } from '../../src/weights/host.js';
import { loadSafetensors, saveSafetensors } from '../../src/weights/safetensors.js';
import { loadTorchCheckpoint } from '../../src/weights/torch.js';
import { loadTorchScript } from '../../src/weights/torchscript.js';
import { cli } from '../cli/harness.js';

const FIX = fileURLToPath(new URL('../fixtures/', import.meta.url));
const DIR = path.join(FIX, 'openai_clip_tiny');
const SCRIPTED = path.join(DIR, 'ViT-tiny.pt');
const TRACED = path.join(DIR, 'ViT-tiny-traced.pt');
const MARKER = '/tmp/clipcap_pwned';

async function readAll(file: string): Promise<StateDict> {
  const f = await loadSafetensors(file);
  try {
    return await f.readAll();
  } finally {
    await f.close();
  }
}

function tensor(sd: StateDict, name: string): HostTensor {
  const t = sd.get(name);
  if (!t) throw new Error(`${name} missing from the fixture`);
  return t;
}

/** max|a - b| / max|b|. */
function relDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / den;
}

let expected: StateDict;
let goldenPixels: Float32Array; // (2, 3, 224, 224): the first two fixture photos
let goldenImages: string[];
beforeAll(async () => {
  expected = await readAll(path.join(DIR, 'expected.safetensors'));
  const g = await loadSafetensors(path.join(FIX, 'goldens.safetensors'));
  goldenPixels = (await g.tensor('clip.pixel_values_0')).data as Float32Array;
  await g.close();
  goldenImages = (JSON.parse(readFileSync(path.join(FIX, 'goldens.json'), 'utf8')) as { images: string[] })
    .images;
});

const cases = [
  {
    file: SCRIPTED,
    kind: 'torch.jit.script',
    pixels: (): Float32Array => goldenPixels,
    embeds: 'script.image_embeds',
    // The generator's sizes; heads from the archive's num_heads attribute (4 != width / 64).
    config: {
      hidden_size: 32,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      image_size: 224,
      patch_size: 32,
    },
    projection: 24,
  },
  {
    file: TRACED,
    kind: 'torch.jit.trace (as OpenAI saved theirs)',
    pixels: (): Float32Array => tensor(expected, 'traced.pixel_values').data as Float32Array,
    embeds: 'traced.image_embeds',
    // A traced archive keeps no attributes: heads by OpenAI's rule width / 64.
    config: { hidden_size: 128, num_hidden_layers: 1, num_attention_heads: 2, image_size: 32, patch_size: 8 },
    projection: 16,
  },
];

describe.each(cases)('$kind archive', (c) => {
  it('reads parameters and buffers as saved: fp16 where OpenAI converts, fp32 elsewhere, text tower too', async () => {
    const m = await loadTorchScript(c.file);
    expect(m.className).toMatch(/^__torch__\.(___torch_mangle_\d+\.)?CLIP$/);
    expect(m.tensors.get('visual.conv1.weight')?.dtype).toBe('f16');
    expect(m.tensors.get('visual.proj')?.dtype).toBe('f16');
    expect(m.tensors.get('visual.transformer.resblocks.0.attn.in_proj_weight')?.dtype).toBe('f16');
    expect(m.tensors.get('visual.class_embedding')?.dtype).toBe('f32');
    expect(m.tensors.get('visual.ln_pre.weight')?.dtype).toBe('f32');
    expect(m.tensors.get('token_embedding.weight')?.shape).toEqual([64, 16]);
    expect(m.tensors.get('input_resolution')?.dtype).toBe('i64');
    expect([...(m.tensors.get('input_resolution')?.data ?? [])]).toEqual([c.config.image_size]);
    expect(m.classes.get('visual.transformer.resblocks.0.mlp.gelu')).toMatch(/\.QuickGELU$/);
  });

  it('reads only the selected tensors', async () => {
    const m = await loadTorchScript(c.file, { select: (n) => n.startsWith('visual.') });
    expect(m.tensors.size).toBeGreaterThan(0);
    expect([...m.tensors.keys()].every((k) => k.startsWith('visual.'))).toBe(true);
  });

  it('maps to the Hugging Face CLIP vision config and names', async () => {
    const { config, weights } = await loadOpenAIClipVision(c.file);
    expect(config).toMatchObject({
      ...c.config,
      intermediate_size: 4 * c.config.hidden_size,
      num_channels: 3,
      layer_norm_eps: 1e-5,
      hidden_act: 'quick_gelu',
      projection_dim: c.projection,
    });
    expect(weights.get('visual_projection.weight')?.shape).toEqual([c.projection, c.config.hidden_size]);
    expect([...weights.values()].every((t) => t.dtype === 'f32' && t.data instanceof Float32Array)).toBe(
      true,
    );
  });

  it('image embeddings match PyTorch at 1e-4 relative', async () => {
    const { config, weights } = await loadOpenAIClipVision(c.file);
    const ref = tensor(expected, c.embeds);
    // Every backend that loads here (the reference one always).
    for (const backend of availableBackends()) {
      const model = ClipVisionModel.fromWeights(backend, config, weights, c.file);
      const out = model.encodeImages(c.pixels());
      const got = await backend.download(out);
      backend.free(out);
      model.dispose();
      const d = relDiff(got, ref.data as Float32Array);
      console.log(
        `${path.basename(c.file)} ${backend.name}: worst relative difference ${d.toExponential(2)}`,
      );
      expect(d).toBeLessThan(1e-4);
    }
  });
});

describe('loading an OpenAI CLIP archive as the image encoder', () => {
  it('loadImageEncoder(FILE.pt) encodes like PyTorch', async () => {
    const enc = await loadImageEncoder(SCRIPTED, { backend: 'reference' });
    try {
      expect(enc.projectionDim).toBe(24);
      expect(enc.imageSize).toBe(224);
      const out = enc.encodeImages(goldenPixels);
      const backend = getBackend('reference');
      const d = relDiff(
        await backend.download(out),
        tensor(expected, 'script.image_embeds').data as Float32Array,
      );
      backend.free(out);
      console.log(`loadImageEncoder(ViT-tiny.pt): worst relative difference ${d.toExponential(2)}`);
      expect(d).toBeLessThan(1e-4);
    } finally {
      enc.dispose();
    }
  });

  it('clipcap extract --clip FILE.pt: the photos end to end (decode, resize, crop, CLIP)', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'clipcap-openai-'));
    try {
      const out = path.join(dir, 'feats.safetensors');
      const images = goldenImages.slice(0, 2).map((n) => path.join(FIX, 'images', n));
      const run = await cli([
        'extract',
        ...images,
        '--clip',
        SCRIPTED,
        '--out',
        out,
        '--backend',
        'reference',
      ]);
      expect(run.code, run.err).toBe(0);
      const got = tensor(await readAll(out), 'clip_embedding');
      expect(got.shape).toEqual([2, 24]);
      const d = relDiff(
        got.data as Float32Array,
        tensor(expected, 'script.image_embeds').data as Float32Array,
      );
      console.log(`clipcap extract --clip ViT-tiny.pt: worst relative difference ${d.toExponential(2)}`);
      expect(d).toBeLessThan(1e-4);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('clipcap caption --clip FILE.pt: the same captions as from the PyTorch embeddings', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'clipcap-openai-'));
    try {
      const emb = path.join(dir, 'emb.safetensors');
      const ref = tensor(expected, 'script.image_embeds');
      await saveSafetensors(emb, { clip_embedding: { shape: [2, 24], data: ref.data as Float32Array } });
      // The tiny ClipCap checkpoint maps 24-d embeddings (ViT-tiny's width) and holds its GPT-2 weights.
      const common = [
        'caption',
        '--clipcap',
        path.join(FIX, 'clipcap_mlp_tiny.pt'),
        '--gpt2',
        path.join(FIX, 'gpt2_tiny'),
        '--max-tokens',
        '12',
        '--decode',
        'greedy',
        '--backend',
        'reference',
        '--format',
        'json',
      ];
      const images = goldenImages.slice(0, 2).map((n) => path.join(FIX, 'images', n));
      const fromPhotos = await cli([...common, '--clip', SCRIPTED, ...images]);
      const fromEmbeds = await cli([...common, '--embeddings', emb]);
      expect(fromPhotos.code, fromPhotos.err).toBe(0);
      expect(fromEmbeds.code, fromEmbeds.err).toBe(0);
      const tokens = (out: string): number[][] =>
        (JSON.parse(out) as { tokens: number[] }[]).map((e) => e.tokens);
      expect(tokens(fromPhotos.out)).toEqual(tokens(fromEmbeds.out));
      expect(tokens(fromPhotos.out)[0].length).toBeGreaterThan(0);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('a .pt path that does not exist is named', async () => {
    await expect(loadImageEncoder(path.join(DIR, 'ViT-B-32.pt'))).rejects.toThrow(
      /^cannot open .*ViT-B-32\.pt: no such file; check the path$/,
    );
  });
});

describe('TorchScript archives: refusals', () => {
  let tmp: string;
  beforeAll(async () => {
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'clipcap-torchscript-'));
  });
  afterAll(async () => {
    await fs.rm(tmp, { recursive: true, force: true });
  });

  async function refusal(p: Promise<unknown>): Promise<string> {
    try {
      await p;
    } catch (e) {
      expect(e).toBeInstanceOf(UserError);
      return (e as Error).message;
    }
    throw new Error('accepted');
  }

  it.each([
    ['hostile_system.pt', /^refusing to load posix\.system from .*hostile_system\.pt: only tensors/],
    [
      'hostile_torch_prefix.pt',
      /hostile_torch_prefix\.pt: __torch__\.os\.system is constructed with arguments$/,
    ],
    ['hostile_setstate.pt', /hostile_setstate\.pt: __torch__\.VisionTransformer pickles a custom state/],
  ])('%s is refused and nothing runs', async (name, pattern) => {
    const file = path.join(DIR, name);
    expect(await refusal(loadOpenAIClipVision(file))).toMatch(pattern);
    expect(await refusal(loadImageEncoder(file))).toMatch(pattern);
    expect(existsSync(MARKER)).toBe(false);
  });

  it('a truncated archive is a clear error', async () => {
    const whole = await fs.readFile(SCRIPTED);
    for (const keep of [whole.length - 10, Math.floor(whole.length / 2), 100]) {
      const file = path.join(tmp, `truncated_${keep}.pt`);
      await fs.writeFile(file, whole.subarray(0, keep));
      expect(await refusal(loadOpenAIClipVision(file))).toBe(
        `${file}: truncated or damaged zip archive (no end-of-central-directory record); download it again`,
      );
    }
  });

  it('a file that is not a zip, and a zip that is not a TorchScript module', async () => {
    const notZip = path.join(FIX, 'legacy_format.pt');
    expect(await refusal(loadOpenAIClipVision(notZip))).toMatch(
      /legacy_format\.pt: not a TorchScript archive \(not a zip file\)/,
    );
    const stateDict = path.join(FIX, 'clipcap_mlp_tiny.pt');
    expect(await refusal(loadOpenAIClipVision(stateDict))).toMatch(
      /clipcap_mlp_tiny\.pt: data\.pkl does not hold a TorchScript module/,
    );
  });

  it('no vision tower, a ResNet tower and an unknown visual.* key are named', async () => {
    // A TorchScript archive of something else: no visual.* at all.
    const noVisual = await loadTorchScript(SCRIPTED, { select: (n) => !n.startsWith('visual.') });
    expect(noVisual.tensors.has('visual.proj')).toBe(false);
    expect(() => openaiClipVision(noVisual, 'x.pt')).toThrow(/x\.pt: no visual\.\* weights/);
    const full = await loadTorchScript(SCRIPTED);
    const resnet = {
      ...full,
      tensors: new Map([
        ...full.tensors,
        ['visual.attnpool.c_proj.weight', tensor(full.tensors, 'visual.proj')],
      ]),
    };
    expect(() => openaiClipVision(resnet, 'RN50.pt')).toThrow(/RN50\.pt: a ResNet CLIP/);
    const extra = {
      ...full,
      tensors: new Map([
        ...full.tensors,
        ['visual.conv1.bias', tensor(full.tensors, 'visual.class_embedding')],
      ]),
    };
    expect(() => openaiClipVision(extra, 'extra.pt')).toThrow(/extra\.pt: unexpected visual\.conv1\.bias/);
  });

  it('torch.save checkpoint loading still refuses TorchScript archives', async () => {
    expect(await refusal(loadTorchCheckpoint(SCRIPTED))).toMatch(
      /is a TorchScript archive \(torch\.jit\.save\), which clipcap reads only as OpenAI's CLIP \(--clip FILE\.pt\)/,
    );
  });
});
