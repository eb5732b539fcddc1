/**
 * The backend registry (src/engine/registry.ts) is the one list of backends: the CLI's --backend choices and
 * help, the library's `backend` option, and the bench report read it. A backend registered here (a test-only one
 * that is the reference backend under another name) is selectable by name everywhere without touching
 * cli/, bench/ or pipeline/.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { backendOption, BACKEND_HELP } from '../../src/cli/options.js';
import { formatTable } from '../../src/bench/report.js';
import { ReferenceBackend } from '../../src/engine/reference.js';
import {
  availableBackends,
  backendEntry,
  backendNames,
  getBackend,
  oracleBackend,
  registerBackend,
  selectBackend,
  type BackendEntry,
} from '../../src/engine/registry.js';
import { ClipCap } from '../../src/pipeline/caption.js';
import type { CaptionSuccess } from '../../src/pipeline/types.js';
import { fixture } from '../cli/harness.js';

/** The reference backend under another name (a stand-in for a new backend). */
class RenamedReference extends ReferenceBackend {
  // ReferenceBackend types its name as the literal 'reference'; at run time this one is 'renamed'.
  override readonly name = 'renamed' as 'reference';
}

const renamed = new RenamedReference();
const entry: BackendEntry = {
  name: 'renamed',
  summary: 'test-only: the reference kernels under another name',
  capabilities: { portable: true, oracle: false, threads: false },
  load: () => ({ backend: renamed }),
};
const broken: BackendEntry = {
  name: 'broken',
  summary: 'test-only: never loads',
  capabilities: { portable: true, oracle: false, threads: false },
  load: () => ({ error: 'no such device (test)' }),
};

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
  delete process.env.CLIPCAP_BACKEND;
});

describe('backend registry', () => {
  it('lists the built-in backends in order of preference, the reference one as the portable oracle', () => {
    expect(backendNames()).toEqual(['native', 'reference']);
    expect(backendEntry('reference').capabilities).toEqual({ portable: true, oracle: true, threads: false });
    expect(backendEntry('native').capabilities).toEqual({ portable: false, oracle: false, threads: true });
    expect(oracleBackend().name).toBe('reference');
    expect(getBackend('reference').name).toBe('reference');
    expect(availableBackends()[0].name).toBe('reference');
  });

  it('refuses an unknown name, listing the registered ones', () => {
    expect(() => getBackend('cuda')).toThrow('unknown backend "cuda": use native or reference');
    process.env.CLIPCAP_BACKEND = 'webgpu';
    expect(() => getBackend()).toThrow('unknown backend "webgpu": use native or reference');
  });

  it('makes a registered backend selectable by name, in CLI choices and help, and forgets it again', () => {
    const unregister = registerBackend(entry);
    cleanups.push(unregister);
    expect(backendNames()).toEqual(['native', 'reference', 'renamed']);
    expect(getBackend('renamed')).toBe(renamed);
    process.env.CLIPCAP_BACKEND = 'renamed';
    expect(getBackend()).toBe(renamed);
    expect(availableBackends()).toContain(renamed);
    // The option is built from the registry when a command registers it.
    expect(backendOption().argChoices).toEqual(['native', 'reference', 'renamed']);
    expect(() => registerBackend(entry)).toThrow('a backend "renamed" is already registered');
    expect(() => registerBackend({ ...entry, name: 'Bad Name' })).toThrow('lower-case words');
    unregister();
    expect(backendNames()).toEqual(['native', 'reference']);
    expect(() => getBackend('renamed')).toThrow('unknown backend "renamed"');
  });

  it('the CLI help names every built-in backend with its summary', () => {
    expect(BACKEND_HELP).toContain('native (the C++ addon; threads: CLIPCAP_THREADS, else every core)');
    expect(BACKEND_HELP).toContain('reference (pure TypeScript)');
    expect(backendOption().argChoices).toEqual(backendNames());
  });

  it('says why a requested backend cannot load, and skips it when none is requested', () => {
    cleanups.push(registerBackend(broken));
    expect(() => getBackend('broken')).toThrow(
      'the broken backend was requested but cannot load: no such device (test)',
    );
    // Not asked for: the first that loads is used (broken comes last, so it is never reached).
    expect(selectBackend().entry.name).not.toBe('broken');
  });

  it('a registered backend captions through the library by name, with the reference tokens', async () => {
    cleanups.push(registerBackend(entry));
    const load = (backend: string) =>
      ClipCap.load({ clipcap: fixture('clipcap_mlp_tiny.pt'), gpt2: fixture('gpt2_tiny'), backend });
    const emb = { embedding: Float32Array.from({ length: 24 }, (_, i) => Math.sin(i + 1)) };
    const [ref, ours] = [await load('reference'), await load('renamed')];
    try {
      expect(ours.backend).toBe(renamed); // it runs on the registered backend
      const [a] = (await ref.caption([emb], { method: 'beam' })) as CaptionSuccess[];
      const [b] = (await ours.caption([emb], { method: 'beam' })) as CaptionSuccess[];
      expect(b.tokens).toEqual(a.tokens);
      expect(b.caption).toBe(a.caption);
    } finally {
      ref.dispose();
      ours.dispose();
    }
  });

  it('the bench table puts a registered backend in its own column after the built-in ones', () => {
    cleanups.push(registerBackend(entry));
    const table = formatTable({
      bench: 'gemm',
      machine: { cpu: 'x', cores: 1, threads: 1, node: 'v20', avx2: false },
      results: [
        { case: '64x64x64', backend: 'renamed', metric: 'gflops', value: 2, runs: 1 },
        { case: '64x64x64', backend: 'reference', metric: 'gflops', value: 1, runs: 1 },
      ],
    });
    const header = table.split('\n')[1];
    expect(header).toMatch(/reference \(gflops\)\s+renamed \(gflops\)\s+renamed\/reference/);
    expect(table).toContain('2.00x');
  });
});
