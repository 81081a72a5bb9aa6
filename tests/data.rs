//! Integration tests of the data layer on tiny data sets generated in a temp
//! folder: npz/npy (written here, stored and deflated), IDX (plain and
//! gzipped), PNG/JPEG folders; shapes, labels, preprocessing math (checked
//! against Pillow's output for a fixed image), deterministic shuffling and
//! augmentation, limit, lazy decoding, content hashes and every error case.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use amct::data::*;
use candle_core::{DType, Device};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("amct-data-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self, rel: &str) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    npy_raw(
        &format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}"),
        data,
    )
}

fn npy_raw(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut dict = dict.to_string();
    while !(10 + dict.len() + 1).is_multiple_of(64) {
        dict.push(' ');
    }
    dict.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    v.extend_from_slice(dict.as_bytes());
    v.extend_from_slice(data);
    v
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn i64s(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn write_npz(path: &Path, arrays: &[(&str, Vec<u8>)], deflate: bool) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, bytes) in arrays {
        z.start_file(format!("{name}.npy"), opts).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

fn idx_bytes(code: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, code, dims.len() as u8];
    dims.iter()
        .for_each(|d| v.extend_from_slice(&d.to_be_bytes()));
    v.extend_from_slice(data);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)))
        .save(path)
        .unwrap();
}

fn parse(s: &str) -> Result<DataConfig, toml::de::Error> {
    toml::from_str(s)
}

fn batches(ds: &dyn Dataset, cfg: &DataConfig, seed: u64, epoch: u64) -> Vec<Batch> {
    Batches::new(
        ds,
        BatchOptions::from_config(cfg, seed, epoch),
        &Device::Cpu,
    )
    .map(|b| b.unwrap())
    .collect()
}

