import { describe, it, expect, beforeAll, afterAll, vi } from 'vitest';
import { promises as fs, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { readSafetensors } from '../../src/weights/safetensors.js';
import { loadTorchCheckpoint } from '../../src/weights/torch.js';
import { gpt2Weights, clipWeights, clipcapCheckpoint, loadClipcapDir } from '../../src/weights/keymaps.js';
import { convertClipcap } from '../../src/weights/convert.js';
import { register, runConvert } from '../../src/cli/commands/convert.js';
import type { HostTensor, StateDict } from '../../src/weights/host.js';
import { UserError } from '../../src/util/errors.js';

const FIX = fileURLToPath(new URL('../fixtures/', import.meta.url));
const json = (p: string): Record<string, unknown> =>
  JSON.parse(readFileSync(path.join(FIX, p), 'utf8')) as Record<string, unknown>;

const zeros = (...shape: number[]): HostTensor => ({
  dtype: 'f32',
  shape,
  data: new Float32Array(shape.reduce((a, b) => a * b, 1)),
});

function sameData(a: HostTensor, b: HostTensor): boolean {
  return Buffer.from(a.data.buffer, a.data.byteOffset, a.data.byteLength).equals(
    Buffer.from(b.data.buffer, b.data.byteOffset, b.data.byteLength),
  );
}

function thrown(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(UserError);
    return (e as Error).message;
  }
  throw new Error('no error');
}

let gpt2Tiny: StateDict;
let clipTiny: StateDict;
let mlpTiny: StateDict;
let dir: string;
beforeAll(async () => {
  gpt2Tiny = (await readSafetensors(path.join(FIX, 'gpt2_tiny', 'model.safetensors'))).tensors;
  clipTiny = (await readSafetensors(path.join(FIX, 'clip_tiny', 'model.safetensors'))).tensors;
  mlpTiny = await loadTorchCheckpoint(path.join(FIX, 'clipcap_mlp_tiny.pt'));
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'clipcap-keymaps-'));
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

