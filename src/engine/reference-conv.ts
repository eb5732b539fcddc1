/**
 * The reference backend's convolution and pooling kernels (NHWC), kept apart from reference.ts as the engine
 * agreement asks of new op groups. Direct loops stating the math, every sum in float64 and rounded to float32
 * once when stored:
 *   conv:  y[b, oy, ox, o] = bias[o] + Σ_{ky, kx, c} x[b, oy·sH - pH + ky, ox·sW - pW + kx, c] · w[o, ky, kx, c]
 *          (taps outside the image read zero), + residual[b, oy, ox, o] when given, then max(y, 0) with ReLU;
 *   pool:  y[b, oy, ox, c] = Σ_{ky, kx} x[...] / (kh·kw)   (nn.AvgPool2d: padding counts as zeros).
 */
import type { Conv2dDims, HostKernels } from './host-backend.js';

export const referenceConvKernels: Pick<HostKernels, 'conv2d' | 'avgPool2d'> = {
  conv2d(X, Wt, bias, R, Y, d, relu) {
    const { batch, H, W, C, O, kh, kw, Ho, Wo } = d;
    const acc = new Float64Array(O);
    for (let b = 0; b < batch; b++)
      for (let oy = 0; oy < Ho; oy++)
        for (let ox = 0; ox < Wo; ox++) {
          for (let o = 0; o < O; o++) acc[o] = bias ? bias[o] : 0;
          forEachTap(d, oy, ox, (iy, ix, ky, kx) => {
            const xOff = ((b * H + iy) * W + ix) * C;
            for (let o = 0; o < O; o++) {
              const wOff = ((o * kh + ky) * kw + kx) * C;
              let s = 0;
              for (let c = 0; c < C; c++) s += X[xOff + c] * Wt[wOff + c];
              acc[o] += s;
            }
          });
          const yOff = ((b * Ho + oy) * Wo + ox) * O;
          for (let o = 0; o < O; o++) {
            const v = acc[o] + (R ? R[yOff + o] : 0);
            Y[yOff + o] = relu && v < 0 ? 0 : v;
          }
        }
  },

  avgPool2d(X, Y, d) {
    const { batch, H, W, C, kh, kw, Ho, Wo } = d;
    const acc = new Float64Array(C);
    for (let b = 0; b < batch; b++)
      for (let oy = 0; oy < Ho; oy++)
        for (let ox = 0; ox < Wo; ox++) {
          acc.fill(0);
          forEachTap(d, oy, ox, (iy, ix) => {
            const xOff = ((b * H + iy) * W + ix) * C;
            for (let c = 0; c < C; c++) acc[c] += X[xOff + c];
          });
          const yOff = ((b * Ho + oy) * Wo + ox) * C;
          for (let c = 0; c < C; c++) Y[yOff + c] = acc[c] / (kh * kw);
        }
  },
};

/** Calls fn for each window tap of output (oy, ox) that lands inside the image (padding taps are zeros). */
function forEachTap(
  d: Conv2dDims,
  oy: number,
  ox: number,
  fn: (iy: number, ix: number, ky: number, kx: number) => void,
): void {
  for (let ky = 0; ky < d.kh; ky++) {
    const iy = oy * d.strideH - d.padH + ky;
    if (iy < 0 || iy >= d.H) continue;
    for (let kx = 0; kx < d.kw; kx++) {
      const ix = ox * d.strideW - d.padW + kx;
      if (ix >= 0 && ix < d.W) fn(iy, ix, ky, kx);
    }
  }
}
