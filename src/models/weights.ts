/**
 * Turning a state dict (canonical names) into Parameters: every model takes the names and shapes it expects
 * from its family's key spec in src/weights/families/ (one table per family), and construction fails with one message naming each missing key, each unexpected key and each wrong shape,
 * before anything is uploaded.
 */
import type { Backend } from '../engine/backend.js';
import type { HostTensor, StateDict } from '../weights/host.js';
import { keyProblems, type KeySpec } from '../weights/families/common.js';
import { Parameter } from '../nn/parameter.js';
import { UserError } from '../util/errors.js';

/**
 * Check `weights` against `spec` (the weights layer's key spec of the family) with the key maps' own check,
 * also requiring f32 data, which the models upload as it is. Keys matching `ignore` (buffers such as GPT-2's
 * attn.bias / masked_bias, a tied lm_head, the other tower's keys) may be present or not. `what` names the
 * model and the file for the error message.
 */
export function checkWeights(
  weights: StateDict,
  spec: KeySpec,
  what: string,
  ignore: (name: string) => boolean = () => false,
): void {
  const problems = keyProblems(weights, spec, { ignore, requireF32: true });
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
export async function paramsToStateDict(params: Iterable<Parameter>, prefix = ''): Promise<StateDict> {
  const out: StateDict = new Map();
  for (const p of params) {
    out.set(prefix + p.name, { dtype: 'f32', shape: [...p.value.shape], data: await p.value.read() });
  }
  return out;
}