describe('gpt2Weights', () => {
  it('gpt2_tiny + config.json: canonical names, the config, tensors passed through unchanged', () => {
    const { config, weights } = gpt2Weights(gpt2Tiny, json('gpt2_tiny/config.json'));
    expect(config).toEqual({
      vocab_size: 50257,
      n_positions: 128,
      n_embd: 32,
      n_layer: 2,
      n_head: 4,
      layer_norm_epsilon: 1e-5,
      resid_pdrop: 0,
      embd_pdrop: 0,
      attn_pdrop: 0,
      n_inner: null,
      activation_function: 'gelu_new',
    });
    expect(weights.size).toBe(28);
    expect([...weights.keys()].slice(0, 4)).toEqual([
      'wte.weight',
      'wpe.weight',
      'h.0.ln_1.weight',
      'h.0.ln_1.bias',
    ]);
    for (const [k, t] of weights) expect(t, k).toBe(gpt2Tiny.get(`transformer.${k}`));
    // Conv1D layout (in, out) is kept as in the file.
    expect(weights.get('h.0.attn.c_attn.weight')?.shape).toEqual([32, 96]);
  });

  it('accepts hub names (no prefix) with buffers and a tied lm_head, and ClipCap gpt.transformer.* names', () => {
    const hub: StateDict = new Map();
    for (const [k, t] of gpt2Tiny) hub.set(k.slice('transformer.'.length), t);
    hub.set('h.0.attn.bias', zeros(1, 1, 128, 128));
    hub.set('h.1.attn.masked_bias', zeros());
    const wte = gpt2Tiny.get('transformer.wte.weight') as HostTensor;
    hub.set('lm_head.weight', { ...wte, data: (wte.data as Float32Array).slice() });
    expect(gpt2Weights(hub, { n_head: 4 }).weights.size).toBe(28);
    // The ClipCap checkpoint's GPT-2 (with its clip_project.* ignored).
    const fromClipcap = gpt2Weights(mlpTiny, { n_head: 4 });
    let worst = 0;
    for (const [k, t] of fromClipcap.weights) {
      const ref = gpt2Tiny.get(`transformer.${k}`) as HostTensor;
      expect(sameData(t, ref), k).toBe(true);
      worst = Math.max(worst, sameData(t, ref) ? 0 : Infinity);
    }
    console.log(`gpt.transformer.* of clipcap_mlp_tiny vs gpt2_tiny: worst difference ${worst}`);
  });

  it('refuses an untied lm_head, and names missing / unexpected / wrongly shaped keys', () => {
    const sd = new Map(gpt2Tiny);
    sd.set('lm_head.weight', zeros(50257, 32));
    expect(thrown(() => gpt2Weights(sd, { n_head: 4 }, 'x.safetensors'))).toMatch(
      /^x\.safetensors: lm_head\.weight differs from transformer\.wte\.weight/,
    );
    const bad = new Map(gpt2Tiny);
    bad.delete('transformer.h.1.ln_2.bias');
    bad.set('transformer.h.0.attn.extra', zeros(3));
    bad.set('transformer.ln_f.weight', zeros(31));
    expect(thrown(() => gpt2Weights(bad, { n_head: 4 }, 'bad'))).toBe(
      'bad: missing h.1.ln_2.bias; wrong shape: ln_f.weight is [31], expected [32]; unexpected h.0.attn.extra; expected a GPT-2 with n_embd 32, 2 layers, wte [50257, 32]',
    );
    expect(thrown(() => gpt2Weights(clipTiny))).toMatch(/no GPT-2 token embedding/);
  });

  it('needs a config for non-standard widths, checks the config against the shapes', () => {
    expect(thrown(() => gpt2Weights(gpt2Tiny))).toMatch(
      /GPT-2 width 32 is not a standard size .* give the model's config.json/,
    );
    expect(thrown(() => gpt2Weights(gpt2Tiny, { n_head: 4, n_embd: 64 }))).toMatch(
      /config says n_embd = 64 but the weights have 32/,
    );
    expect(thrown(() => gpt2Weights(gpt2Tiny, { n_head: 4, n_layer: 3 }))).toMatch(
      /n_layer = 3 but the weights have 2/,
    );
    expect(thrown(() => gpt2Weights(gpt2Tiny, { n_head: 5 }))).toMatch(/not divisible by n_head 5/);
  });

  it('infers n_head 12 for width 768 and defaults eps 1e-5 / pdrop 0.1', () => {
    const e = 768;
    const sd: StateDict = new Map([
      ['wte.weight', zeros(10, e)],
      ['wpe.weight', zeros(4, e)],
      ['h.0.ln_1.weight', zeros(e)],
      ['h.0.ln_1.bias', zeros(e)],
      ['h.0.attn.c_attn.weight', zeros(e, 3 * e)],
      ['h.0.attn.c_attn.bias', zeros(3 * e)],
      ['h.0.attn.c_proj.weight', zeros(e, e)],
      ['h.0.attn.c_proj.bias', zeros(e)],
      ['h.0.ln_2.weight', zeros(e)],
      ['h.0.ln_2.bias', zeros(e)],
      ['h.0.mlp.c_fc.weight', zeros(e, 4 * e)],
      ['h.0.mlp.c_fc.bias', zeros(4 * e)],
      ['h.0.mlp.c_proj.weight', zeros(4 * e, e)],
      ['h.0.mlp.c_proj.bias', zeros(e)],
      ['ln_f.weight', zeros(e)],
      ['ln_f.bias', zeros(e)],
    ]);
    const { config } = gpt2Weights(sd);
    expect(config).toMatchObject({
      n_head: 12,
      n_layer: 1,
      vocab_size: 10,
      n_positions: 4,
      layer_norm_epsilon: 1e-5,
    });
    expect([config.resid_pdrop, config.embd_pdrop, config.attn_pdrop]).toEqual([0.1, 0.1, 0.1]);
  });
});

