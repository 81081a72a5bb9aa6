//! Image folders: `root/CLASS/**/*.{jpg,jpeg,png}` with labels by sorted
//! class folder name (empty class folders keep their index, hidden entries
//! are skipped), or a flat `root/*.{jpg,jpeg,png}` without labels. Only the
//! file list is kept; each image is decoded (to RGB, content-sniffed) when
//! its sample is asked for.

use std::path::{Path, PathBuf};

use super::config::DataConfig;
use super::dataset::{Raw, Source};
use super::error::DataError;
use super::preprocess::SourceInfo;

/// The samples of an image folder in order, and the class names if labelled.
pub(crate) struct Listing {
    pub files: Vec<(PathBuf, Option<i64>)>,
    pub classes: Option<Vec<String>>,
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// Entries of `dir` sorted by name, hidden ones skipped: (subfolders, images).
fn entries(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), DataError> {
    let rd = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut paths = Vec::new();
    for e in rd {
        paths.push(e.map_err(|e| DataError::io(dir, e))?.path());
    }
    paths.sort();
    let (dirs, files): (Vec<_>, Vec<_>) = paths
        .into_iter()
        .filter(|p| !is_hidden(p))
        .partition(|p| p.is_dir());
    Ok((dirs, files.into_iter().filter(|p| is_image(p)).collect()))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let (dirs, files) = entries(dir)?;
    out.extend(files);
    for d in dirs {
        walk(&d, out)?;
    }
    Ok(())
}

/// Lists the samples of the folder `root`.
pub(crate) fn list(root: &Path) -> Result<Listing, DataError> {
    if !root.exists() {
        return Err(DataError::NotFound {
            path: root.to_path_buf(),
            kind: "folder",
        });
    }
    if !root.is_dir() {
        return Err(DataError::shape(
            root,
            "format \"images\" needs a folder, this is a file",
        ));
    }
    let (dirs, top) = entries(root)?;
    let mut per_class = Vec::with_capacity(dirs.len());
    for d in &dirs {
        let mut files = Vec::new();
        walk(d, &mut files)?;
        per_class.push(files);
    }
    if per_class.iter().all(Vec::is_empty) {
        let files = top.into_iter().map(|p| (p, None)).collect();
        return Ok(Listing {
            files,
            classes: None,
        });
    }
    if let Some(stray) = top.first() {
        return Err(DataError::shape(
            stray,
            "image at the top level of a folder with class subfolders; move it into a class folder",
        ));
    }
    let classes = dirs
        .iter()
        .map(|d| {
            d.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    let files = per_class
        .into_iter()
        .enumerate()
        .flat_map(|(c, fs)| fs.into_iter().map(move |f| (f, Some(c as i64))))
        .collect();
    Ok(Listing {
        files,
        classes: Some(classes),
    })
}

fn decode_error(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Decode {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn reader(path: &Path) -> Result<image::ImageReader<std::io::BufReader<std::fs::File>>, DataError> {
    let file = super::error::open_file(path)?;
    image::ImageReader::new(std::io::BufReader::new(file))
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))
}

pub(crate) struct ImageSource {
    info: SourceInfo,
    listing: Listing,
}

/// `format = "images"`.
pub(crate) fn open(cfg: &DataConfig) -> Result<ImageSource, DataError> {
    let listing = list(&cfg.path)?;
    let mut first_shape = vec![3, 0, 0];
    if let Some((first, _)) = listing.files.first() {
        let (w, h) = reader(first)?
            .into_dimensions()
            .map_err(|e| decode_error(first, e))?;
        first_shape = vec![3, h as usize, w as usize];
    }
    let info = SourceInfo {
        first_shape,
        planar: true,
        add_channel: true,
        is_u8: true,
    };
    Ok(ImageSource { info, listing })
}

impl Source for ImageSource {
    fn info(&self) -> &SourceInfo {
        &self.info
    }
    fn len(&self) -> usize {
        self.listing.files.len()
    }
    fn has_labels(&self) -> bool {
        self.listing.classes.is_some()
    }
    fn class_names(&self) -> Option<&[String]> {
        self.listing.classes.as_deref()
    }
    fn read(&self, i: usize) -> Result<Raw, DataError> {
        let (path, y) = self.listing.files.get(i).ok_or(DataError::OutOfRange {
            index: i,
            len: self.len(),
        })?;
        let img = reader(path)?
            .decode()
            .map_err(|e| decode_error(path, e))?
            .into_rgb8();
        let (w, h) = (img.width() as usize, img.height() as usize);
        let mut data = vec![0.0f32; 3 * h * w];
        for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
            for (c, &v) in px.iter().enumerate() {
                data[c * h * w + i] = f32::from(v);
            }
        }
        Ok(Raw {
            shape: vec![3, h, w],
            data,
            y: *y,
        })
    }
    fn origin(&self, i: usize) -> PathBuf {
        self.listing
            .files
            .get(i)
            .map(|f| f.0.clone())
            .unwrap_or_default()
    }
}
