/**
 * Caption evaluation as the COCO caption toolkit (pycocoevalcap's COCOEvalCap.evaluate) does it:
 * PTB-tokenize references and candidates (two separate tokenizer runs), then Bleu(4), METEOR, ROUGE-L,
 * CIDEr(-D) and SPICE on the images that have a prediction. METEOR and SPICE run the toolkit's jars when
 * given; without them (or without Java) they are reported as not computed.
 *
 *   const refs = await readReferences('dataset_coco.json', { split: 'test' });
 *   const preds = await readPredictions('results.json');
 *   const r = await evaluateCaptions(refs, preds, { tokenize: 'ptb' });
 *   r.CIDEr, r.per_image['391895'].Bleu_4
 */
import { computeBleu } from './bleu.js';
import { computeCider } from './cider.js';
import { type JavaCommand, JavaNotFoundError } from './java.js';
import { computeMeteor } from './meteor.js';
import { ptbTokenizeBatch } from './ptb.js';
import { type PredictionSet, type ReferenceSet, sample } from './readers.js';
import { computeRouge } from './rouge.js';
import { computeSpice } from './spice.js';
import { UserError } from '../util/errors.js';
import { checkOptionKeys, optionKeys } from '../util/options.js';

export { computeBleu, bleuImageStats, type BleuResult, type BleuStats } from './bleu.js';
export { computeRouge, rougeL, lcsLength, type RougeResult } from './rouge.js';
export { computeCider, type CiderResult } from './cider.js';
export { ptbTokenize, ptbTokenizeBatch, ptbLex, PTB_PUNCTUATIONS } from './ptb.js';
export { computeMeteor, meteorScoreLine, type MeteorOptions, type MeteorResult } from './meteor.js';
export { computeSpice, type SpiceOptions, type SpiceResult, type SpiceCategory } from './spice.js';
export { type JavaCommand, JavaNotFoundError, resolveJava } from './java.js';
export {
  readReferences,
  readPredictions,
  parseReferences,
  parsePredictions,
  cocoIdFromFileName,
  imageIdForPath,
  type ReferenceSet,
  type PredictionSet,
  type ReadReferencesOptions,
  type ReadPredictionsOptions,
} from './readers.js';

export type Tokenization = 'ptb' | 'none';

/** pycocoevalcap's metric names, in its order. */
export const METRIC_NAMES = [
  'Bleu_1',
  'Bleu_2',
  'Bleu_3',
  'Bleu_4',
  'METEOR',
  'ROUGE_L',
  'CIDEr',
  'SPICE',
] as const;
export type MetricName = (typeof METRIC_NAMES)[number];

/** Scores of the corpus or of one image; METEOR / SPICE only when computed. */
export interface Scores {
  Bleu_1: number;
  Bleu_2: number;
  Bleu_3: number;
  Bleu_4: number;
  METEOR?: number;
  ROUGE_L: number;
  CIDEr: number;
  SPICE?: number;
}

export interface EvalResult extends Scores {
  per_image: Record<string, Scores>;
  /** Number of images scored. */
  images: number;
  tokenize: Tokenization;
  /** Why METEOR / SPICE are missing, when they are. */
  notComputed: Partial<Record<'METEOR' | 'SPICE', string>>;
}

export interface EvaluateOptions {
  /** 'ptb' (default, as pycocoevalcap) or 'none' for strings that are already tokenized. */
  tokenize?: Tokenization;
  /** meteor-1.5.jar (with its data/ folder); METEOR is skipped without it. */
  meteorJar?: string;
  /** spice-1.0.jar (with its lib/ folder); SPICE is skipped without it. */
  spiceJar?: string;
  /** SPICE parse cache directory. */
  spiceCache?: string;
  /** Java command for the jars (default $CLIPCAP_JAVA or `java`). */
  java?: JavaCommand;
  /** Score only the images that have a prediction (pycocoevalcap's behaviour) instead of requiring all. */
  onlyPredicted?: boolean;
  /** Progress messages (stage names), e.g. for a CLI's stderr. */
  onProgress?: (message: string) => void;
}

