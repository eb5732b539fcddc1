/**
 * Backend selection. `--backend` / CLIPCAP_BACKEND pick one explicitly; otherwise the native addon is used
 * when it loads, and the reference backend (with one line saying why) when it does not.
 */
import type { Backend } from './backend.js';
import { ReferenceBackend } from './reference.js';
import { loadNativeBackend } from './native.js';

export type BackendName = 'native' | 'reference';
export * from './backend.js';
export * from './tensor.js';
export { scope, keep, persist } from './memory.js';
export { DeviceBackend } from './checked.js';
export type { Device } from './device.js';

let cached: Partial<Record<BackendName, Backend>> = {};
let warned = false;

/** Why the native backend failed to load, or null when it loaded (or was never tried). */
let nativeError: string | null = null;

function tryNative(): Backend | null {
  if (cached.native) return cached.native;
  const r = loadNativeBackend();
  if ('error' in r) {
    nativeError = r.error;
    return null;
  }
  cached.native = r.backend;
  return r.backend;
}

export function nativeLoadError(): string | null {
  tryNative();
  return nativeError;
}

/** True when the native addon loads on this machine. */
export function nativeAvailable(): boolean {
  return tryNative() !== null;
}

export function getBackend(name?: string): Backend {
  const requested = name ?? process.env.CLIPCAP_BACKEND;
  if (requested !== undefined && requested !== '' && requested !== 'native' && requested !== 'reference') {
    throw new Error(`unknown backend "${requested}": use native or reference`);
  }
  if (requested === 'reference') return (cached.reference ??= new ReferenceBackend());
  const native = tryNative();
  if (native) return native;
  if (requested === 'native') {
    throw new Error(`the native backend was requested but cannot load: ${nativeError}`);
  }
  if (!warned) {
    warned = true;
    process.stderr.write(
      `clipcap: native backend unavailable (${nativeError}); using the slow reference backend.\n`,
    );
  }
  return (cached.reference ??= new ReferenceBackend());
}

/** Every backend that loads here (for tests and benchmarks). */
export function availableBackends(): Backend[] {
  const out: Backend[] = [(cached.reference ??= new ReferenceBackend())];
  const native = tryNative();
  if (native) out.push(native);
  return out;
}

/** For tests: forget loaded backends. */
export function resetBackendsForTests(): void {
  cached = {};
  warned = false;
  nativeError = null;
}
