/**
 * The backend registry: the one place that knows which backends exist. Each entry is a name, what it can do
 * (capabilities) and a loader that returns the backend or one line saying why it cannot load here. The CLI's
 * `--backend` choices and help, `clipcap bench` and `clipcap demo` read this table; nothing else names a backend.
 *
 * Adding a backend (CUDA, WebGPU, ...) touches engine/ (its Backend class and an entry in BUILTIN_BACKENDS) and,
 * for compiled code, native/; the entry's position sets its preference when no backend is asked for.
 *
 * Selection: `--backend` / CLIPCAP_BACKEND pick one explicitly (and fail with its reason when it cannot load);
 * otherwise the first entry that loads is used, with one line on stderr saying why the preferred ones did not.
 */
import type { Backend } from './backend.js';
import { loadNativeBackend, NativeBackend } from './native.js';
import { ReferenceBackend } from './reference.js';

export interface BackendCapabilities {
  /** Plain TypeScript with no Node APIs: it could run in a browser. */
  readonly portable: boolean;
  /** The test oracle: tests and benches compare every other backend with it. */
  readonly oracle: boolean;
  /** Its kernels run on several threads whose number can be set (`setThreads`, CLIPCAP_THREADS). */
  readonly threads: boolean;
}

/** What a benchmark report says about a loaded backend's kernels. */
export interface BackendDetails {
  /** Kernel threads. */
  threads: number;
  /** Whether the kernels use AVX2/FMA (x86). */
  avx2: boolean;
  /** Further machine.* entries (e.g. gemm_kernel). */
  extra: Record<string, string>;
}

export type BackendLoad = { backend: Backend } | { error: string };

export interface BackendEntry {
  readonly name: string;
  /** A few words for `--backend` help, e.g. "the C++ addon". */
  readonly summary: string;
  readonly capabilities: BackendCapabilities;
  /** Loads the backend (later calls return the same result), or says in one line why it cannot load here. */
  load(): BackendLoad;
  /** Sets the kernel threads of a backend this entry loaded (capabilities.threads). */
  setThreads?(backend: Backend, threads: number): void;
  /** Details of a backend this entry loaded, for benchmark reports. */
  details?(backend: Backend): BackendDetails;
}

function asNative(b: Backend): NativeBackend {
  if (!(b instanceof NativeBackend)) throw new TypeError(`not a native backend: ${b.name}`);
  return b;
}

let reference: ReferenceBackend | undefined;

/** The built-in backends, in order of preference. */
const BUILTIN_BACKENDS = [
  {
    name: 'native',
    summary: 'the C++ addon; threads: CLIPCAP_THREADS, else every core',
    capabilities: { portable: false, oracle: false, threads: true },
    load: loadNativeBackend,
    setThreads: (b: Backend, threads: number) => asNative(b).setThreads(threads),
    details: (b: Backend): BackendDetails => {
      const info = asNative(b).info();
      return { threads: info.threads, avx2: info.avx2, extra: { gemm_kernel: info.gemmKernel } };
    },
  },
  {
    name: 'reference',
    summary: 'pure TypeScript',
    capabilities: { portable: true, oracle: true, threads: false },
    load: (): BackendLoad => ({ backend: (reference ??= new ReferenceBackend()) }),
  },
] as const satisfies readonly BackendEntry[];

/** A built-in backend's name. */
export type BuiltinBackendName = (typeof BUILTIN_BACKENDS)[number]['name'];
/** A registered backend's name (the built-in ones, or one added with registerBackend). */
// `string & {}` keeps editors suggesting the built-in names while any registered name is accepted.
export type BackendName = BuiltinBackendName | (string & {});

const entries: BackendEntry[] = [...BUILTIN_BACKENDS];
let warned = false;

/** Every registered backend's name, in order of preference (the `--backend` choices). */
export function backendNames(): string[] {
  return entries.map((e) => e.name);
}

