import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import globals from 'globals';
import { builtinModules } from 'node:module';
import noImportCycle from './eslint-rules/no-import-cycle.js';

/**
 * The layering of docs/DESIGN.md ("each layer only calls the ones below it"), as the folders of src/ each may
 * import from (besides itself). Every other folder of src/ is forbidden to it; a new folder must be added here.
 */
const LOWEST = ['engine', 'weights', 'text', 'image', 'config', 'util'];
const BELOW_PIPELINE = ['train', 'generate', 'eval', 'data', 'models', 'nn', ...LOWEST];
export const LAYERS = {
  util: [],
  config: [],
  engine: ['util'],
  weights: ['config', 'util'],
  text: ['util'],
  image: ['util'],
  nn: ['engine', 'config', 'util'],
  // models/ may name generate/'s CausalLM contract as a type (TYPE_ONLY below), never call generate/.
  models: ['nn', 'engine', 'weights', 'config', 'util'],
  data: ['weights', 'text', 'util'],
  eval: ['text', 'util'],
  generate: ['engine', 'config', 'util'],
  train: ['data', 'models', 'nn', 'engine', 'weights', 'text', 'config', 'util'],
  pipeline: BELOW_PIPELINE,
  server: ['pipeline', 'generate', 'engine', 'config', 'util'],
  bench: ['server', 'pipeline', ...BELOW_PIPELINE],
  cli: ['server', 'bench', 'pipeline', ...BELOW_PIPELINE],
};

/** Type-only imports across layers that are contracts, not calls: [from folder, to folder]. */
const TYPE_ONLY = [['models', 'generate']];

/**
 * Engine files that must run without Node (docs/DESIGN.md: the reference backend "could run in a browser"): the
 * Tensor, the Backend interface and its shared checks, the reference backend. native.ts (the addon loader),
 * registry.ts and index.ts (backend selection) are the Node side.
 */
export const BROWSER_SAFE = ['src/engine/**/*.ts'];
const NODE_SIDE = ['src/engine/native.ts', 'src/engine/registry.ts', 'src/engine/index.ts'];

const escape = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
/** An import specifier that resolves to src/<dir>/... from a file anywhere under src/<layer>/. */
const dirRegex = (dir) => `^(\\.\\./)+${escape(dir)}(/|$)`;

function layerPatterns(layer) {
  const allowed = new Set([layer, ...LAYERS[layer]]);
  return Object.keys(LAYERS)
    .filter((d) => !allowed.has(d))
    .map((d) => ({
      regex: dirRegex(d),
      allowTypeImports: TYPE_ONLY.some(([a, b]) => a === layer && b === d),
      message: `src/${layer}/ may not import src/${d}/ (docs/DESIGN.md layering; allowed: ${LAYERS[layer].join(', ') || 'none'}).`,
    }));
}

const nodePatterns = [
  {
    regex: `^(node:.*|${builtinModules.map(escape).join('|')})(/.*)?$`,
    message: 'browser-safe engine code may not import Node built-ins (see BROWSER_SAFE in eslint.config.js).',
  },
  {
    regex: '^\\./(native|registry|index)\\.js$',
    message: 'browser-safe engine code may not import the Node side of the engine (native, registry, index).',
  },
  {
    regex: '^\\.\\./util/(?!random\\.js$)',
    message: 'browser-safe engine code may import only util/random.js from util/ (the rest uses Node).',
  },
];

const restricted = (patterns) => ({ '@typescript-eslint/no-restricted-imports': ['error', { patterns }] });

export default tseslint.config(
  { ignores: ['dist/**', 'build/**', 'node_modules/**', 'coverage/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: { ...globals.node } },
    rules: {
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  // Layering: one block per folder of src/ (a later block for the same files replaces these options).
  ...Object.keys(LAYERS).map((layer) => ({
    files: [`src/${layer}/**/*.ts`],
    rules: restricted(layerPatterns(layer)),
  })),
  {
    files: BROWSER_SAFE,
    ignores: NODE_SIDE,
    rules: restricted([...layerPatterns('engine'), ...nodePatterns]),
  },
  // The one util/ file the browser-safe engine imports (the seeded generator of dropout masks).
  { files: ['src/util/random.ts'], rules: restricted([...layerPatterns('util'), nodePatterns[0]]) },
  {
    files: ['src/**/*.ts'],
    plugins: { clipcap: { rules: { 'no-import-cycle': noImportCycle } } },
    rules: { 'clipcap/no-import-cycle': 'error' },
  },
);