describe('clipWeights', () => {
  it('clip_tiny + config.json: both towers, HF names, position_ids / logit_scale dropped', () => {
    const r = clipWeights(clipTiny, json('clip_tiny/config.json'));
    expect(r.vision?.config).toEqual({
      hidden_size: 32,
      intermediate_size: 64,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      image_size: 224,
      patch_size: 32,
      num_channels: 3,
      layer_norm_eps: 1e-5,
      hidden_act: 'quick_gelu',
      projection_dim: 24,
    });
    expect(r.text?.config).toEqual({
      vocab_size: 49408,
      hidden_size: 16,
      intermediate_size: 32,
      num_hidden_layers: 2,
      num_attention_heads: 2,
      max_position_embeddings: 77,
      layer_norm_eps: 1e-5,
      hidden_act: 'quick_gelu',
      eos_token_id: 49407,
      projection_dim: 24,
    });
    expect(r.vision?.weights.size).toBe(2 * 16 + 8);
    expect(r.text?.weights.size).toBe(2 * 16 + 5);
    expect(r.vision?.weights.get('vision_model.pre_layrnorm.weight')).toBe(
      clipTiny.get('vision_model.pre_layrnorm.weight'),
    );
  });

  it('vision-only checkpoints; heads need a config unless width / 64 is whole', () => {
    const vision: StateDict = new Map(
      [...clipTiny].filter(([k]) => k.startsWith('vision_model.') || k === 'visual_projection.weight'),
    );
    vision.set('vision_model.embeddings.position_ids', {
      dtype: 'i64',
      shape: [1, 50],
      data: new Int32Array(50),
    });
    const r = clipWeights(vision, json('clip_tiny/config.json'));
    expect(r.text).toBeUndefined();
    expect(r.vision?.config.num_attention_heads).toBe(4);
    expect(thrown(() => clipWeights(vision))).toMatch(/cannot infer the number of heads of width 32/);
    const noProj = new Map(vision);
    noProj.delete('visual_projection.weight');
    expect(thrown(() => clipWeights(noProj))).toMatch(/no visual_projection\.weight/);
  });

  it('names missing, unexpected and mis-shaped keys', () => {
    const sd = new Map(clipTiny);
    sd.delete('vision_model.encoder.layers.1.mlp.fc2.bias');
    sd.set('vision_model.encoder.layers.0.self_attn.q_proj.weight', zeros(32, 31));
    expect(thrown(() => clipWeights(sd, json('clip_tiny/config.json'), 'clip'))).toBe(
      'clip: missing vision_model.encoder.layers.1.mlp.fc2.bias; wrong shape: vision_model.encoder.layers.0.self_attn.q_proj.weight is [32, 31], expected [32, 32]; expected a CLIP vision tower of width 32',
    );
    const extra = new Map(clipTiny);
    extra.set('model.foo', zeros(1));
    expect(thrown(() => clipWeights(extra, json('clip_tiny/config.json')))).toMatch(/unexpected model\.foo/);
    const cfg = json('clip_tiny/config.json');
    expect(
      thrown(() =>
        clipWeights(clipTiny, {
          ...cfg,
          vision_config: { ...(cfg.vision_config as object), patch_size: 16 },
        }),
      ),
    ).toMatch(/config says patch_size = 16 but the weights have 32/);
  });
});

