//! The preprocessing pipeline of one data set, built once from the config
//! and the source's first sample: grayscale, resize, center crop, optional
//! augmentation, scale, channel order, mean/std, layout, flatten. Checks at
//! build time that each requested step fits the samples (naming the key).

use super::config::{Augment, ChannelOrder, DataConfig, Layout, Size};
use super::error::DataError;
use super::resize::Planar;
use super::rng::SplitMix64;

/// How the source's samples are read as images.
#[derive(Debug, Clone, Copy)]
enum View {
    /// `[c, h, w]`, `[h, w, c]` (stored_hwc) or `[h, w]` (c = 1).
    Image {
        stored_hwc: bool,
        rank2: bool,
        channel_axis: bool,
    },
    /// Any other shape: only scale, a single mean/std value and flatten apply.
    Flat,
}

/// What a source says about its samples.
pub(crate) struct SourceInfo {
    /// Shape of sample 0 as the source returns it.
    pub first_shape: Vec<usize>,
    /// Samples are CHW images already (image folders).
    pub planar: bool,
    /// `[h, w]` samples gain a channel axis (IDX).
    pub add_channel: bool,
    /// 8-bit data: default scale 1/255; resize and grayscale round like PIL.
    pub is_u8: bool,
}

pub(crate) struct Pipeline {
    view: View,
    grayscale: bool,
    resize: Option<Size>,
    crop: Option<[usize; 2]>,
    augment: Option<Augment>,
    quantize: bool,
    /// `x * scale / divisor`: the default for 8-bit data divides by 255
    /// (as torchvision's ToTensor does) instead of multiplying by 1/255.
    scale: f32,
    divisor: f32,
    bgr: bool,
    mean: Vec<f32>,
    std: Vec<f32>,
    nhwc: bool,
    flatten: bool,
    /// The shape every output sample must have.
    pub out_shape: Vec<usize>,
}

fn resize_dims(r: Size, h: usize, w: usize) -> (usize, usize) {
    match r {
        Size::Hw([rh, rw]) => (rh, rw),
        Size::Side(n) if h <= w => (n, (n * w / h.max(1)).max(1)),
        Size::Side(n) => ((n * h / w.max(1)).max(1), n),
    }
}

impl Pipeline {
    pub fn new(cfg: &DataConfig, info: &SourceInfo) -> Result<Self, DataError> {
        let p = &cfg.preprocess;
        let s = &info.first_shape;
        let nhwc = p.layout == Layout::Nhwc;
        if s.contains(&0) {
            return Err(DataError::shape(
                &cfg.path,
                format!("samples of shape {s:?} hold no values"),
            ));
        }
        let view = match s.len() {
            _ if info.planar => View::Image {
                stored_hwc: false,
                rank2: false,
                channel_axis: true,
            },
            2 => View::Image {
                stored_hwc: false,
                rank2: true,
                channel_axis: info.add_channel,
            },
            3 => View::Image {
                stored_hwc: nhwc,
                rank2: false,
                channel_axis: true,
            },
            _ => View::Flat,
        };
        let c = match view {
            View::Image { rank2: true, .. } => 1,
            View::Image {
                stored_hwc: true, ..
            } => s[2],
            View::Image { .. } => s[0],
            View::Flat => 1,
        };
        let bgr = p.channel_order == ChannelOrder::Bgr;
        let aug = cfg
            .augment
            .filter(|a| a.random_crop.is_some() || a.horizontal_flip);
        if let View::Flat = view {
            let image_only = [
                ("preprocess.resize", p.resize.is_some()),
                ("preprocess.center_crop", p.center_crop.is_some()),
                ("preprocess.grayscale", p.grayscale),
                ("preprocess.channel_order", bgr),
                ("augment", aug.is_some()),
            ];
            if let Some((key, _)) = image_only.iter().find(|(_, on)| *on) {
                return Err(DataError::config(
                    key,
                    format!("needs image samples ([h, w], [c, h, w] or [h, w, c]); samples have shape {s:?}"),
                ));
            }
        }
        if p.grayscale && c != 1 && c != 3 {
            return Err(DataError::config(
                "preprocess.grayscale",
                format!("needs 1 or 3 channels, samples have {c}"),
            ));
        }
        let c_out = if p.grayscale { 1 } else { c };
        if bgr && c_out != 3 {
            return Err(DataError::config(
                "preprocess.channel_order",
                format!("\"bgr\" needs 3 channels, samples have {c_out}"),
            ));
        }
        let per_channel = |key: &str, v: &Option<Vec<f32>>, default: f32| match v {
            None => Ok(vec![default; c_out]),
            Some(v) if v.len() == 1 => Ok(vec![v[0]; c_out]),
            Some(v) if v.len() == c_out && matches!(view, View::Image { .. }) => Ok(v.clone()),
            Some(v) => Err(DataError::config(
                key,
                format!("has {} values but samples have {c_out} channel(s)", v.len()),
            )),
        };
        let mean = per_channel("preprocess.mean", &p.mean, 0.0)?;
        let std = per_channel("preprocess.std", &p.std, 1.0)?;
        let mut pipe = Pipeline {
            view,
            grayscale: p.grayscale,
            resize: p.resize,
            crop: p.center_crop.map(Size::hw),
            augment: aug,
            quantize: info.is_u8,
            scale: p.scale.unwrap_or(1.0),
            divisor: if p.scale.is_none() && info.is_u8 {
                255.0
            } else {
                1.0
            },
            bgr,
            mean,
            std,
            nhwc,
            flatten: p.flatten,
            out_shape: Vec::new(),
        };
        pipe.out_shape = match view {
            View::Flat => s.clone(),
            View::Image {
                stored_hwc, rank2, ..
            } => {
                let (h, w) = match (rank2, stored_hwc) {
                    (true, _) => (s[0], s[1]),
                    (false, true) => (s[0], s[1]),
                    (false, false) => (s[1], s[2]),
                };
                let (h, w) = pipe.geometry(h, w);
                pipe.image_shape(c_out, h, w)
            }
        };
        if pipe.flatten {
            pipe.out_shape = vec![pipe.out_shape.iter().product()];
        }
        Ok(pipe)
    }

