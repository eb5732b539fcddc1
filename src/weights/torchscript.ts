/**
 * TorchScript archives (`torch.jit.save`, `torch.jit.trace(...).save`), read for their weights only: OpenAI's
 * CLIP files (`clip.load("ViT-B/32")` caches ~/.cache/clip/ViT-B-32.pt) are such archives.
 *
 * The archive is a zip: `<name>/data.pkl` pickles the module tree, `<name>/data/<key>` holds the storages,
 * `<name>/code/` the TorchScript source and `<name>/constants.pkl` its constants. Only data.pkl and the storages
 * it references are read; code and constants are never looked at, so nothing from the file runs.
 *
 * data.pkl builds each module as `GLOBAL __torch__.<qualified class>`, `EMPTY_TUPLE`, `NEWOBJ`, then a dict of
 * its attributes and `BUILD` (torch/csrc/jit/serialization/pickler.cpp, pushObject). For this format only, the
 * restricted unpickler (pickle.ts with torch.ts's allowlist) additionally accepts:
 * - any `__torch__.*` class, made into an inert ScriptObject (a class name and an attribute dict; no method,
 *   no `__setstate__` runs, and BUILD accepts only a plain dict of attributes, once);
 * - `torch.jit._pickle.build_{int,double,bool,tensor}list` and `restore_type_tag`, which only wrap a list or
 *   tag a container with its TorchScript type: they return their argument.
 * Every other name is still refused ("refusing to load posix.system from <file>").
 *
 * Parameters and buffers are the tensor attributes of the modules; they are collected under dotted paths
 * (`visual.transformer.resblocks.0.attn.in_proj_weight`), the names `state_dict()` gives them. Scripted archives
 * also keep scalar attributes (`num_heads`, `eps`); traced ones (OpenAI's) keep tensors only.
 */
import { promises as fs } from 'node:fs';
import { UserError } from '../util/errors.js';
import { safeText } from '../util/text.js';
import type { HostTensor, StateDict } from './host.js';
import { PyDict, PyGlobal } from './pickle.js';
import { loadZip, TensorRef } from './torch.js';
import type { PolicyExtension } from './torch.js';

/** A `__torch__.*` object from data.pkl: inert, its attributes as pickled. */
class ScriptObject {
  state: PyDict | undefined;
  constructor(readonly className: string) {}
}

/** A TorchScript module's weights and attributes by dotted path. */
export interface TorchScriptModule {
  /** Class of the root module, e.g. `__torch__.multimodal.model.multimodal_transformer.Multimodal`. */
  readonly className: string;
  /** Tensor attributes (parameters and buffers) in archive order; only the selected ones. */
  readonly tensors: StateDict;
  /** Class of each submodule by dotted path (the root is ''). Mangled names keep their `___torch_mangle_N`. */
  readonly classes: ReadonlyMap<string, string>;
  /** Scalar attributes (int, float, bool, str) by dotted path: what scripted archives keep (num_heads, eps). */
  readonly attributes: ReadonlyMap<string, number | boolean | string>;
}

export interface TorchScriptOptions {
  /** Which tensors to read, by dotted path (default all); unselected storages are never read. */
  select?: (name: string) => boolean;
}

/** Deeper module nesting than any real model; bounds the walk of a hostile file. */
const MAX_DEPTH = 100;

/** What data.pkl holds, by dotted path, before the storages are read. */
interface Walked {
  className: string;
  tensors: Map<string, TensorRef>;
  classes: Map<string, string>;
  attributes: Map<string, number | boolean | string>;
}

function extension(file: string): PolicyExtension {
  const passThrough = (what: string) => (args: unknown[]) => {
    if (args.length < 1) throw new UserError(`${file}: ${what} without an argument`);
    return args[0];
  };
  const lists = new Map<string, PyGlobal>();
  for (const name of ['build_intlist', 'build_doublelist', 'build_boollist', 'build_tensorlist']) {
    lists.set(
      name,
      new PyGlobal('torch.jit._pickle', name, (args) => {
        if (args.length !== 1 || !Array.isArray(args[0]))
          throw new UserError(`${file}: torch.jit._pickle.${name} of a non-list`);
        return args[0];
      }),
    );
  }
  lists.set(
    'restore_type_tag',
    new PyGlobal('torch.jit._pickle', 'restore_type_tag', passThrough('restore_type_tag')),
  );
  return {
    resolveGlobal(module, name) {
      if (module === 'torch.jit._pickle') return lists.get(name);
      if ((module === '__torch__' || module.startsWith('__torch__.')) && name !== '') {
        const className = `${module}.${name}`;
        return new PyGlobal(module, name, (args) => {
          if (args.length)
            throw new UserError(`${file}: ${safeText(className, 100)} is constructed with arguments`);
          return new ScriptObject(className);
        });
      }
      return undefined;
    },
    build(obj, state) {
      if (!(obj instanceof ScriptObject)) return false;
      if (obj.state !== undefined)
        throw new UserError(`${file}: ${safeText(obj.className, 100)} is restored twice`);
      if (!(state instanceof PyDict)) {
        throw new UserError(
          `${file}: ${safeText(obj.className, 100)} pickles a custom state (__getstate__), which clipcap does not read; only plain modules with tensor attributes are supported`,
        );
      }
      obj.state = state;
      return true;
    },
  };
}