describe('clipcapCheckpoint', () => {
  it('MLP: mapper config from shapes, GPT-2 canonical, config when given', () => {
    const ck = clipcapCheckpoint(mlpTiny);
    expect(ck.mapper).toEqual({ kind: 'mlp', prefix_size: 24, prefix_length: 10, sizes: [24, 160, 320] });
    expect(ck.width).toBe(32);
    expect([...ck.mapperWeights.keys()]).toEqual([
      'clip_project.model.0.weight',
      'clip_project.model.0.bias',
      'clip_project.model.2.weight',
      'clip_project.model.2.bias',
    ]);
    expect(ck.gpt2?.size).toBe(28);
    expect(ck.gpt2Config).toBeUndefined(); // width 32: heads unknown without a config
    const withCfg = clipcapCheckpoint(mlpTiny, { gpt2Config: json('gpt2_tiny/config.json') });
    expect(withCfg.gpt2Config?.n_head).toBe(4);
  });

  it('Transformer: prefix_length, clip_length, num_layers, prefix_size; 8 heads', async () => {
    const sd = await loadTorchCheckpoint(path.join(FIX, 'clipcap_transformer_tiny.pt'));
    const ck = clipcapCheckpoint(sd);
    expect(ck.mapper).toEqual({
      kind: 'transformer',
      prefix_size: 24,
      prefix_length: 10,
      clip_length: 10,
      num_layers: 2,
      num_heads: 8,
    });
    expect(ck.mapperWeights.size).toBe(2 + 1 + 2 * 12);
    const broken = new Map(sd);
    broken.delete('clip_project.transformer.layers.1.attn.project.bias');
    broken.set('clip_project.transformer.layers.0.attn.to_queries.bias', zeros(32));
    expect(thrown(() => clipcapCheckpoint(broken, { what: 't.pt' }))).toBe(
      't.pt (clip_project.*): missing clip_project.transformer.layers.1.attn.project.bias; unexpected clip_project.transformer.layers.0.attn.to_queries.bias; expected a transformer mapper for GPT-2 width 32',
    );
  });

  it("single-Linear MLP (predict.py, K > 10) and mapper-only checkpoints (GPT-2 small's width)", () => {
    const single: StateDict = new Map([
      ['clip_project.model.0.weight', zeros(20 * 32, 24)],
      ['clip_project.model.0.bias', zeros(20 * 32)],
    ]);
    const ck = clipcapCheckpoint(single, { gpt2Config: json('gpt2_tiny/config.json') });
    expect(ck.mapper).toEqual({ kind: 'mlp', prefix_size: 24, prefix_length: 20, sizes: [24, 640] });
    expect(ck.gpt2).toBeUndefined();
    expect(ck.gpt2Config?.n_embd).toBe(32);
    const small: StateDict = new Map([
      ['clip_project.model.0.weight', zeros(10 * 768, 4)],
      ['clip_project.model.0.bias', zeros(10 * 768)],
    ]);
    expect(clipcapCheckpoint(small).mapper).toMatchObject({ prefix_length: 10, sizes: [4, 7680] });
    expect(thrown(() => clipcapCheckpoint(gpt2Tiny))).toMatch(/no clip_project\.\* weights/);
    const stray = new Map(mlpTiny);
    stray.set('optimizer.step', zeros(1));
    expect(thrown(() => clipcapCheckpoint(stray))).toMatch(/unexpected optimizer\.step/);
  });
});

