//! Planar (CHW) f32 images and their geometric operations: PIL-style
//! bilinear resize (a triangle filter widened by the scale factor when
//! shrinking, so downscaling is antialiased as in torchvision on PIL images),
//! crops with zero fill outside the image, horizontal flips, RGB -> luma.

/// A C x H x W image, channel planes one after another.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Planar {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<f32>,
}

/// PIL's fixed-point precision for 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The taps of one output pixel: first input index, normalized weights, and
/// the same weights in PIL's fixed point (for bit-exact 8-bit results).
struct Taps {
    lo: usize,
    w: Vec<f64>,
    k: Vec<i64>,
}

impl Taps {
    /// The filtered value of `src` (the inputs from `lo` on).
    fn dot(&self, src: &[f32], quantize: bool) -> f32 {
        if quantize {
            let acc = self
                .k
                .iter()
                .zip(src)
                .fold(1i64 << (PRECISION_BITS - 1), |a, (k, &v)| a + k * v as i64);
            (acc >> PRECISION_BITS).clamp(0, 255) as f32
        } else {
            self.w
                .iter()
                .zip(src)
                .map(|(w, &v)| w * f64::from(v))
                .sum::<f64>() as f32
        }
    }

    /// The weighted sum of whole rows `rows[lo..]` of width `w`, into `out`.
    fn rows(&self, plane: &[f32], w: usize, quantize: bool, out: &mut Vec<f32>) {
        let rows = plane[self.lo * w..].chunks_exact(w);
        if quantize {
            let mut acc = vec![1i64 << (PRECISION_BITS - 1); w];
            for (k, row) in self.k.iter().zip(rows) {
                acc.iter_mut()
                    .zip(row)
                    .for_each(|(a, &v)| *a += k * v as i64);
            }
            out.extend(
                acc.iter()
                    .map(|a| (a >> PRECISION_BITS).clamp(0, 255) as f32),
            );
        } else {
            let mut acc = vec![0f64; w];
            for (k, row) in self.w.iter().zip(rows) {
                acc.iter_mut()
                    .zip(row)
                    .for_each(|(a, &v)| *a += k * f64::from(v));
            }
            out.extend(acc.iter().map(|&a| a as f32));
        }
    }
}

/// PIL's bilinear coefficients (ImagingResample's precompute_coeffs).
fn coefficients(src: usize, dst: usize) -> Vec<Taps> {
    let scale = src as f64 / dst as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale;
    (0..dst)
        .map(|x| {
            let center = (x as f64 + 0.5) * scale;
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).clamp(0, src as i64) as usize;
            let mut w: Vec<f64> = (lo..hi)
                .map(|j| (1.0 - ((j as f64 - center + 0.5) / filterscale).abs()).max(0.0))
                .collect();
            let sum: f64 = w.iter().sum();
            if sum != 0.0 {
                w.iter_mut().for_each(|v| *v /= sum);
            }
            let one = f64::from(1u32 << PRECISION_BITS);
            let k = w
                .iter()
                .map(|&v| {
                    if v < 0.0 {
                        (v * one - 0.5) as i64
                    } else {
                        (v * one + 0.5) as i64
                    }
                })
                .collect();
            Taps { lo, w, k }
        })
        .collect()
}

impl Planar {
    fn at(&self, ch: usize, y: usize, x: usize) -> f32 {
        self.data[(ch * self.h + y) * self.w + x]
    }

    /// Bilinear resize to `h` x `w`; horizontal pass first, as PIL does.
    /// With `quantize` (8-bit data) each pass rounds to 0..=255 in PIL's
    /// fixed point, so results equal Pillow's bit for bit.
    pub fn resize(&self, h: usize, w: usize, quantize: bool) -> Planar {
        let mut cur = self.clone();
        if w != cur.w {
            let k = coefficients(cur.w, w);
            let mut data = Vec::with_capacity(cur.c * cur.h * w);
            for row in cur.data.chunks_exact(cur.w) {
                data.extend(k.iter().map(|t| t.dot(&row[t.lo..], quantize)));
            }
            cur = Planar { w, data, ..cur };
        }
        if h != cur.h {
            let k = coefficients(cur.h, h);
            let mut data = Vec::with_capacity(cur.c * h * cur.w);
            for plane in cur.data.chunks_exact(cur.h * cur.w) {
                for t in &k {
                    t.rows(plane, cur.w, quantize, &mut data);
                }
            }
            cur = Planar { h, data, ..cur };
        }
        cur
    }

