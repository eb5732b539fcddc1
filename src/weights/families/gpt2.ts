/**
 * GPT-2 key map. Canonical names are Hugging Face's without the `transformer.` prefix:
 *   wte.weight (V, E), wpe.weight (P, E),
 *   h.N.ln_1.{weight,bias} (E), h.N.attn.c_attn.weight (E, 3E) + bias (3E), h.N.attn.c_proj.weight (E, E) + bias,
 *   h.N.ln_2.*, h.N.mlp.c_fc.weight (E, I) + bias (I), h.N.mlp.c_proj.weight (I, E) + bias (E), ln_f.*.
 * The c_attn / c_proj / c_fc weights are Conv1D, stored (in, out); they are kept exactly as in the file
 * (no transpose: the model multiplies x @ W).
 *
 * Accepted sources: the hub's GPT2Model names (no prefix), GPT2LMHeadModel (`transformer.` + lm_head),
 * ClipCap checkpoints (`gpt.transformer.` + gpt.lm_head). Skipped: the causal-mask buffers h.N.attn.bias and
 * h.N.attn.masked_bias, and lm_head.weight when it equals wte.weight (tied, as in every GPT-2).
 */
import { UserError } from '../../util/errors.js';
import type { Gpt2Config } from '../../config/models.js';
import type { StateDict } from '../host.js';
import {
  agree,
  checkKeys,
  countLayers,
  fmtShape,
  intField,
  numField,
  sameTensor,
  shapeOf,
} from './common.js';
import type { ConfigSource, KeySpec } from './common.js';

export interface Gpt2Weights {
  config: Gpt2Config;
  /** Canonical names, in spec order. */
  weights: StateDict;
}

/** Heads of the published GPT-2 sizes (n_embd -> n_head): gpt2, -medium, -large, -xl. */
export const GPT2_STANDARD_HEADS: Readonly<Record<number, number>> = {
  768: 12,
  1024: 16,
  1280: 20,
  1600: 25,
};

/** Every canonical name and shape of a GPT-2 of this config. */
export function gpt2KeySpec(c: Gpt2Config): KeySpec {
  const e = c.n_embd;
  const inner = c.n_inner ?? 4 * e;
  const spec: KeySpec = new Map();
  spec.set('wte.weight', [c.vocab_size, e]);
  spec.set('wpe.weight', [c.n_positions, e]);
  for (let i = 0; i < c.n_layer; i++) {
    const p = `h.${i}.`;
    spec.set(`${p}ln_1.weight`, [e]);
    spec.set(`${p}ln_1.bias`, [e]);
    spec.set(`${p}attn.c_attn.weight`, [e, 3 * e]);
    spec.set(`${p}attn.c_attn.bias`, [3 * e]);
    spec.set(`${p}attn.c_proj.weight`, [e, e]);
    spec.set(`${p}attn.c_proj.bias`, [e]);
    spec.set(`${p}ln_2.weight`, [e]);
    spec.set(`${p}ln_2.bias`, [e]);
    spec.set(`${p}mlp.c_fc.weight`, [e, inner]);
    spec.set(`${p}mlp.c_fc.bias`, [inner]);
    spec.set(`${p}mlp.c_proj.weight`, [inner, e]);
    spec.set(`${p}mlp.c_proj.bias`, [e]);
  }
  spec.set('ln_f.weight', [e]);
  spec.set('ln_f.bias', [e]);
  return spec;
}

const PREFIXES = ['gpt.transformer.', 'transformer.', ''] as const;
const BUFFER = /^h\.\d+\.attn\.(bias|masked_bias)$/;

/** The causal-mask buffers h.N.attn.bias / h.N.attn.masked_bias (canonical names): not weights. */
export function isGpt2Buffer(name: string): boolean {
  return BUFFER.test(name);
}

/**
 * Strip the prefix, drop buffers and a tied lm_head. Keys outside the GPT-2 (e.g. a ClipCap checkpoint's
 * clip_project.*) are ignored when the prefix is `gpt.transformer.`, and unexpected otherwise.
 */
