// Placeholder until the native addon lands: the loader reports why it is unavailable.
import type { Backend } from './backend.js';

export function loadNativeBackend(): { backend: Backend } | { error: string } {
  return { error: 'the native addon is not built yet' };
}
