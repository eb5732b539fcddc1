// Placeholder: the reference backend is being written.
import type { Backend } from './backend.js';

export const ReferenceBackend = class {
  readonly name = 'reference';
} as unknown as new () => Backend;
