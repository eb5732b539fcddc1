export { Gpt2Tokenizer } from './gpt2-tokenizer.js';
export type { EncodeOptions } from './gpt2-tokenizer.js';