describe('clipcap convert', () => {
  it('writes config.json + model.safetensors that load back to the same weights (MLP, --gpt2 DIR)', async () => {
    const out = path.join(dir, 'mlp');
    const lines: string[] = [];
    const r = await runConvert(
      path.join(FIX, 'clipcap_mlp_tiny.pt'),
      out,
      { gpt2: path.join(FIX, 'gpt2_tiny') },
      { stdout: (s) => lines.push(s), stderr: () => undefined },
    );
    expect(lines.join('')).toMatch(
      /^wrote .*mlp: MLP mapper 24 -> 160 -> 320, prefix_length 10, prefix_size 24; GPT-2 2 layers x 32 \(4 heads\); 32 tensors\n$/,
    );
    expect((await fs.readdir(out)).sort()).toEqual(['config.json', 'model.safetensors']);
    const back = await loadClipcapDir(out);
    expect(back.config).toEqual(r.config);
    expect(back.source).toBe('clipcap_mlp_tiny.pt');
    let worst = 0;
    for (const [k, t] of back.mapperWeights) if (!sameData(t, mlpTiny.get(k) as HostTensor)) worst = Infinity;
    for (const [k, t] of back.gpt2 as StateDict) {
      if (!sameData(t, mlpTiny.get(`gpt.transformer.${k}`) as HostTensor)) worst = Infinity;
    }
    console.log(`convert round trip: worst difference ${worst} over ${r.tensors} tensors`);
    expect(worst).toBe(0);
    // No temp directories left beside it.
    expect((await fs.readdir(dir)).filter((n) => n.endsWith('.tmp'))).toEqual([]);
  });

  it('fails cleanly: no config for a non-standard width, an existing output; --overwrite replaces', async () => {
    const out = path.join(dir, 'nocfg');
    await expect(convertClipcap(path.join(FIX, 'clipcap_mlp_tiny.pt'), out)).rejects.toThrow(
      /width 32 is not a standard size.*give --gpt2 DIR/,
    );
    await expect(fs.stat(out)).rejects.toThrow(/ENOENT/);
    expect((await fs.readdir(dir)).filter((n) => n.startsWith('.nocfg'))).toEqual([]);
    await expect(
      convertClipcap(path.join(FIX, 'clipcap_mlp_tiny.pt'), path.join(dir, 'mlp'), {
        gpt2: path.join(FIX, 'gpt2_tiny'),
      }),
    ).rejects.toThrow(/mlp already exists/);
    await expect(convertClipcap(path.join(FIX, 'hostile_reduce.pt'), path.join(dir, 'evil'))).rejects.toThrow(
      /^refusing to load posix\.system/,
    );
    await expect(fs.stat(path.join(dir, 'evil'))).rejects.toThrow(/ENOENT/);
  });

  it('through the commander command: transformer mapper, JSON output, --overwrite, --normalize-prefix', async () => {
    const out = path.join(dir, 'tr');
    await fs.mkdir(out);
    await fs.writeFile(path.join(out, 'stale.txt'), 'old');
    const program = new Command().exitOverride();
    register(program);
    const printedChunks: string[] = [];
    const write = vi.spyOn(process.stdout, 'write').mockImplementation((chunk) => {
      printedChunks.push(String(chunk));
      return true;
    });
    try {
      await program.parseAsync(
        [
          'convert',
          path.join(FIX, 'clipcap_transformer_tiny.pt'),
          out,
          '--gpt2',
          path.join(FIX, 'gpt2_tiny', 'config.json'),
          '--overwrite',
          '--normalize-prefix',
          '--format',
          'json',
        ],
        { from: 'user' },
      );
    } finally {
      write.mockRestore();
    }
    const printed = JSON.parse(printedChunks.join('')) as Record<string, unknown>;
    expect(printed).toMatchObject({
      out,
      mapper: { kind: 'transformer', num_layers: 2, num_heads: 8, clip_length: 10 },
      normalize_prefix: true,
      gpt2_weights: true,
      tensors: 27 + 28,
    });
    expect((await fs.readdir(out)).sort()).toEqual(['config.json', 'model.safetensors']);
    const back = await loadClipcapDir(out);
    expect(back.config.normalize_prefix).toBe(true);
    expect(back.config.gpt2.n_head).toBe(4);
  });

  it('loadClipcapDir refuses a config that disagrees with the weights', async () => {
    const out = path.join(dir, 'mlp');
    const cfgPath = path.join(out, 'config.json');
    const cfg = JSON.parse(await fs.readFile(cfgPath, 'utf8')) as { mapper: { prefix_length: number } };
    cfg.mapper.prefix_length = 5;
    await fs.writeFile(cfgPath, JSON.stringify(cfg));
    await expect(loadClipcapDir(out)).rejects.toThrow(/mapper\.prefix_length is 5 but the weights say 10/);
    await expect(loadClipcapDir(path.join(FIX, 'gpt2_tiny'))).rejects.toThrow(
      /not a clipcap checkpoint config/,
    );
    await expect(loadClipcapDir(dir)).rejects.toThrow(/is not a clipcap checkpoint directory/);
  });
});