    /// The `h` x `w` window whose top-left corner is at (`top`, `left`);
    /// pixels outside the image are 0.
    pub fn crop(&self, top: isize, left: isize, h: usize, w: usize) -> Planar {
        if top == 0 && left == 0 && h == self.h && w == self.w {
            return self.clone();
        }
        let mut data = vec![0.0f32; self.c * h * w];
        for ch in 0..self.c {
            for y in 0..h {
                let sy = top + y as isize;
                if sy < 0 || sy >= self.h as isize {
                    continue;
                }
                for x in 0..w {
                    let sx = left + x as isize;
                    if sx >= 0 && sx < self.w as isize {
                        data[(ch * h + y) * w + x] = self.at(ch, sy as usize, sx as usize);
                    }
                }
            }
        }
        Planar {
            c: self.c,
            h,
            w,
            data,
        }
    }

    /// The centered `h` x `w` window (torchvision's offsets; zero padding
    /// when the window is larger than the image).
    pub fn center_crop(&self, h: usize, w: usize) -> Planar {
        let off = |size: usize, want: usize| -> isize {
            if want > size {
                -(((want - size) / 2) as isize)
            } else {
                ((size - want) as f64 / 2.0).round_ties_even() as isize
            }
        };
        self.crop(off(self.h, h), off(self.w, w), h, w)
    }

    /// Mirror left-right.
    pub fn flip_horizontal(&mut self) {
        for row in self.data.chunks_exact_mut(self.w) {
            row.reverse();
        }
    }

    /// RGB to one luma channel, L = 0.299 R + 0.587 G + 0.114 B; for 8-bit
    /// data in PIL's integer form (`convert("L")`).
    pub fn to_luma(&self, quantize: bool) -> Planar {
        let n = self.h * self.w;
        let (r, rest) = self.data.split_at(n);
        let (g, b) = rest.split_at(n);
        let data = (0..n)
            .map(|i| {
                if quantize {
                    let l =
                        (r[i] as i64 * 19595 + g[i] as i64 * 38470 + b[i] as i64 * 7471 + 0x8000)
                            >> 16;
                    l.clamp(0, 255) as f32
                } else {
                    0.299 * r[i] + 0.587 * g[i] + 0.114 * b[i]
                }
            })
            .collect();
        Planar {
            c: 1,
            h: self.h,
            w: self.w,
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_match_pil_formula() {
        // Upscaling 2 -> 4 is plain bilinear with half-pixel centers.
        let k = coefficients(2, 4);
        assert_eq!((k[0].lo, &k[0].w[..]), (0, &[1.0][..]));
        assert_eq!(k[0].k, vec![1 << PRECISION_BITS]);
        assert_eq!(k[1].lo, 0);
        assert!((k[1].w[0] - 0.75).abs() < 1e-12 && (k[1].w[1] - 0.25).abs() < 1e-12);
        // Shrinking 4 -> 2 widens the triangle to support 2 (antialiasing).
        let k = coefficients(4, 2);
        let expect = [0.75 / 1.75, 0.75 / 1.75, 0.25 / 1.75];
        assert_eq!(k[0].lo, 0);
        for (a, b) in k[0].w.iter().zip(expect) {
            assert!((a - b).abs() < 1e-12);
        }
    }

    #[test]
    fn crops_and_flips() {
        let img = Planar {
            c: 1,
            h: 3,
            w: 4,
            data: (0..12).map(|v| v as f32).collect(),
        };
        let c = img.center_crop(1, 2);
        assert_eq!(c.data, vec![5.0, 6.0]);
        let p = img.crop(-1, -1, 2, 2);
        assert_eq!(p.data, vec![0.0, 0.0, 0.0, 0.0]);
        let p = img.crop(2, 3, 2, 2);
        assert_eq!(p.data, vec![11.0, 0.0, 0.0, 0.0]);
        let mut f = img.clone();
        f.flip_horizontal();
        assert_eq!(&f.data[..4], &[3.0, 2.0, 1.0, 0.0]);
        let big = img.center_crop(5, 4);
        assert_eq!(&big.data[..4], &[0.0; 4]);
        assert_eq!(&big.data[4..8], &[0.0, 1.0, 2.0, 3.0]);
    }
}
