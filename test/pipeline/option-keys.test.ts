/**
 * The library's option objects reject unknown keys at run time, as a TypeScript caller's compiler would: a
 * JavaScript caller's misspelt or misplaced option is an error naming it (and the near miss), never ignored.
 */
import { describe, expect, it } from 'vitest';
import { ClipCap, evaluateCaptions, extractEmbeddings, hubFile, readReferences } from '../../src/index.js';
import type { ImageEncoder } from '../../src/pipeline/caption.js';
import { checkOptionKeys } from '../../src/util/options.js';
import { fixture } from '../cli/harness.js';

/** Call with options that the types forbid, as JavaScript can. */
const loose = (o: Record<string, unknown>): never => o as never;

async function error(p: Promise<unknown> | (() => unknown)): Promise<Error> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected an error');
}

describe('unknown option keys', () => {
  it('checkOptionKeys names every unknown key, suggests the near one, lists the known ones', () => {
    expect(() => checkOptionKeys({ a: 1, maxToken: 2, zzz: 3 }, ['a', 'maxTokens'], 'f options')).toThrow(
      new TypeError(
        'f options: unknown options "maxToken" (did you mean "maxTokens"?), "zzz"; known: a, maxTokens',
      ),
    );
    expect(() => checkOptionKeys({ a: 1 }, ['a'], 'f options')).not.toThrow();
    expect(() => checkOptionKeys(undefined, ['a'], 'f options')).not.toThrow();
    expect(() => checkOptionKeys([1], ['a'], 'f options')).toThrow(
      /f options must be an object, got an array/,
    );
  });

  it('ClipCap.load / fromPretrained refuse them before loading anything', async () => {
    const e = await error(ClipCap.load(loose({ clipcap: 'nope.pt', maxTokens: 3 })));
    expect(e).toBeInstanceOf(TypeError);
    expect(e.message).toMatch(
      /^ClipCap\.load options: unknown option "maxTokens"; known: model, clipcap, clip/,
    );
    const p = await error(ClipCap.fromPretrained('coco', loose({ ofline: true })));
    expect(p.message).toMatch(
      /^ClipCap\.fromPretrained options: unknown option "ofline" \(did you mean "offline"\?\)/,
    );
    // model / clipcap are fromPretrained's name argument, not options.
    expect((await error(ClipCap.fromPretrained('coco', loose({ model: 'x' })))).message).toMatch(
      /unknown option "model"/,
    );
  });

  it('caption / captionStream options', async () => {
    const model = await ClipCap.load({
      clipcap: fixture('clipcap_mlp_tiny.pt'),
      clip: fixture('clip_tiny'),
      gpt2: fixture('gpt2_tiny'),
      backend: 'reference',
    });
    try {
      const emb = { embedding: new Float32Array(model.embeddingSize) };
      const e = await error(model.caption([emb], loose({ method: 'greedy', maxToken: 3 })));
      expect(e).toBeInstanceOf(TypeError);
      expect(e.message).toMatch(/^caption options: unknown option "maxToken" \(did you mean "maxTokens"\?\)/);
      const s = await error(async () => {
        for await (const r of model.captionStream([emb], loose({ beam: 3 }))) void r;
      });
      expect(s.message).toMatch(/^captionStream options: unknown option "beam"/);
      // The right key works.
      const [ok] = await model.caption([emb], { method: 'greedy', maxTokens: 3, stop: 'none' });
      expect(ok.tokens?.length).toBe(3);
    } finally {
      model.dispose();
    }
  });

  it('extractEmbeddings, evaluateCaptions, readReferences, hubFile', async () => {
    const encoder = {} as ImageEncoder;
    const x = await error(extractEmbeddings(encoder, [], loose({ batch: 2 })).next());
    expect(x.message).toMatch(/^extractEmbeddings options: unknown option "batch"/);
    const ev = await error(evaluateCaptions({ 1: ['a cat'] }, { 1: 'a cat' }, loose({ tokenise: 'none' })));
    expect(ev.message).toMatch(
      /^evaluateCaptions options: unknown option "tokenise" \(did you mean "tokenize"\?\)/,
    );
    const rr = await error(
      readReferences(fixture('cocoeval', 'a_small.references.json'), loose({ splt: 'test' })),
    );
    expect(rr.message).toMatch(/^readReferences options: unknown option "splt" \(did you mean "split"\?\)/);
    const h = await error(hubFile(loose({ repo: 'a/b', file: 'c', ofline: true })));
    expect(h.message).toMatch(/^hubFile options: unknown option "ofline" \(did you mean "offline"\?\)/);
  });
});
