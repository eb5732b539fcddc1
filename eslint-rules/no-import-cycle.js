/**
 * clipcap/no-import-cycle: a relative import that leads back to the importing file through other relative
 * imports is an error. Only imports that exist at run time count: `import type`, imports whose specifiers are
 * all `type`, and `export type ... from` are erased by TypeScript, so two interfaces may name each other.
 *
 * The linted file's imports come from its AST (so an edit is judged before it is saved); every other file's
 * imports are read from disk once per lint run and cached.
 */
import fs from 'node:fs';
import path from 'node:path';
import tseslint from 'typescript-eslint';

/** Runtime relative import targets of one module, as absolute .ts paths, with the node that names each. */
function runtimeImports(ast, file) {
  const out = [];
  for (const node of ast.body) {
    let source = null;
    if (node.type === 'ImportDeclaration') {
      if (node.importKind === 'type') continue;
      const specs = node.specifiers;
      if (specs.length > 0 && specs.every((s) => s.type === 'ImportSpecifier' && s.importKind === 'type'))
        continue;
      source = node.source;
    } else if (node.type === 'ExportNamedDeclaration' || node.type === 'ExportAllDeclaration') {
      if (!node.source || node.exportKind === 'type') continue;
      const specs = node.specifiers ?? [];
      if (specs.length > 0 && specs.every((s) => s.exportKind === 'type')) continue;
      source = node.source;
    }
    if (!source || typeof source.value !== 'string' || !source.value.startsWith('.')) continue;
    const target = resolve(file, source.value);
    if (target) out.push({ target, node });
  }
  return out;
}

/** './x.js' from a .ts file names './x.ts' (NodeNext resolution); a file that does not exist is no edge. */
function resolve(from, spec) {
  const base = path.resolve(path.dirname(from), spec);
  for (const c of [base.replace(/\.js$/, '.ts'), base, `${base}.ts`, path.join(base, 'index.ts')])
    if (c.endsWith('.ts') && fs.existsSync(c)) return c;
  return null;
}

const cache = new Map();

function importsOnDisk(file) {
  let r = cache.get(file);
  if (r === undefined) {
    try {
      const { ast } = tseslint.parser.parseForESLint(fs.readFileSync(file, 'utf8'), {
        sourceType: 'module',
        filePath: file,
      });
      r = runtimeImports(ast, file).map((e) => e.target);
    } catch {
      r = []; // a file that does not parse is reported by the lint of that file
    }
    cache.set(file, r);
  }
  return r;
}

/** A path start -> ... -> goal over runtime imports (breadth first, so the shortest), or null. */
function findPath(start, goal) {
  const prev = new Map([[start, null]]);
  const queue = [start];
  while (queue.length > 0) {
    const f = queue.shift();
    if (f === goal) {
      const p = [];
      for (let x = f; x !== null; x = prev.get(x)) p.unshift(x);
      return p;
    }
    for (const t of importsOnDisk(f))
      if (!prev.has(t)) {
        prev.set(t, f);
        queue.push(t);
      }
  }
  return null;
}

export default {
  meta: {
    type: 'problem',
    docs: { description: 'forbid relative import cycles (type-only imports excepted)' },
    schema: [],
    messages: { cycle: 'import cycle: {{path}}' },
  },
  create(context) {
    const file = context.filename;
    const root = context.cwd;
    return {
      'Program:exit'(ast) {
        for (const { target, node } of runtimeImports(ast, file)) {
          const p = findPath(target, file);
          if (p)
            context.report({
              node,
              messageId: 'cycle',
              data: { path: [file, ...p].map((f) => path.relative(root, f)).join(' -> ') },
            });
        }
      },
    };
  },
};