export function canonicalGpt2(sd: StateDict, what: string): StateDict {
  const prefix = PREFIXES.find((p) => sd.has(`${p}wte.weight`));
  if (prefix === undefined) {
    throw new UserError(
      `${what}: no GPT-2 token embedding (looked for wte.weight, transformer.wte.weight, gpt.transformer.wte.weight)`,
    );
  }
  const lmHeadKey = prefix === 'gpt.transformer.' ? 'gpt.lm_head.weight' : 'lm_head.weight';
  const out: StateDict = new Map();
  for (const [k, t] of sd) {
    if (k === lmHeadKey) continue;
    if (prefix === 'gpt.transformer.' && !k.startsWith('gpt.')) continue;
    if (!k.startsWith(prefix)) {
      out.set(k, t); // reported as unexpected by the key check
      continue;
    }
    const name = k.slice(prefix.length);
    if (!isGpt2Buffer(name)) out.set(name, t);
  }
  const lmHead = sd.get(lmHeadKey);
  if (lmHead && !sameTensor(lmHead, sd.get(`${prefix}wte.weight`) as typeof lmHead)) {
    throw new UserError(
      `${what}: ${lmHeadKey} differs from ${prefix}wte.weight (an untied output layer), which clipcap's GPT-2 does not support`,
    );
  }
  return out;
}

/**
 * GPT-2 config from config.json fields (or a partial Gpt2Config: same names) checked against the shapes
 * of canonical weights. Sizes come from the shapes; n_head from the config or the standard sizes.
 */
export function gpt2ConfigFor(
  weights: StateDict,
  config: ConfigSource | undefined,
  what: string,
): Gpt2Config {
  const wte = shapeOf(weights, 'wte.weight', what, 2);
  const wpe = shapeOf(weights, 'wpe.weight', what, 2);
  const e = agree(intField(config, 'n_embd', what), wte[1], 'n_embd', what);
  const n_layer = agree(
    intField(config, 'n_layer', what),
    countLayers(weights.keys(), 'h.', what),
    'n_layer',
    what,
  );
  const fc = n_layer > 0 ? shapeOf(weights, 'h.0.mlp.c_fc.weight', what, 2) : [e, 4 * e];
  const inner = fc[1];
  const cfgInner = intField(config, 'n_inner', what);
  if (cfgInner !== undefined) agree(cfgInner, inner, 'n_inner', what);
  let n_head = intField(config, 'n_head', what);
  if (n_head === undefined) {
    n_head = GPT2_STANDARD_HEADS[e];
    if (n_head === undefined) {
      throw new UserError(
        `${what}: GPT-2 width ${e} is not a standard size (768/1024/1280/1600), so the number of heads is unknown; give the model's config.json (e.g. --gpt2 DIR)`,
      );
    }
  }
  if (n_head === 0 || e % n_head !== 0)
    throw new UserError(`${what}: n_embd ${e} is not divisible by n_head ${n_head}`);
  const act = config?.activation_function;
  if (act !== undefined && act !== null && typeof act !== 'string') {
    throw new UserError(`${what}: config field "activation_function" must be a string`);
  }
  return {
    vocab_size: agree(intField(config, 'vocab_size', what), wte[0], 'vocab_size', what),
    n_positions: agree(intField(config, 'n_positions', what), wpe[0], 'n_positions', what),
    n_embd: e,
    n_layer,
    n_head,
    layer_norm_epsilon: numField(config, 'layer_norm_epsilon', what) ?? 1e-5,
    resid_pdrop: numField(config, 'resid_pdrop', what) ?? 0.1,
    embd_pdrop: numField(config, 'embd_pdrop', what) ?? 0.1,
    attn_pdrop: numField(config, 'attn_pdrop', what) ?? 0.1,
    n_inner: inner === 4 * e ? null : inner,
    activation_function: (act as string | undefined) ?? 'gelu_new',
  };
}

/**
 * GPT-2 weights from any of the accepted layouts -> canonical names + a config, every key and shape
 * checked. `config`: a parsed config.json or a partial Gpt2Config; without it, n_head must follow from a
 * standard width. `what` names the source in errors.
 */
export function gpt2Weights(
  sd: StateDict,
  config?: Partial<Gpt2Config> | ConfigSource,
  what = 'GPT-2 weights',
): Gpt2Weights {
  const canonical = canonicalGpt2(sd, what);
  const cfg = gpt2ConfigFor(canonical, config as ConfigSource | undefined, what);
  const weights = checkKeys(
    canonical,
    gpt2KeySpec(cfg),
    what,
    `expected a GPT-2 with n_embd ${cfg.n_embd}, ${cfg.n_layer} layers, wte ${fmtShape([cfg.vocab_size, cfg.n_embd])}`,
  );
  return { config: cfg, weights };
}