fn err_text(r: Result<Box<dyn Dataset>, DataError>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn config_schema_defaults_and_validation() {
    let c = parse("format = \"images\"\npath = \"d\"\npreprocess = { resize = 256, center_crop = [224, 200] }").unwrap();
    assert_eq!(c.batch_size, 32);
    assert_eq!(
        (c.limit, c.shuffle, c.x_name(), c.y_name()),
        (None, false, "x", "y")
    );
    assert_eq!(c.preprocess.resize, Some(Size::Side(256)));
    assert_eq!(c.preprocess.center_crop, Some(Size::Hw([224, 200])));
    assert_eq!(
        (c.preprocess.layout, c.preprocess.channel_order),
        (Layout::Nchw, ChannelOrder::Rgb)
    );
    let e = parse("format = \"npz\"\npath = \"a\"\nbatchsize = 3")
        .unwrap_err()
        .to_string();
    assert!(e.contains("batchsize"), "{e}");
    let e = parse("format = \"npz\"\npath = \"a\"\npreprocess = { mean = [1], sdt = [2] }")
        .unwrap_err()
        .to_string();
    assert!(e.contains("sdt"), "{e}");
    let e = parse("format = \"csv\"\npath = \"a\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("csv") && e.contains("idx"), "{e}");
    assert!(matches!(
        "csv".parse::<Format>(),
        Err(DataError::UnknownFormat(_))
    ));
    let e = parse("format = \"images\"\npath = \"a\"\npreprocess = { resize = [1, 2, 3] }")
        .unwrap_err();
    assert!(e.to_string().contains("[h, w]"), "{e}");
    let bad = parse(
        "format = \"images\"\npath = \"a\"\nbatch_size = 0\nlabels = \"l\"\nx = \"a\"\n\
         preprocess = { mean = [1, 2], std = [0], grayscale = true, channel_order = \"bgr\" }",
    )
    .unwrap();
    let keys: Vec<String> = bad
        .validate()
        .unwrap_err()
        .into_iter()
        .map(|e| e.key)
        .collect();
    for k in [
        "batch_size",
        "labels",
        "x",
        "preprocess.mean",
        "preprocess.std",
        "preprocess.channel_order",
    ] {
        assert!(keys.iter().any(|x| x == k), "{k} not in {keys:?}");
    }
    let mut c = DataConfig::new(Format::Idx, "imgs.idx");
    c.labels = Some("/abs/labels.idx".into());
    c.resolve(Path::new("/recipes"));
    assert_eq!(c.path, PathBuf::from("/recipes/imgs.idx"));
    assert_eq!(c.labels, Some(PathBuf::from("/abs/labels.idx")));
    let e = err_text(open_dataset(&DataConfig { batch_size: 0, ..c }));
    assert!(e.contains("batch_size"), "{e}");
}

#[test]
fn npz_stored_and_deflated_with_labels() {
    let t = TempDir::new("npz");
    let x: Vec<f32> = (0..5 * 2 * 3).map(|v| v as f32).collect();
    let y = i64s(&[3, 1, 4, 1, 5]);
    for deflate in [false, true] {
        let p = t.path(&format!("d{deflate}.npz"));
        write_npz(
            &p,
            &[
                ("x", npy("<f4", &[5, 2, 3], &f32s(&x))),
                ("y", npy("<i8", &[5], &y)),
            ],
            deflate,
        );
        let mut cfg = DataConfig::new(Format::Npz, &p);
        cfg.batch_size = 2;
        cfg.preprocess.mean = Some(vec![1.0]);
        let ds = open_dataset(&cfg).unwrap();
        assert_eq!(
            (ds.len(), ds.sample_shape(), ds.has_labels()),
            (5, &[2usize, 3][..], true)
        );
        let s = ds.get(4).unwrap();
        assert_eq!(s.x, (24..30).map(|v| v as f32 - 1.0).collect::<Vec<_>>());
        assert_eq!(s.y, Some(5));
        let b = batches(ds.as_ref(), &cfg, 0, 0);
        assert_eq!(b.len(), 3);
        assert_eq!(b[0].x.dims(), &[2, 2, 3]);
        assert_eq!(b[2].x.dims(), &[1, 2, 3]);
        let yb = b[1].y.as_ref().unwrap();
        assert_eq!(yb.dtype(), DType::I64);
        assert_eq!(yb.to_vec1::<i64>().unwrap(), vec![4, 1]);
    }
}

#[test]
fn npz_and_npy_dtypes_scale_and_label_files() {
    let t = TempDir::new("dtypes");
    let p = t.path("u8.npz");
    write_npz(
        &p,
        &[("x", npy("|u1", &[2, 3], &[0, 51, 255, 1, 2, 3]))],
        false,
    );
    let ds = open_dataset(&DataConfig::new(Format::Npz, &p)).unwrap();
    assert!(!ds.has_labels());
    assert_eq!(ds.get(0).unwrap().x, vec![0.0, 0.2, 1.0]);
    let p = t.path("i8.npz");
    write_npz(
        &p,
        &[
            ("inputs", npy("|i1", &[2, 2], &[0xff, 2, 0x80, 4])),
            ("t", npy("|u1", &[2], &[7, 9])),
        ],
        true,
    );
    let mut cfg = DataConfig::new(Format::Npz, &p);
    (cfg.x, cfg.y) = (Some("inputs".into()), Some("t".into()));
    let ds = open_dataset(&cfg).unwrap();
    assert_eq!(
        ds.get(1).unwrap(),
        Sample {
            x: vec![-128.0, 4.0],
            y: Some(9)
        }
    );
    let x = t.path("x.npy");
    std::fs::write(
        &x,
        npy(
            "<f8",
            &[3, 1],
            &[1.5f64, 2.5, -3.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<_>>(),
        ),
    )
    .unwrap();
    let l = t.path("l.npy");
    std::fs::write(
        &l,
        npy(
            "<i4",
            &[3],
            &[0i32, 2, 1]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<_>>(),
        ),
    )
    .unwrap();
    let mut cfg = DataConfig::new(Format::Npy, &x);
    cfg.labels = Some(l);
    let ds = open_dataset(&cfg).unwrap();
    assert_eq!(
        ds.get(2).unwrap(),
        Sample {
            x: vec![-3.0],
            y: Some(1)
        }
    );
}

#[test]
fn npz_and_npy_errors_name_the_file() {
    let t = TempDir::new("npzerr");
    let p = t.path("noy.npz");
    write_npz(&p, &[("data", npy("<f4", &[1, 1], &f32s(&[1.0])))], false);
    let e = err_text(open_dataset(&DataConfig::new(Format::Npz, &p)));
    assert!(
        e.contains("noy.npz") && e.contains("'x'") && e.contains("data"),
        "{e}"
    );
    let p = t.path("mismatch.npz");
    write_npz(
        &p,
        &[
            ("x", npy("<f4", &[2, 1], &f32s(&[1.0, 2.0]))),
            ("y", npy("<i8", &[3], &i64s(&[0, 1, 2]))),
        ],
        true,
    );
    let e = err_text(open_dataset(&DataConfig::new(Format::Npz, &p)));
    assert!(
        e.contains("mismatch.npz") && e.contains("2 samples but 3 labels"),
        "{e}"
    );
    let mut cfg = DataConfig::new(Format::Npz, t.path("noy.npz"));
    (cfg.x, cfg.y) = (Some("data".into()), Some("labels".into()));
    let e = err_text(open_dataset(&cfg));
    assert!(e.contains("noy.npz") && e.contains("'labels'"), "{e}");
    let p = t.path("short.npy");
    std::fs::write(&p, npy("<f4", &[4, 2], &f32s(&[1.0; 7]))).unwrap();
    let e = err_text(open_dataset(&DataConfig::new(Format::Npy, &p)));
    assert!(e.contains("short.npy") && e.contains("truncated"), "{e}");
    let p = t.path("fortran.npy");
    let dict = "{'descr': '<f4', 'fortran_order': True, 'shape': (1, 1), }";
    std::fs::write(&p, npy_raw(dict, &f32s(&[1.0]))).unwrap();
    let e = err_text(open_dataset(&DataConfig::new(Format::Npy, &p)));
    assert!(e.contains("fortran.npy") && e.contains("Fortran"), "{e}");
    let p = t.path("notzip.npz");
    std::fs::write(&p, b"hello").unwrap();
    let e = err_text(open_dataset(&DataConfig::new(Format::Npz, &p)));
    assert!(e.contains("notzip.npz"), "{e}");
    let e = err_text(open_dataset(&DataConfig::new(
        Format::Npz,
        t.path("absent.npz"),
    )));
    assert!(e.contains("absent.npz") && e.contains("not found"), "{e}");
}

#[test]
fn idx_plain_and_gzipped() {
    let t = TempDir::new("idx");
    let pixels: Vec<u8> = (0..6 * 5 * 4).map(|v| (v * 2) as u8).collect();
    let labels = [9u8, 0, 3, 3, 1, 7];
    for zipped in [false, true] {
        let enc = |b: Vec<u8>| if zipped { gz(&b) } else { b };
        let (xi, yi) = (
            t.path(&format!("x{zipped}-ubyte")),
            t.path(&format!("y{zipped}-ubyte")),
        );
        std::fs::write(&xi, enc(idx_bytes(0x08, &[6, 5, 4], &pixels))).unwrap();
        std::fs::write(&yi, enc(idx_bytes(0x08, &[6], &labels))).unwrap();
        let mut cfg = DataConfig::new(Format::Idx, &xi);
        cfg.labels = Some(yi);
        let ds = open_dataset(&cfg).unwrap();
        assert_eq!((ds.len(), ds.sample_shape()), (6, &[1usize, 5, 4][..]));
        let s = ds.get(1).unwrap();
        assert_eq!(s.y, Some(0));
        assert_eq!(s.x[0], 40.0 / 255.0);
        cfg.preprocess.layout = Layout::Nhwc;
        assert_eq!(open_dataset(&cfg).unwrap().sample_shape(), &[5, 4, 1]);
        cfg.preprocess.flatten = true;
        cfg.preprocess.center_crop = Some(Size::Side(2));
        let ds = open_dataset(&cfg).unwrap();
        assert_eq!(ds.sample_shape(), &[4]);
        assert_eq!(
            ds.get(0).unwrap().x,
            [18.0f32, 20.0, 26.0, 28.0].map(|v| v / 255.0)
        );
    }
}

#[test]
fn idx_errors_name_the_file() {
    let t = TempDir::new("idxerr");
    let p = t.path("bad-magic");
    std::fs::write(&p, b"\x89PNG\r\n\x1a\n").unwrap();
    let e = err_text(open_dataset(&DataConfig::new(Format::Idx, &p)));
    assert!(
        e.contains("bad-magic") && e.contains("not an IDX file"),
        "{e}"
    );
    let p = t.path("short-ubyte.gz");
    std::fs::write(&p, gz(&idx_bytes(0x08, &[3, 2, 2], &[1; 11]))).unwrap();
    let e = err_text(open_dataset(&DataConfig::new(Format::Idx, &p)));
    assert!(
        e.contains("short-ubyte.gz") && e.contains("truncated"),
        "{e}"
    );
    let (x, y) = (t.path("x-ubyte"), t.path("y-ubyte"));
    std::fs::write(&x, idx_bytes(0x08, &[3, 2, 2], &[1; 12])).unwrap();
    std::fs::write(&y, idx_bytes(0x08, &[2], &[1, 2])).unwrap();
    let mut cfg = DataConfig::new(Format::Idx, &x);
    cfg.labels = Some(y);
    let e = err_text(open_dataset(&cfg));
    assert!(
        e.contains("y-ubyte") && e.contains("3 samples but 2 labels"),
        "{e}"
    );
    cfg.labels = Some(t.path("missing-labels"));
    let e = err_text(open_dataset(&cfg));
    assert!(
        e.contains("missing-labels") && e.contains("not found"),
        "{e}"
    );
}

/// A 5 x 7 RGB image with irregular values; Pillow 13 gave the references.
fn ref_image(x: u32, y: u32) -> [u8; 3] {
    [0, 1, 2].map(|c| ((y * 37 + x * 11 + c * 50 + x * y * 13) % 256) as u8)
}

const PIL_RESIZE_3X4: [u8; 36] = [
    25, 50, 81, 106, 93, 135, 134, 84, 155, 104, 101, 114, 75, 100, 131, 156, 141, 155, 110, 128,
    137, 67, 122, 101, 125, 150, 159, 102, 166, 154, 109, 124, 140, 96, 172, 151,
];
const PIL_GRAY: [u8; 35] = [
    41, 52, 63, 74, 85, 96, 107, 78, 102, 126, 150, 174, 169, 193, 115, 152, 189, 197, 83, 44, 81,
    152, 173, 72, 46, 96, 146, 196, 189, 72, 59, 122, 185, 68, 55,
];

#[test]
fn image_preprocessing_math() {
    let t = TempDir::new("math");
    png(&t.path("flat/a.png"), 7, 5, ref_image);
    let mut cfg = DataConfig::new(Format::Images, t.0.join("flat"));
    cfg.preprocess.scale = Some(1.0);
    cfg.preprocess.resize = Some(Size::Side(3));
    let ds = open_dataset(&cfg).unwrap();
    assert!(!ds.has_labels());
    assert_eq!(ds.sample_shape(), &[3, 3, 4]);
    assert_eq!(ds.get(0).unwrap().x, PIL_RESIZE_3X4.map(f32::from));
    cfg.preprocess = Preprocess {
        grayscale: true,
        scale: Some(1.0),
        ..Preprocess::default()
    };
    assert_eq!(
        open_dataset(&cfg).unwrap().get(0).unwrap().x,
        PIL_GRAY.map(f32::from)
    );
    // center crop 3 x 4 of 5 x 7: rows 1..4, columns 2..6 (torchvision's rounding).
    let (mean, std) = (vec![0.5, 0.25, 0.125], vec![0.5, 2.0, 4.0]);
    cfg.preprocess = Preprocess {
        center_crop: Some(Size::Hw([3, 4])),
        mean: Some(mean.clone()),
        std: Some(std.clone()),
        ..Preprocess::default()
    };
    let nchw = open_dataset(&cfg).unwrap().get(0).unwrap().x;
    let expect = |c: usize, y: u32, x: u32| {
        (f32::from(ref_image(x + 2, y + 1)[c]) / 255.0 - mean[c]) / std[c]
    };
    assert_eq!(nchw[0], expect(0, 0, 0));
    assert_eq!(nchw[12 + 4 + 3], expect(1, 1, 3));
    assert_eq!(nchw[24 + 8 + 1], expect(2, 2, 1));
    cfg.preprocess.layout = Layout::Nhwc;
    cfg.preprocess.channel_order = ChannelOrder::Bgr;
    let ds = open_dataset(&cfg).unwrap();
    assert_eq!(ds.sample_shape(), &[3, 4, 3]);
    let nhwc = ds.get(0).unwrap().x;
    // output channel 0 is blue, normalized with mean[0]/std[0]
    let b = |y: u32, x: u32| (f32::from(ref_image(x + 2, y + 1)[2]) / 255.0 - mean[0]) / std[0];
    assert_eq!(nhwc[(4 + 3) * 3], b(1, 3));
    assert_eq!(
        nhwc[(8 + 1) * 3 + 2],
        (f32::from(ref_image(3, 3)[0]) / 255.0 - mean[2]) / std[2]
    );
}

#[test]
fn image_folders_labels_jpeg_and_sizes() {
    let t = TempDir::new("folders");
    for (class, n) in [("dog", 2), ("cat", 3), ("emu", 0)] {
        std::fs::create_dir_all(t.0.join(class)).unwrap();
        for i in 0..n {
            png(&t.path(&format!("{class}/{i}.png")), 6, 4, |_, _| {
                [i as u8 * 10, 0, 0]
            });
        }
    }
    png(&t.path("dog/nested/z.png"), 6, 4, |_, _| [99, 0, 0]);
    std::fs::write(t.path("cat/notes.txt"), "ignored").unwrap();
    image::RgbImage::from_pixel(6, 4, image::Rgb([200, 100, 50]))
        .save(t.path("emu/e.jpg"))
        .unwrap();
    let mut cfg = DataConfig::new(Format::Images, &t.0);
    cfg.preprocess.scale = Some(1.0);
    let ds = open_dataset(&cfg).unwrap();
    assert_eq!(ds.class_names().unwrap(), ["cat", "dog", "emu"]);
    assert_eq!(ds.len(), 7);
    let ys: Vec<_> = (0..7).map(|i| ds.get(i).unwrap().y.unwrap()).collect();
    assert_eq!(ys, [0, 0, 0, 1, 1, 1, 2]);
    assert_eq!(ds.get(5).unwrap().x[0], 99.0);
    let jpeg = ds.get(6).unwrap().x;
    assert!(
        (jpeg[0] - 200.0).abs() < 4.0 && (jpeg[24] - 100.0).abs() < 4.0,
        "{jpeg:?}"
    );
    png(&t.path("cat/big.png"), 8, 4, |_, _| [1, 2, 3]);
    let ds = open_dataset(&cfg).unwrap();
    let e = (0..ds.len())
        .find_map(|i| ds.get(i).err())
        .unwrap()
        .to_string();
    assert!(e.contains("big.png") && e.contains("resize"), "{e}");
    cfg.preprocess.resize = Some(Size::Hw([2, 3]));
    let ds = open_dataset(&cfg).unwrap();
    assert!((0..ds.len()).all(|i| ds.get(i).unwrap().x.len() == 18));
}

#[test]
fn image_errors_name_the_file() {
    let t = TempDir::new("imgerr");
    let e = err_text(open_dataset(&DataConfig::new(
        Format::Images,
        t.0.join("nope"),
    )));
    assert!(e.contains("nope") && e.contains("not found"), "{e}");
    std::fs::create_dir_all(t.0.join("empty")).unwrap();
    let e = err_text(open_dataset(&DataConfig::new(
        Format::Images,
        t.0.join("empty"),
    )));
    assert!(e.contains("empty") && e.contains("no samples"), "{e}");
    png(&t.path("d/a.png"), 2, 2, |_, _| [0; 3]);
    std::fs::write(t.path("d/b.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let ds = open_dataset(&DataConfig::new(Format::Images, t.0.join("d"))).unwrap();
    let e = ds.get(1).unwrap_err().to_string();
    assert!(e.contains("b.png") && e.contains("decode"), "{e}");
    std::fs::write(t.path("d/0.jpg"), b"garbage").unwrap();
    let e = err_text(open_dataset(&DataConfig::new(
        Format::Images,
        t.0.join("d"),
    )));
    assert!(e.contains("0.jpg"), "{e}");
}

fn counting_npz(t: &TempDir, n: usize) -> DataConfig {
    let p = t.path("n.npz");
    let x: Vec<f32> = (0..n).map(|v| v as f32).collect();
    let y: Vec<i64> = (0..n as i64).collect();
    write_npz(
        &p,
        &[
            ("x", npy("<f4", &[n, 1], &f32s(&x))),
            ("y", npy("<i8", &[n], &i64s(&y))),
        ],
        false,
    );
    DataConfig::new(Format::Npz, p)
}

fn order(b: &[Batch]) -> Vec<usize> {
    b.iter().flat_map(|b| b.indices.clone()).collect()
}

#[test]
fn shuffle_is_deterministic_and_limit_comes_first() {
    let t = TempDir::new("shuffle");
    let mut cfg = counting_npz(&t, 50);
    cfg.batch_size = 8;
    cfg.shuffle = true;
    let ds = open_dataset(&cfg).unwrap();
    let e0 = batches(ds.as_ref(), &cfg, 7, 0);
    assert_eq!(order(&e0), order(&batches(ds.as_ref(), &cfg, 7, 0)));
    let e1 = order(&batches(ds.as_ref(), &cfg, 7, 1));
    assert_ne!(order(&e0), e1);
    assert_ne!(order(&e0), order(&batches(ds.as_ref(), &cfg, 8, 0)));
    for o in [order(&e0), e1] {
        let mut s = o.clone();
        s.sort_unstable();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
    }
    for b in &e0 {
        let x: Vec<f32> = b.x.flatten_all().unwrap().to_vec1().unwrap();
        let y: Vec<i64> = b.y.as_ref().unwrap().to_vec1().unwrap();
        assert_eq!(x, b.indices.iter().map(|&i| i as f32).collect::<Vec<_>>());
        assert_eq!(y, b.indices.iter().map(|&i| i as i64).collect::<Vec<_>>());
    }
    cfg.limit = Some(10);
    let ds = open_dataset(&cfg).unwrap();
    let o = order(&batches(ds.as_ref(), &cfg, 7, 0));
    assert_eq!(o.len(), 10);
    assert!(o.iter().all(|&i| i < 10) && o != (0..10).collect::<Vec<_>>());
    let opts = BatchOptions {
        drop_last: true,
        ..BatchOptions::from_config(&cfg, 7, 0)
    };
    let it = Batches::new(ds.as_ref(), opts, &Device::Cpu);
    assert_eq!(it.num_batches(), 1);
    assert_eq!(it.count(), 1);
}

/// Wraps a data set and counts `get` calls.
struct Counting<'a>(&'a dyn Dataset, AtomicUsize);

impl Dataset for Counting<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn sample_shape(&self) -> &[usize] {
        self.0.sample_shape()
    }
    fn has_labels(&self) -> bool {
        self.0.has_labels()
    }
    fn get(&self, i: usize) -> Result<Sample, DataError> {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.get(i)
    }
}

#[test]
fn image_batches_stream_and_decode_lazily() {
    let t = TempDir::new("stream");
    for i in 0..1000u32 {
        png(&t.path(&format!("all/{i:04}.png")), 4, 3, |x, y| {
            [(i % 256) as u8, x as u8, y as u8]
        });
    }
    let mut cfg = DataConfig::new(Format::Images, t.0.join("all"));
    cfg.batch_size = 16;
    let ds = open_dataset(&cfg).unwrap();
    // Damage the last image after opening: only reading it may fail.
    std::fs::write(t.path("all/0999.png"), b"broken").unwrap();
    let counting = Counting(ds.as_ref(), AtomicUsize::new(0));
    let mut it = Batches::new(
        &counting,
        BatchOptions::from_config(&cfg, 0, 0),
        &Device::Cpu,
    );
    assert_eq!(it.num_batches(), 63);
    let b = it.next().unwrap().unwrap();
    assert_eq!(b.x.dims(), &[16, 3, 3, 4]);
    assert!(b.y.is_none());
    assert_eq!(counting.1.load(Ordering::SeqCst), 16);
    let last = it.last().unwrap();
    assert!(last.unwrap_err().to_string().contains("0999.png"));
}

#[test]
fn augmentation_is_deterministic_and_only_on_request() {
    let t = TempDir::new("augment");
    for i in 0..6u32 {
        png(&t.path(&format!("c/k/{i}.png")), 8, 8, |x, y| {
            [(x * 30) as u8, (y * 30) as u8, i as u8]
        });
    }
    let mut cfg = parse("format = \"images\"\npath = \"c\"\nbatch_size = 3\naugment = { random_crop = { padding = 2 }, horizontal_flip = true }").unwrap();
    cfg.resolve(&t.0);
    let ds = open_dataset(&cfg).unwrap();
    let run = |seed, epoch, augment| -> Vec<Vec<f32>> {
        let opts = BatchOptions {
            augment,
            ..BatchOptions::from_config(&cfg, seed, epoch)
        };
        let b: Vec<Batch> = Batches::new(ds.as_ref(), opts, &Device::Cpu)
            .map(|b| b.unwrap())
            .collect();
        b.iter()
            .flat_map(|b| {
                b.x.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .chunks(192)
                    .map(<[f32]>::to_vec)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let plain: Vec<Vec<f32>> = (0..6).map(|i| ds.get(i).unwrap().x).collect();
    assert_eq!(run(1, 0, false), plain);
    let a = run(1, 0, true);
    assert_eq!(a, run(1, 0, true));
    assert_ne!(a, run(1, 1, true));
    assert_ne!(a, plain);
    for (s, p) in a.iter().zip(&plain) {
        assert_eq!(s.len(), p.len());
        // blue is constant per image, so it survives crop and flip except in the padding
        assert!(s[128..].iter().all(|&v| v == 0.0 || v == p[128]));
    }
}

#[test]
fn content_hash_tracks_bytes_and_settings_not_location() {
    let (a, b) = (TempDir::new("hash-a"), TempDir::new("hash-b"));
    for t in [&a, &b] {
        for (n, v) in [("x/1.png", 1u8), ("y/2.png", 2)] {
            png(&t.path(n), 3, 3, |_, _| [v; 3]);
        }
    }
    let cfg = |t: &TempDir| DataConfig::new(Format::Images, &t.0);
    let ha = content_hash(&cfg(&a)).unwrap();
    assert_eq!(ha.len(), 64);
    assert_eq!(ha, content_hash(&cfg(&b)).unwrap());
    let mut c = cfg(&a);
    c.preprocess.resize = Some(Size::Side(2));
    assert_ne!(ha, content_hash(&c).unwrap());
    c = cfg(&a);
    c.limit = Some(1);
    let limited = content_hash(&c).unwrap();
    png(&b.path("y/2.png"), 3, 3, |_, _| [3; 3]);
    assert_ne!(ha, content_hash(&cfg(&b)).unwrap());
    let mut cb = cfg(&b);
    cb.limit = Some(1);
    assert_eq!(limited, content_hash(&cb).unwrap());
    let e = content_hash(&DataConfig::new(Format::Idx, a.0.join("gone")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("gone"), "{e}");
}
