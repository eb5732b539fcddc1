/**
 * Turning a state dict (canonical names) into Parameters: every model lists the names and shapes it expects,
 * and construction fails with one message naming each missing key, each unexpected key and each wrong shape,
 * before anything is uploaded.
 */
import type { Backend } from '../engine/backend.js';
import type { HostTensor, StateDict } from '../weights/host.js';
import { Parameter } from '../nn/parameter.js';
import { UserError } from '../util/errors.js';

export type WeightSpec = Map<string, readonly number[]>;

function fmtShape(s: readonly number[]): string {
  return `[${s.join(', ')}]`;
}

function listSome(names: string[]): string {
  const shown = names.slice(0, 8).join(', ');
  return names.length > 8 ? `${shown} and ${names.length - 8} more` : shown;
}

/**
 * Check `weights` against `spec`. Keys matching `ignore` (buffers such as GPT-2's attn.bias / masked_bias,
 * a tied lm_head) may be present or not. `what` names the model and the file for the error message.
 */
export function checkWeights(
  weights: StateDict,
  spec: WeightSpec,
  what: string,
  ignore: (name: string) => boolean = () => false,
): void {
  const missing: string[] = [];
  const badShape: string[] = [];
  const badType: string[] = [];
  for (const [name, shape] of spec) {
    const t = weights.get(name);
    if (!t) missing.push(name);
    else if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i]))
      badShape.push(`${name} is ${fmtShape(t.shape)}, expected ${fmtShape(shape)}`);
    else if (!(t.data instanceof Float32Array)) badType.push(`${name} (${t.dtype})`);
  }
  const unexpected = [...weights.keys()].filter((k) => !spec.has(k) && !ignore(k));
  const problems: string[] = [];
  if (missing.length) problems.push(`missing ${listSome(missing)}`);
  if (badShape.length) problems.push(`wrong shape: ${listSome(badShape)}`);
  if (badType.length) problems.push(`not floating point: ${listSome(badType)}`);
  if (unexpected.length) problems.push(`unexpected ${listSome(unexpected)}`);
  if (problems.length)
    throw new UserError(
      `${what}: the weights do not match the model config (${problems.join('; ')}); check that the file and config belong together`,
    );
}

/** Upload one checked weight as a Parameter named `name`. */
export function uploadParam(backend: Backend, weights: StateDict, name: string, paramName = name): Parameter {
  const t = weights.get(name) as HostTensor;
  return new Parameter(paramName, backend.upload(t.data as Float32Array, t.shape));
}

/** Download parameters as host tensors (for saving checkpoints). */
export function paramsToStateDict(params: Iterable<Parameter>, prefix = ''): StateDict {
  const out: StateDict = new Map();
  for (const p of params) {
    out.set(prefix + p.name, { dtype: 'f32', shape: [...p.value.shape], data: p.value.toArray() });
  }
  return out;
}