export type ReferencesInput =
  ReferenceSet | ReadonlyMap<string | number, readonly string[]> | Record<string, readonly string[]>;
export type PredictionsInput = PredictionSet | ReadonlyMap<string | number, string> | Record<string, string>;

function toReferenceSet(r: ReferencesInput): ReferenceSet {
  if ('captions' in r && 'ids' in r && r.captions instanceof Map) return r as ReferenceSet;
  const entries: Array<[string | number, readonly string[]]> =
    r instanceof Map ? [...(r as ReadonlyMap<string | number, readonly string[]>)] : Object.entries(r);
  const captions = new Map<string, string[]>();
  for (const [id, caps] of entries) {
    if (!Array.isArray(caps) || caps.some((c) => typeof c !== 'string')) {
      throw new UserError(`references: image ${id}: expected a list of caption strings`);
    }
    captions.set(String(id), [...caps]);
  }
  return { ids: [...captions.keys()], captions, source: 'references', format: 'json-records' };
}

function toPredictionSet(p: PredictionsInput): PredictionSet {
  if ('captions' in p && 'ids' in p && p.captions instanceof Map) return p as PredictionSet;
  const entries: Array<[string | number, string]> =
    p instanceof Map ? [...(p as ReadonlyMap<string | number, string>)] : Object.entries(p);
  const captions = new Map<string, string>();
  for (const [id, cap] of entries) {
    if (typeof cap !== 'string') throw new UserError(`predictions: image ${id}: expected a caption string`);
    if (captions.has(String(id)))
      throw new UserError(`predictions: image ${id} has more than one prediction`);
    captions.set(String(id), cap);
  }
  return { ids: [...captions.keys()], captions, source: 'predictions', format: 'coco-results' };
}

/**
 * Pair predictions with references, in the references' order. Errors name both sources: ids with a
 * prediction but no references, images without a prediction (unless onlyPredicted), images with no
 * reference captions.
 */
export function alignCaptions(
  refs: ReferenceSet,
  preds: PredictionSet,
  onlyPredicted = false,
): { ids: string[]; references: string[][]; candidates: string[] } {
  const unknown = preds.ids.filter((id) => !refs.captions.has(id));
  if (unknown.length > 0) {
    throw new UserError(
      `${preds.source}: ${unknown.length} of ${preds.ids.length} predicted image ids are not in ${refs.source} (${sample(unknown)})`,
    );
  }
  const empty = preds.ids.filter((id) => (refs.captions.get(id) as string[]).length === 0);
  if (empty.length > 0) {
    throw new UserError(
      `${refs.source}: ${empty.length} predicted image(s) have no reference captions (${sample(empty)})`,
    );
  }
  if (!onlyPredicted) {
    // Images listed without captions are not reference images: they need no prediction.
    const withRefs = refs.ids.filter((id) => (refs.captions.get(id) as string[]).length > 0);
    const missing = withRefs.filter((id) => !preds.captions.has(id));
    if (missing.length > 0) {
      throw new UserError(
        `${refs.source}: ${missing.length} of ${withRefs.length} images have no prediction in ${preds.source} ` +
          `(${sample(missing)}); pick the split with --split, or score only the predicted images with --only-predicted`,
      );
    }
  }
  const ids = refs.ids.filter((id) => preds.captions.has(id));
  if (ids.length === 0) throw new UserError(`${preds.source}: no images to score`);
  return {
    ids,
    references: ids.map((id) => refs.captions.get(id) as string[]),
    candidates: ids.map((id) => preds.captions.get(id) as string),
  };
}

/** METEOR / SPICE: run the jar, or say why not. A missing Java is "not computed", anything else throws. */
async function optionalMetric<T>(
  name: 'METEOR' | 'SPICE',
  jar: string | undefined,
  option: string,
  run: () => Promise<T>,
  notComputed: EvalResult['notComputed'],
): Promise<T | undefined> {
  if (jar === undefined) {
    notComputed[name] = `no ${name} jar given (${option})`;
    return undefined;
  }
  try {
    return await run();
  } catch (e) {
    if (e instanceof JavaNotFoundError) {
      notComputed[name] = e.message;
      return undefined;
    }
    throw e;
  }
}

