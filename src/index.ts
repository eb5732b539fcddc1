/** clipcap: ClipCap image captioning for Node.js. */
export * from './engine/index.js';
export { UserError, UsageError } from './util/errors.js';
