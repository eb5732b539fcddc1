import { describe, expect, it } from 'vitest';
import {
  allCaptions,
  COLOURS,
  describe as describeScene,
  namesEveryAttribute,
  parseAttributes,
  POSITIONS,
  SHAPES,
  SIZES,
  worldScenes,
} from '../../src/cli/demo/world.js';

describe('demo world', () => {
  const scenes = worldScenes(600, 11);

  it('varies four independent attributes over more than 50 scene descriptions', () => {
    expect(SHAPES.length * COLOURS.length * POSITIONS.length * SIZES.length).toBeGreaterThanOrEqual(50);
    const seen = new Set(scenes.map((w) => describeScene(w.scene)));
    expect(seen.size).toBeGreaterThanOrEqual(100); // 600 draws of 108 descriptions cover nearly all
    for (const values of [SHAPES, COLOURS, POSITIONS, SIZES] as const)
      expect(values.length).toBeGreaterThanOrEqual(2);
  });

  it('gives every scene five different paraphrases, each naming every attribute', () => {
    for (const w of scenes) {
      expect(new Set(w.captions).size).toBe(5);
      for (const c of w.captions) {
        expect(namesEveryAttribute(c, w.scene), `${c} for ${JSON.stringify(w.scene)}`).toBe(true);
        expect(c).toMatch(/^[A-Z].*\.$/);
      }
    }
  });

  it('every caption the world can write parses back to exactly one value per attribute', () => {
    const all = allCaptions();
    expect(all.length).toBeGreaterThan(1000);
    for (const c of all)
      expect(Object.keys(parseAttributes(c)).sort()).toEqual(['colour', 'position', 'shape', 'size']);
  });

  it('the attribute check fails captions that get an attribute wrong or leave it out', () => {
    const s = { shape: 'circle', colour: 'red', position: 'left', size: 'large' } as const;
    expect(namesEveryAttribute('A big red circle on the left side.', s)).toBe(true);
    expect(namesEveryAttribute('A big red circle on the right side.', s)).toBe(false);
    expect(namesEveryAttribute('A big red square on the left.', s)).toBe(false);
    expect(namesEveryAttribute('A red circle on the left.', s)).toBe(false);
    expect(namesEveryAttribute('A big red or blue circle on the left.', s)).toBe(false);
  });

  it('is a pure function of the seed', () => {
    expect(JSON.stringify(worldScenes(50, 11))).toBe(JSON.stringify(scenes.slice(0, 50)));
    expect(JSON.stringify(worldScenes(50, 12))).not.toBe(JSON.stringify(scenes.slice(0, 50)));
  });
});