/** The module tree under dotted paths; a module reached twice (shared) is listed under its first path. */
function walk(root: unknown, file: string): Walked {
  if (!(root instanceof ScriptObject)) {
    throw new UserError(`${file}: data.pkl does not hold a TorchScript module`);
  }
  const out: Walked = {
    className: root.className,
    tensors: new Map(),
    classes: new Map(),
    attributes: new Map(),
  };
  const seen = new Set<ScriptObject>();
  const visit = (obj: ScriptObject, prefix: string, depth: number): void => {
    if (depth > MAX_DEPTH) throw new UserError(`${file}: modules nested too deeply`);
    seen.add(obj);
    out.classes.set(prefix, obj.className);
    for (const [key, value] of obj.state?.entries() ?? []) {
      if (typeof key !== 'string')
        throw new UserError(`${file}: ${safeText(obj.className, 100)} has a non-string attribute`);
      const name = prefix ? `${prefix}.${key}` : key;
      if (value instanceof ScriptObject) {
        if (!seen.has(value)) visit(value, name, depth + 1);
      } else if (value instanceof TensorRef) out.tensors.set(name, value);
      else if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'string') {
        out.attributes.set(name, value);
      }
      // None, tuples, lists, dicts (padding, normalized_shape, ...): not needed.
    }
  };
  visit(root, '', 0);
  return out;
}

/**
 * True when the file ends with a zip end-of-central-directory record: its signature, 22 bytes, then exactly the
 * comment its length field announces. Cutting a file short removes or breaks it, so this tells a truncated
 * download apart from other damage before the zip reader's generic error.
 */
async function hasZipEnd(file: string): Promise<boolean> {
  const fh = await fs.open(file, 'r');
  try {
    const { size } = await fh.stat();
    const n = Math.min(size, 0xffff + 22);
    const tail = Buffer.alloc(n);
    await fh.read(tail, 0, n, size - n);
    for (let at = n - 22; at >= 0; at--) {
      if (tail.readUInt32LE(at) === 0x06054b50 && at + 22 + tail.readUInt16LE(at + 20) === n) return true;
    }
    return false;
  } finally {
    await fh.close();
  }
}

/**
 * Read a TorchScript archive's parameters and buffers (and scalar attributes) without running anything.
 * Tensors are contiguous row-major; f16/bf16 arrive as Float32Array (their `dtype` still says f16).
 */
export async function loadTorchScript(
  file: string,
  options: TorchScriptOptions = {},
): Promise<TorchScriptModule> {
  let head: Buffer;
  try {
    const fh = await fs.open(file, 'r');
    try {
      head = Buffer.alloc(4);
      await fh.read(head, 0, 4, 0);
    } finally {
      await fh.close();
    }
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new UserError(
      `cannot open ${file}: ${code === 'ENOENT' ? 'no such file; check the path' : (code ?? String(e))}`,
      { cause: e },
    );
  }
  if (head.readUInt32LE(0) !== 0x04034b50) {
    throw new UserError(
      `${file}: not a TorchScript archive (not a zip file); for CLIP give OpenAI's .pt as clip.load downloads it, a model directory or a hub repo id`,
    );
  }
  if (!(await hasZipEnd(file))) {
    throw new UserError(
      `${file}: truncated or damaged zip archive (no end-of-central-directory record); download it again`,
    );
  }
  const select = options.select ?? (() => true);
  let walked: Walked | undefined;
  await loadZip(file, {
    extension: extension(file),
    select: (root) => {
      walked = walk(root, file);
      const keep = new Set<TensorRef>();
      for (const [name, ref] of walked.tensors) if (select(name)) keep.add(ref);
      return keep;
    },
  });
  const w = walked as Walked;
  const tensors: StateDict = new Map();
  for (const [name, ref] of w.tensors) {
    if (ref.result) tensors.set(name, ref.result as HostTensor);
  }
  return { className: w.className, tensors, classes: w.classes, attributes: w.attributes };
}
