/**
 * Fresh mapper weights as PyTorch initializes the official modules (seeded, so a run is reproducible):
 * nn.Linear weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a = sqrt(5)),
 * nn.LayerNorm weight 1 and bias 0, and the transformer mapper's prefix_const ~ N(0, 1) (torch.randn).
 * The values differ from a torch run (another generator); the distributions are the same.
 */
import type { MapperConfig } from '../config/models.js';
import { mapperWeightSpec } from '../models/mapper.js';
import type { StateDict } from '../weights/host.js';
import { mulberry32 } from '../util/random.js';

/** clip_project.* for a new mapper of GPT-2 width `width`. */
export function initMapperWeights(config: MapperConfig, width: number, seed: number): StateDict {
  const rand = mulberry32(seed ^ 0x5bd1e995);
  const sd: StateDict = new Map();
  const spec = mapperWeightSpec(config, width);
  for (const [name, shape] of spec) {
    const n = shape.reduce((a, d) => a * d, 1);
    const data = new Float32Array(n);
    if (/norm\d\.weight$/.test(name)) data.fill(1);
    else if (/norm\d\.bias$/.test(name)) data.fill(0);
    else if (name.endsWith('prefix_const')) {
      for (let i = 0; i < n; i++) {
        // Box-Muller; 1 - u keeps the log finite.
        const u = 1 - rand();
        data[i] = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rand());
      }
    } else {
      // A bias's fan_in is its layer's input width: the weight with the same prefix.
      const w = name.endsWith('.bias') ? spec.get(name.replace(/bias$/, 'weight')) : shape;
      const fanIn = w ? w[1] : shape[0];
      const bound = 1 / Math.sqrt(fanIn);
      for (let i = 0; i < n; i++) data[i] = (2 * rand() - 1) * bound;
    }
    sd.set(name, { dtype: 'f32', shape: [...shape], data });
  }
  return sd;
}