/** Every registered backend, in order of preference. */
export function backendEntries(): readonly BackendEntry[] {
  return [...entries];
}

/** The entry named `name`; an Error listing the registered names when there is none. */
export function backendEntry(name: string): BackendEntry {
  const e = entries.find((x) => x.name === name);
  if (!e) throw new Error(`unknown backend "${name}": use ${orList(backendNames())}`);
  return e;
}

function orList(names: readonly string[]): string {
  return names.length <= 1
    ? names.join('')
    : `${names.slice(0, -1).join(', ')} or ${names[names.length - 1]}`;
}

/**
 * Adds a backend (after the built-in ones, so it is used only when asked for by name or when none before it
 * loads). Returns a function that removes it again. Names are unique.
 */
export function registerBackend(entry: BackendEntry): () => void {
  if (!/^[a-z][a-z0-9-]*$/.test(entry.name))
    throw new Error(`backend names are lower-case words (a-z, 0-9, -), got "${entry.name}"`);
  if (entries.some((e) => e.name === entry.name))
    throw new Error(`a backend "${entry.name}" is already registered`);
  entries.push(entry);
  return () => {
    const i = entries.indexOf(entry);
    if (i >= 0) entries.splice(i, 1);
  };
}

/** Why the backend `name` cannot load here, or null when it loads. */
export function backendLoadError(name: string): string | null {
  const r = backendEntry(name).load();
  return 'error' in r ? r.error : null;
}

/** Why the native backend failed to load, or null when it loads. */
export function nativeLoadError(): string | null {
  return backendLoadError('native');
}

/** True when the native addon loads on this machine. */
export function nativeAvailable(): boolean {
  return nativeLoadError() === null;
}

/** The entry and backend picked by `name` (or CLIPCAP_BACKEND, else the first that loads). */
export function selectBackend(name?: string): { entry: BackendEntry; backend: Backend } {
  const requested = name ?? process.env.CLIPCAP_BACKEND;
  if (requested !== undefined && requested !== '') {
    const entry = backendEntry(requested);
    const r = entry.load();
    if ('error' in r) throw new Error(`the ${entry.name} backend was requested but cannot load: ${r.error}`);
    return { entry, backend: r.backend };
  }
  const why: string[] = [];
  for (const entry of entries) {
    const r = entry.load();
    if ('error' in r) {
      why.push(`${entry.name} backend unavailable (${r.error})`);
      continue;
    }
    if (why.length > 0 && !warned) {
      warned = true;
      const slow = entry.capabilities.oracle ? 'the slow ' : 'the ';
      process.stderr.write(`clipcap: ${why.join('; ')}; using ${slow}${entry.name} backend.\n`);
    }
    return { entry, backend: r.backend };
  }
  throw new Error(`no backend loads here: ${why.join('; ')}`);
}

/** The backend named `name` (or CLIPCAP_BACKEND, else the first registered one that loads). */
export function getBackend(name?: string): Backend {
  return selectBackend(name).backend;
}

/** Every backend that loads here, the oracle first (for tests and benchmarks). */
export function availableBackends(): Backend[] {
  const out: Backend[] = [];
  for (const e of [...entries].sort(
    (a, b) => Number(b.capabilities.oracle) - Number(a.capabilities.oracle),
  )) {
    const r = e.load();
    if ('backend' in r) out.push(r.backend);
  }
  return out;
}

/** The oracle backend (the reference backend): what tests and benches compare the others with. */
export function oracleBackend(): Backend {
  const e = entries.find((x) => x.capabilities.oracle);
  if (!e) throw new Error('no oracle backend is registered');
  const r = e.load();
  if ('error' in r) throw new Error(`the oracle backend ${e.name} cannot load: ${r.error}`);
  return r.backend;
}

/** For tests: forget the fallback warning and the cached reference backend. */
export function resetBackendsForTests(): void {
  warned = false;
  reference = undefined;
}
