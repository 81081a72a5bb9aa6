//! The schema of a recipe's `[data.NAME]` table (`DataConfig`), its defaults,
//! path resolution against the recipe's directory, and validation that names
//! the offending key. Unknown keys are rejected by serde.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::FieldError;

/// How the files of a data set are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A numpy `.npz` archive with arrays `x` and optional `y`.
    Npz,
    /// A single `.npy` array of samples (labels from `labels`).
    Npy,
    /// A folder of JPEG/PNG images: class subfolders, or flat and unlabeled.
    Images,
    /// IDX files as used by MNIST/Fashion-MNIST, optionally gzipped.
    Idx,
}

impl std::str::FromStr for Format {
    type Err = super::DataError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "npz" => Ok(Format::Npz),
            "npy" => Ok(Format::Npy),
            "images" => Ok(Format::Images),
            "idx" => Ok(Format::Idx),
            other => Err(super::DataError::UnknownFormat(other.to_string())),
        }
    }
}

/// Channel order of the samples handed to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    #[default]
    Rgb,
    Bgr,
}

/// Memory layout of one sample (the batch axis comes first in both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    #[default]
    Nchw,
    Nhwc,
}

/// `N` or `[h, w]` in the recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Size {
    /// For `resize`: the shorter side becomes N (aspect kept); for crops: N x N.
    Side(usize),
    /// Exactly `[h, w]`.
    Hw([usize; 2]),
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Size;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a positive integer N or a pair [h, w]")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Size, E> {
                usize::try_from(v)
                    .map(Size::Side)
                    .map_err(|_| E::custom(format!("expected a size >= 0, found {v}")))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Size, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(-1))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Size, A::Error> {
                let mut v: Vec<usize> = Vec::new();
                while let Some(x) = a.next_element::<usize>()? {
                    v.push(x);
                }
                match v.as_slice() {
                    [h, w] => Ok(Size::Hw([*h, *w])),
                    _ => Err(serde::de::Error::custom(format!(
                        "expected [h, w], found {} values",
                        v.len()
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Size {
    /// `[h, w]` for a crop.
    pub fn hw(self) -> [usize; 2] {
        match self {
            Size::Side(n) => [n, n],
            Size::Hw(hw) => hw,
        }
    }
    fn is_positive(self) -> bool {
        self.hw().iter().all(|&v| v > 0)
    }
}

/// `preprocess = { ... }`, applied in this order: grayscale, resize,
/// center_crop, (augmentation), scale, channel_order, mean/std, layout,
/// flatten. `mean`/`std` are given in the output channel order.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Bilinear (antialiased when shrinking, like PIL); N: shorter side to N.
    pub resize: Option<Size>,
    pub center_crop: Option<Size>,
    /// Multiplier; default 1/255 for 8-bit data (images, IDX, u8 arrays), else 1.
    pub scale: Option<f32>,
    /// Subtracted per channel after scaling (one value or one per channel).
    pub mean: Option<Vec<f32>>,
    /// Divides per channel after the mean is subtracted.
    pub std: Option<Vec<f32>>,
    #[serde(default)]
    pub channel_order: ChannelOrder,
    /// Output layout; for npz/npy also the layout the array is stored in.
    #[serde(default)]
    pub layout: Layout,
    /// Convert RGB to one luma channel (ITU-R 601, as PIL's "L").
    #[serde(default)]
    pub grayscale: bool,
    /// Flatten each sample to one dimension (for MLPs).
    #[serde(default)]
    pub flatten: bool,
}

/// `random_crop = { padding = P }`: pad with zeros, crop back at a random offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RandomCrop {
    pub padding: usize,
}

/// `augment = { ... }`: used only by consumers that ask for augmented batches
/// (training); deterministic from the recipe seed, the epoch and the index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Augment {
    pub random_crop: Option<RandomCrop>,
    /// Flip left-right with probability 1/2.
    #[serde(default)]
    pub horizontal_flip: bool,
}

/// One `[data.NAME]` table.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub format: Format,
    /// The file or folder; relative paths are resolved by [`DataConfig::resolve`].
    pub path: PathBuf,
    /// A second file of labels: the IDX labels file, or a `.npy` of labels.
    pub labels: Option<PathBuf>,
    /// npz array of samples (default "x").
    pub x: Option<String>,
    /// npz array of labels (default "y"; optional unless given explicitly).
    pub y: Option<String>,
    #[serde(default)]
    pub preprocess: Preprocess,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Use only the first N samples (applied before shuffling).
    pub limit: Option<usize>,
    /// Shuffle each epoch, seeded by the recipe seed and the epoch.
    #[serde(default)]
    pub shuffle: bool,
    pub augment: Option<Augment>,
}

fn default_batch_size() -> usize {
    32
}

impl DataConfig {
    /// A config with defaults for everything but the format and path.
    pub fn new(format: Format, path: impl Into<PathBuf>) -> Self {
        DataConfig {
            format,
            path: path.into(),
            labels: None,
            x: None,
            y: None,
            preprocess: Preprocess::default(),
            batch_size: default_batch_size(),
            limit: None,
            shuffle: false,
            augment: None,
        }
    }

    /// Makes relative `path` and `labels` relative to `base` (the recipe's folder).
    pub fn resolve(&mut self, base: &Path) {
        if self.path.is_relative() {
            self.path = base.join(&self.path);
        }
        if let Some(l) = &self.labels {
            if l.is_relative() {
                self.labels = Some(base.join(l));
            }
        }
    }

    /// Name of the npz sample array.
    pub fn x_name(&self) -> &str {
        self.x.as_deref().unwrap_or("x")
    }

    /// Name of the npz label array.
    pub fn y_name(&self) -> &str {
        self.y.as_deref().unwrap_or("y")
    }

    /// Checks values that serde cannot; each error names its key.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        let mut err = |k: &str, m: String| errs.push(FieldError::new(k, m));
        if self.path.as_os_str().is_empty() {
            err("path", "must not be empty".into());
        }
        if self.batch_size == 0 {
            err("batch_size", "must be at least 1".into());
        }
        if self.limit == Some(0) {
            err("limit", "must be at least 1".into());
        }
        let npz = self.format == Format::Npz;
        for (key, set) in [("x", self.x.is_some()), ("y", self.y.is_some())] {
            if set && !npz {
                err(key, "only applies to format = \"npz\"".into());
            }
        }
        if self.format == Format::Images && self.labels.is_some() {
            err(
                "labels",
                "image folders take labels from class subfolders".into(),
            );
        }
        if self.y.is_some() && self.labels.is_some() {
            err(
                "labels",
                "give either `y` (an npz array) or `labels`, not both".into(),
            );
        }
        let p = &self.preprocess;
        for (key, size) in [
            ("preprocess.resize", p.resize),
            ("preprocess.center_crop", p.center_crop),
        ] {
            if size.is_some_and(|s| !s.is_positive()) {
                err(key, "sizes must be at least 1".into());
            }
        }
        if p.scale.is_some_and(|s| !s.is_finite() || s == 0.0) {
            err("preprocess.scale", "must be finite and non-zero".into());
        }
        let channels: Option<usize> = match (self.format, p.grayscale) {
            (Format::Images, false) => Some(3),
            (_, true) => Some(1),
            _ => None,
        };
        for (key, v) in [("preprocess.mean", &p.mean), ("preprocess.std", &p.std)] {
            let Some(v) = v else { continue };
            if v.is_empty() || v.iter().any(|x| !x.is_finite()) {
                err(key, "needs one or more finite values".into());
            } else if let Some(c) = channels.filter(|&c| v.len() != 1 && v.len() != c) {
                err(key, format!("has {} values for {c} channel(s)", v.len()));
            }
        }
        if p.std.as_ref().is_some_and(|s| s.contains(&0.0)) {
            err("preprocess.std", "must not contain 0".into());
        }
        if p.channel_order == ChannelOrder::Bgr && p.grayscale {
            err(
                "preprocess.channel_order",
                "\"bgr\" needs 3 channels, not grayscale".into(),
            );
        }
        if let Some(rc) = self.augment.and_then(|a| a.random_crop) {
            if rc.padding == 0 {
                err("augment.random_crop.padding", "must be at least 1".into());
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}
