/**
 * The demo's synthetic world: one coloured shape per picture, four independent attributes (shape, colour,
 * horizontal position, size: 3 x 6 x 3 x 2 = 108 scene descriptions), rendered with sharp from SVG, each picture
 * with five reference captions that paraphrase each other the way COCO's do ("A big red circle on the left.",
 * "On the left there is a large red circle.", ...). Everything is a pure function of the seed.
 *
 * A split is written as `DIR/images/NNNNNN.png` + `DIR/annotations.json` (COCO captions format; each image also
 * records its `scene` attributes, which `clipcap caption` ignores and the attribute check reads).
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';
import { writeFileAtomic } from '../../util/atomic.js';
import { mulberry32 } from '../../util/random.js';
import { DEMO_PALETTE_RGB } from '../../weights/bundled-demo-clip.js';

export const SHAPES = ['circle', 'square', 'triangle'] as const;
export const COLOURS = ['red', 'green', 'blue', 'yellow', 'purple', 'orange'] as const;
export const POSITIONS = ['left', 'middle', 'right'] as const;
export const SIZES = ['small', 'large'] as const;

export type Shape = (typeof SHAPES)[number];
export type Colour = (typeof COLOURS)[number];
export type Position = (typeof POSITIONS)[number];
export type Size = (typeof SIZES)[number];

export interface Scene {
  shape: Shape;
  colour: Colour;
  position: Position;
  size: Size;
}

/** Pictures are square, this many pixels a side (CLIP's preprocessing resizes them to the tower's input). */
export const IMAGE_SIDE = 96;

/** The palette (the bundled demo CLIP's colour units are tuned to it). */
const RGB = Object.fromEntries(COLOURS.map((c, i) => [c, DEMO_PALETTE_RGB[i]])) as Record<
  Colour,
  readonly [number, number, number]
>;

/** Words a caption may use for each attribute value (the first is the plain one). */
const SIZE_WORDS: Record<Size, readonly string[]> = { small: ['small', 'little'], large: ['large', 'big'] };
const POSITION_PHRASES: Record<Position, readonly string[]> = {
  left: ['on the left', 'on the left side', 'to the left'],
  middle: ['in the middle', 'in the center', 'in the centre'],
  right: ['on the right', 'on the right side', 'to the right'],
};

/** The words that name a position ("side" names none). */
const POSITION_WORDS: Record<Position, readonly string[]> = {
  left: ['left'],
  middle: ['middle', 'center', 'centre'],
  right: ['right'],
};

/** Caption templates: {s} size word ({S}: the plain one), {c} colour, {h} shape, {p} position phrase. */
const TEMPLATES: readonly string[] = [
  'a {s} {c} {h} {p}',
  '{p} there is a {s} {c} {h}',
  'a {c} {h} of {S} size {p}',
  'a {s} {h} coloured {c} {p}',
  'the picture shows a {s} {c} {h} {p}',
  'a {s} {c} {h} placed {p} of the picture',
  'one {s} {c} {h} {p} on a white background',
];

const pick = <T>(xs: readonly T[], r: () => number): T => xs[Math.floor(r() * xs.length)];

/** The scene's description in the plainest words: "a large red circle on the left". */
export function describe(s: Scene): string {
  return `a ${s.size} ${s.colour} ${s.shape} ${POSITION_PHRASES[s.position][0]}`;
}

function fill(template: string, s: Scene, r: () => number): string {
  return render(template, s, pick(SIZE_WORDS[s.size], r), pick(POSITION_PHRASES[s.position], r));
}

function render(template: string, s: Scene, sizeWord: string, phrase: string): string {
  const text = template
    .replace('{S}', s.size)
    .replace('{s}', sizeWord)
    .replace('{c}', s.colour)
    .replace('{h}', s.shape)
    .replace('{p}', phrase)
    .replace(/\ba (?=[aeiou])/g, 'an ');
  return `${text[0].toUpperCase()}${text.slice(1)}.`;
}

/** Every caption the world can write (each template with every value and word choice), sorted. */
export function allCaptions(): string[] {
  const out = new Set<string>();
  for (const shape of SHAPES)
    for (const colour of COLOURS)
      for (const position of POSITIONS)
        for (const size of SIZES)
          for (const t of TEMPLATES)
            for (const sizeWord of SIZE_WORDS[size])
              for (const phrase of POSITION_PHRASES[position])
                out.add(render(t, { shape, colour, position, size }, sizeWord, phrase));
  return [...out].sort();
}

/** Five different paraphrases of one scene. */
export function captionsFor(s: Scene, r: () => number, n = 5): string[] {
  const order = TEMPLATES.map((t, i) => ({ t, k: r() + (i === 0 ? -1 : 0) })).sort((a, b) => a.k - b.k);
  return order.slice(0, n).map(({ t }) => fill(t, s, r));
}

/** What a caption says about each attribute (undefined: it names none, or several, values of it). */
export function parseAttributes(caption: string): Partial<Scene> {
  const text = ` ${caption.toLowerCase().replace(/[^a-z ]+/g, ' ')} `;
  const one = <T extends string>(values: readonly T[], words: (v: T) => readonly string[]): T | undefined => {
    const found = values.filter((v) => words(v).some((w) => text.includes(` ${w} `)));
    return found.length === 1 ? found[0] : undefined;
  };
  const r: Partial<Scene> = {};
  const shape = one(SHAPES, (v) => [v]);
  const colour = one(COLOURS, (v) => [v]);
  const size = one(SIZES, (v) => SIZE_WORDS[v]);
  const position = one(POSITIONS, (v) => POSITION_WORDS[v]);
  if (shape) r.shape = shape;
  if (colour) r.colour = colour;
  if (size) r.size = size;
  if (position) r.position = position;
  return r;
}

