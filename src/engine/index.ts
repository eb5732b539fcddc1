/**
 * The engine: Tensor, the Backend interface, and backend selection through the registry (registry.ts: which
 * backends exist, `--backend` / CLIPCAP_BACKEND, the fallback when the native addon cannot load).
 */
export * from './backend.js';
export * from './tensor.js';
export {
  availableBackends,
  backendEntries,
  backendEntry,
  backendLoadError,
  backendNames,
  getBackend,
  nativeAvailable,
  nativeLoadError,
  oracleBackend,
  registerBackend,
  resetBackendsForTests,
  selectBackend,
  type BackendCapabilities,
  type BackendDetails,
  type BackendEntry,
  type BackendLoad,
  type BackendName,
  type BuiltinBackendName,
} from './registry.js';