    /// Height and width after resize and crop.
    fn geometry(&self, h: usize, w: usize) -> (usize, usize) {
        let (h, w) = self.resize.map_or((h, w), |r| resize_dims(r, h, w));
        self.crop.map_or((h, w), |[ch, cw]| (ch, cw))
    }

    fn image_shape(&self, c: usize, h: usize, w: usize) -> Vec<usize> {
        match self.view {
            View::Image {
                channel_axis: false,
                ..
            } => vec![h, w],
            _ if self.nhwc => vec![h, w, c],
            _ => vec![c, h, w],
        }
    }

    /// Preprocesses one raw sample; `aug_seed` turns on the configured
    /// augmentation. Returns the values and their shape (which the caller
    /// checks against `out_shape`).
    pub fn apply(
        &self,
        shape: &[usize],
        data: Vec<f32>,
        aug_seed: Option<u64>,
    ) -> (Vec<f32>, Vec<usize>) {
        let View::Image {
            stored_hwc, rank2, ..
        } = self.view
        else {
            let (m, s) = (self.mean[0], self.std[0]);
            let x = data
                .into_iter()
                .map(|v| (v * self.scale / self.divisor - m) / s)
                .collect::<Vec<_>>();
            let shape = if self.flatten {
                vec![x.len()]
            } else {
                shape.to_vec()
            };
            return (x, shape);
        };
        let mut img = match (rank2, stored_hwc) {
            (true, _) => Planar {
                c: 1,
                h: shape[0],
                w: shape[1],
                data,
            },
            (false, false) => Planar {
                c: shape[0],
                h: shape[1],
                w: shape[2],
                data,
            },
            (false, true) => hwc_to_planar(shape[0], shape[1], shape[2], &data),
        };
        if self.grayscale && img.c == 3 {
            img = img.to_luma(self.quantize);
        }
        if let Some(r) = self.resize {
            let (h, w) = resize_dims(r, img.h, img.w);
            if (h, w) != (img.h, img.w) {
                img = img.resize(h, w, self.quantize);
            }
        }
        if let Some([h, w]) = self.crop {
            img = img.center_crop(h, w);
        }
        if let (Some(a), Some(seed)) = (self.augment, aug_seed) {
            let mut rng = SplitMix64::new(seed);
            if let Some(rc) = a.random_crop {
                let p = rc.padding as isize;
                let top = rng.below(2 * rc.padding as u64 + 1) as isize - p;
                let left = rng.below(2 * rc.padding as u64 + 1) as isize - p;
                img = img.crop(top, left, img.h, img.w);
            }
            if a.horizontal_flip && rng.next_u64() >> 63 == 1 {
                img.flip_horizontal();
            }
        }
        let (c, h, w) = (img.c, img.h, img.w);
        let plane = h * w;
        let mut out = vec![0.0f32; c * plane];
        for oc in 0..c {
            let ic = if self.bgr { c - 1 - oc } else { oc };
            let (m, s) = (
                self.mean.get(oc).copied().unwrap_or(0.0),
                self.std.get(oc).copied().unwrap_or(1.0),
            );
            for (i, &v) in img.data[ic * plane..(ic + 1) * plane].iter().enumerate() {
                let idx = if self.nhwc {
                    i * c + oc
                } else {
                    oc * plane + i
                };
                out[idx] = (v * self.scale / self.divisor - m) / s;
            }
        }
        let shape = if self.flatten {
            vec![out.len()]
        } else {
            self.image_shape(c, h, w)
        };
        (out, shape)
    }
}

fn hwc_to_planar(h: usize, w: usize, c: usize, data: &[f32]) -> Planar {
    let mut out = vec![0.0f32; data.len()];
    for (i, px) in data.chunks_exact(c).enumerate() {
        for (ch, &v) in px.iter().enumerate() {
            out[ch * h * w + i] = v;
        }
    }
    Planar { c, h, w, data: out }
}