/** Whether a caption names every attribute of the scene, and each correctly. */
export function namesEveryAttribute(caption: string, s: Scene): boolean {
  const a = parseAttributes(caption);
  return a.shape === s.shape && a.colour === s.colour && a.position === s.position && a.size === s.size;
}

export interface WorldImage {
  id: number;
  file_name: string;
  scene: Scene;
  captions: string[];
}

/** A random scene and where exactly it is drawn. */
interface Placed {
  scene: Scene;
  cx: number;
  cy: number;
  radius: number;
  rgb: [number, number, number];
  background: [number, number, number];
}

function place(r: () => number): Placed {
  const scene: Scene = {
    shape: pick(SHAPES, r),
    colour: pick(COLOURS, r),
    position: pick(POSITIONS, r),
    size: pick(SIZES, r),
  };
  const slot = IMAGE_SIDE / 3;
  const radius = (scene.size === 'large' ? 0.48 : 0.3) * slot * (0.92 + 0.16 * r());
  const cx = slot * (POSITIONS.indexOf(scene.position) + 0.5) + (r() - 0.5) * 0.16 * slot;
  const cy = IMAGE_SIDE / 2 + (r() - 0.5) * 0.6 * (IMAGE_SIDE - 2 * radius - 8);
  const jitter = (v: number): number => Math.max(0, Math.min(255, Math.round(v + (r() - 0.5) * 16)));
  const rgb = RGB[scene.colour].map(jitter) as [number, number, number];
  const g = 232 + Math.floor(r() * 24);
  const background: [number, number, number] = [g, g - Math.floor(r() * 6), g - Math.floor(r() * 6)];
  return { scene, cx, cy, radius, rgb, background };
}

function svg(p: Placed): string {
  const [r, g, b] = p.rgb;
  const colour = `rgb(${r},${g},${b})`;
  const { cx, cy, radius: q } = p;
  let shape: string;
  if (p.scene.shape === 'circle') shape = `<circle cx="${cx}" cy="${cy}" r="${q}" fill="${colour}"/>`;
  else if (p.scene.shape === 'square') {
    const s = q * 1.6; // about the circle's area
    shape = `<rect x="${cx - s / 2}" y="${cy - s / 2}" width="${s}" height="${s}" fill="${colour}"/>`;
  } else {
    const h = q * 1.1;
    const pts = [
      [cx, cy - h],
      [cx - h * 1.1, cy + h * 0.8],
      [cx + h * 1.1, cy + h * 0.8],
    ];
    shape = `<polygon points="${pts.map((v) => v.join(',')).join(' ')}" fill="${colour}"/>`;
  }
  const [br, bg, bb] = p.background;
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${IMAGE_SIDE}" height="${IMAGE_SIDE}">` +
    `<rect width="100%" height="100%" fill="rgb(${br},${bg},${bb})"/>${shape}</svg>`
  );
}

/** The `n` scenes of a world with this seed, with their captions (no pictures drawn). */
export function worldScenes(n: number, seed: number): Array<WorldImage & { placed: Placed }> {
  const r = mulberry32(seed);
  const out: Array<WorldImage & { placed: Placed }> = [];
  for (let i = 0; i < n; i++) {
    const placed = place(r);
    out.push({
      id: i + 1,
      file_name: `${String(i + 1).padStart(6, '0')}.png`,
      scene: placed.scene,
      captions: captionsFor(placed.scene, r),
      placed,
    });
  }
  return out;
}

export interface WriteWorldResult {
  dir: string;
  images: WorldImage[];
  annotations: string;
}

/**
 * Draw a world split into `dir` (images/ + annotations.json). The annotations are written last and atomically:
 * a split with annotations.json is complete.
 */
export async function writeWorld(
  dir: string,
  o: { n: number; seed: number; onProgress?: (done: number) => void },
): Promise<WriteWorldResult> {
  const scenes = worldScenes(o.n, o.seed);
  const imagesDir = path.join(dir, 'images');
  await fs.mkdir(imagesDir, { recursive: true });
  let done = 0;
  const draw = async (w: (typeof scenes)[number]): Promise<void> => {
    const png = await sharp(Buffer.from(svg(w.placed)))
      .png({ compressionLevel: 6 })
      .toBuffer();
    await fs.writeFile(path.join(imagesDir, w.file_name), png);
    o.onProgress?.(++done);
  };
  // A few at a time: sharp renders on its own threads.
  for (let i = 0; i < scenes.length; i += 8) await Promise.all(scenes.slice(i, i + 8).map(draw));
  const images: WorldImage[] = scenes.map(({ id, file_name, scene, captions }) => ({
    id,
    file_name,
    scene,
    captions,
  }));
  let annId = 0;
  const coco = {
    info: { description: `clipcap demo world, ${o.n} images, seed ${o.seed}` },
    images: images.map((w) => ({ id: w.id, file_name: w.file_name, scene: w.scene })),
    annotations: images.flatMap((w) =>
      w.captions.map((caption) => ({ id: ++annId, image_id: w.id, caption })),
    ),
  };
  const annotations = path.join(dir, 'annotations.json');
  await writeFileAtomic(annotations, `${JSON.stringify(coco)}\n`);
  return { dir, images, annotations };
}