/**
 * Score predictions against references exactly as pycocoevalcap does. Corpus scores and per-image scores
 * (keyed by image id) use pycocoevalcap's metric names.
 */
export async function evaluateCaptions(
  references: ReferencesInput,
  predictions: PredictionsInput,
  opts: EvaluateOptions = {},
): Promise<EvalResult> {
  checkOptionKeys(
    opts,
    optionKeys<EvaluateOptions>({
      tokenize: true,
      meteorJar: true,
      spiceJar: true,
      spiceCache: true,
      java: true,
      onlyPredicted: true,
      onProgress: true,
    }),
    'evaluateCaptions options',
  );
  const tokenize = opts.tokenize ?? 'ptb';
  if (tokenize !== 'ptb' && tokenize !== 'none')
    throw new UserError(`unknown tokenization "${String(tokenize)}" (ptb or none)`);
  const progress = opts.onProgress ?? (() => undefined);
  const {
    ids,
    references: rawRefs,
    candidates: rawCands,
  } = alignCaptions(toReferenceSet(references), toPredictionSet(predictions), opts.onlyPredicted ?? false);

  let refs = rawRefs;
  let cands = rawCands;
  if (tokenize === 'ptb') {
    progress('tokenizing (PTB)');
    // Two runs, as pycocoevalcap: all references (image by image, in order), then all candidates.
    const flat = ptbTokenizeBatch(rawRefs.flat());
    let k = 0;
    refs = rawRefs.map((list) => list.map(() => flat[k++]));
    cands = ptbTokenizeBatch(rawCands);
  }

  const notComputed: EvalResult['notComputed'] = {};
  progress('computing Bleu');
  const bleu = computeBleu(cands, refs);
  const meteor = await optionalMetric(
    'METEOR',
    opts.meteorJar,
    '--meteor-jar',
    () => {
      progress('computing METEOR');
      return computeMeteor(cands, refs, { jar: opts.meteorJar as string, java: opts.java });
    },
    notComputed,
  );
  progress('computing ROUGE_L');
  const rouge = computeRouge(cands, refs);
  progress('computing CIDEr');
  const cider = computeCider(cands, refs);
  const spice = await optionalMetric(
    'SPICE',
    opts.spiceJar,
    '--spice-jar',
    () => {
      progress('computing SPICE');
      return computeSpice(ids, cands, refs, {
        jar: opts.spiceJar as string,
        java: opts.java,
        cache: opts.spiceCache,
      });
    },
    notComputed,
  );

  // Keys in pycocoevalcap's order: METEOR between Bleu_4 and ROUGE_L, SPICE last.
  const build = (
    b: readonly number[],
    m: number | undefined,
    r: number,
    c: number,
    sp: number | undefined,
  ): Scores => {
    const out = { Bleu_1: b[0], Bleu_2: b[1], Bleu_3: b[2], Bleu_4: b[3] } as Scores;
    if (m !== undefined) out.METEOR = m;
    out.ROUGE_L = r;
    out.CIDEr = c;
    if (sp !== undefined) out.SPICE = sp;
    return out;
  };
  const per_image: Record<string, Scores> = {};
  ids.forEach((id, i) => {
    per_image[id] = build(
      bleu.perImage[i],
      meteor?.perImage[i],
      rouge.perImage[i],
      cider.perImage[i],
      spice?.perImage[i],
    );
  });
  const corpus = build(bleu.scores, meteor?.score, rouge.score, cider.score, spice?.score);
  return { ...corpus, per_image, images: ids.length, tokenize, notComputed };
}

/** The JSON document `clipcap eval --format json` prints: the metric keys and per_image, nothing else. */
export function toCocoJson(r: EvalResult): Record<string, unknown> {
  const pickScores = (s: Scores): Record<string, number> => {
    const out: Record<string, number> = {};
    for (const m of METRIC_NAMES) {
      const v = s[m];
      if (v !== undefined) out[m] = v;
    }
    return out;
  };
  const per: Record<string, Record<string, number>> = {};
  for (const [id, s] of Object.entries(r.per_image)) per[id] = pickScores(s);
  return { ...pickScores(r), per_image: per };
}
