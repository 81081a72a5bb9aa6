//! The arithmetic of batch-norm folding, in f64 on flattened row-major data.
//!
//! Inference batch norm is the per-channel affine map `y = s·x + t` with
//! `s = scale / sqrt(var + eps)` and `t = bias - mean·s`. Folding it after a
//! layer scales the layer's weights along the output channel and maps its
//! bias `b` to `s·b + t`; folding it before a convolution scales the weights
//! along the input channel and adds `Σ W·t` to the bias (exact only when the
//! convolution pads nothing). Every function checks the sizes it is given and
//! says what disagrees instead of panicking.

use crate::graph::tensor::numel_of;

/// Per-channel affine form of a BatchNormalization.
#[derive(Clone, Debug)]
pub struct Affine {
    pub s: Vec<f64>,
    pub t: Vec<f64>,
}

impl Affine {
    pub fn from_bn(
        scale: &[f64],
        bias: &[f64],
        mean: &[f64],
        var: &[f64],
        eps: f64,
    ) -> Result<Self, String> {
        let c = scale.len();
        if bias.len() != c || mean.len() != c || var.len() != c {
            return Err(format!(
                "scale/bias/mean/var have {}/{}/{}/{} elements (must be equal)",
                c,
                bias.len(),
                mean.len(),
                var.len()
            ));
        }
        let s: Vec<f64> = (0..c).map(|i| scale[i] / (var[i] + eps).sqrt()).collect();
        let t = (0..c).map(|i| bias[i] - mean[i] * s[i]).collect();
        Ok(Affine { s, t })
    }

    pub fn channels(&self) -> usize {
        self.s.len()
    }

    /// `s·b + t`, with `b = 0` when absent.
    fn map_bias(&self, b: Option<&[f64]>) -> Result<Vec<f64>, String> {
        match b {
            Some(b) if b.len() != self.channels() => Err(format!(
                "the bias has {} elements for {} channels",
                b.len(),
                self.channels()
            )),
            Some(b) => Ok((0..b.len()).map(|i| self.s[i] * b[i] + self.t[i]).collect()),
            None => Ok(self.t.clone()),
        }
    }
}

/// Folded weight and bias; `bias_dims` is set when the bias is not `[C]`
/// (a Gemm's broadcast C).
#[derive(Clone, Debug)]
pub struct Rewritten {
    pub weight: Vec<f64>,
    pub bias: Vec<f64>,
    pub bias_dims: Option<Vec<i64>>,
}

impl Rewritten {
    fn new(weight: Vec<f64>, bias: Vec<f64>) -> Self {
        Rewritten {
            weight,
            bias,
            bias_dims: None,
        }
    }
}

fn size(dims: &[i64], len: usize) -> Result<(), String> {
    match numel_of(dims) {
        Some(n) if n == len => Ok(()),
        _ => Err(format!("weight dims {dims:?} do not match {len} elements")),
    }
}

fn channels_match(what: &str, have: usize, bn: &Affine) -> Result<(), String> {
    if have == bn.channels() && have > 0 {
        Ok(())
    } else {
        Err(format!(
            "{what} has {have} channels but the BatchNormalization has {}",
            bn.channels()
        ))
    }
}

/// Conv weight `[Cout, Cin/g, k...]` followed by BN: returns (weight, bias).
pub fn after_conv(
    w: &[f64],
    dims: &[i64],
    b: Option<&[f64]>,
    bn: &Affine,
) -> Result<Rewritten, String> {
    size(dims, w.len())?;
    let cout = dims.first().copied().unwrap_or(0) as usize;
    channels_match("the weight", cout, bn)?;
    let per = w.len() / cout;
    let w2 = w
        .iter()
        .enumerate()
        .map(|(i, v)| v * bn.s[i / per])
        .collect();
    Ok(Rewritten::new(w2, bn.map_bias(b)?))
}

/// ConvTranspose weight `[Cin, Cout/g, k...]` followed by BN: output channel
/// of element `[i, j, ..]` is `(i / (Cin/g))·(Cout/g) + j`.
pub fn after_conv_transpose(
    w: &[f64],
    dims: &[i64],
    group: usize,
    b: Option<&[f64]>,
    bn: &Affine,
) -> Result<Rewritten, String> {
    size(dims, w.len())?;
    if dims.len() < 2 || group == 0 || !(dims[0] as usize).is_multiple_of(group) {
        return Err(format!("weight dims {dims:?} do not fit group={group}"));
    }
    let (cin, cout_g) = (dims[0] as usize, dims[1] as usize);
    channels_match("the weight", cout_g * group, bn)?;
    let k = w.len() / (cin * cout_g).max(1);
    let cin_g = cin / group;
    let w2 = w
        .iter()
        .enumerate()
        .map(|(idx, v)| {
            let (i, j) = (idx / (cout_g * k), (idx / k) % cout_g);
            v * bn.s[(i / cin_g) * cout_g + j]
        })
        .collect();
    Ok(Rewritten::new(w2, bn.map_bias(b)?))
}

/// Gemm `alpha·A'·B' + beta·C` followed by BN on its `[M, N]` output.
/// Scales the columns of `B'` (`B` is `[K, N]`, or `[N, K]` with transB)
/// and returns B and C for `beta = 1`: `C' = s·beta·C + t`
/// broadcast to `C`'s dims and `[N]`.
pub fn after_gemm(
    bmat: &[f64],
    bdims: &[i64],
    trans_b: bool,
    c: Option<(&[f64], &[i64])>,
    beta: f64,
    bn: &Affine,
) -> Result<Rewritten, String> {
    size(bdims, bmat.len())?;
    if bdims.len() != 2 {
        return Err(format!("B has dims {bdims:?}, expected 2-D"));
    }
    let n = if trans_b { bdims[0] } else { bdims[1] } as usize;
    channels_match("B", n, bn)?;
    let cols = bdims[1] as usize;
    let b2 = bmat
        .iter()
        .enumerate()
        .map(|(idx, v)| {
            let col = if trans_b { idx / cols } else { idx % cols };
            v * bn.s[col]
        })
        .collect();
    let Some((cv, cdims)) = c else {
        return Ok(Rewritten::new(b2, bn.t.clone()));
    };
    size(cdims, cv.len())?;
    // Broadcast C (rank <= 2) against [N] to [rows, N] or [N].
    let (rows, ccols) = match cdims {
        [] => (1, 1),
        [x] => (1, *x as usize),
        [r, x] => (*r as usize, *x as usize),
        _ => return Err(format!("C has dims {cdims:?}, expected rank <= 2")),
    };
    if ccols != 1 && ccols != n {
        return Err(format!("C has dims {cdims:?}, not broadcastable to N={n}"));
    }
    let out_dims = if cdims.len() == 2 {
        vec![rows as i64, n as i64]
    } else {
        vec![n as i64]
    };
    let c2 = (0..rows * n)
        .map(|idx| {
            let (r, col) = (idx / n, idx % n);
            let v = cv[r * ccols + if ccols == 1 { 0 } else { col }];
            bn.s[col] * beta * v + bn.t[col]
        })
        .collect();
    Ok(Rewritten {
        weight: b2,
        bias: c2,
        bias_dims: Some(out_dims),
    })
}

/// BN followed by a Conv with no padding, weight `[Cout, Cin/g, k...]`:
/// `W'[o, ci, ..] = W·s[c]`, `b'[o] = b[o] + Σ W[o, ci, ..]·t[c]` where
/// `c = (o / (Cout/g))·(Cin/g) + ci` is the input channel.
pub fn before_conv(
    w: &[f64],
    dims: &[i64],
    group: usize,
    b: Option<&[f64]>,
    bn: &Affine,
) -> Result<Rewritten, String> {
    size(dims, w.len())?;
    if dims.len() < 2 || group == 0 || !(dims[0] as usize).is_multiple_of(group) {
        return Err(format!("weight dims {dims:?} do not fit group={group}"));
    }
    let (cout, cin_g) = (dims[0] as usize, dims[1] as usize);
    channels_match("the conv input", cin_g * group, bn)?;
    if let Some(b) = b.filter(|b| b.len() != cout) {
        return Err(format!(
            "the bias has {} elements for {cout} channels",
            b.len()
        ));
    }
    let k = w.len() / (cout * cin_g).max(1);
    let cout_g = cout / group;
    let mut w2 = Vec::with_capacity(w.len());
    let mut b2: Vec<f64> = b.map(<[f64]>::to_vec).unwrap_or_else(|| vec![0.0; cout]);
    for (idx, v) in w.iter().enumerate() {
        let (o, ci) = (idx / (cin_g * k), (idx / k) % cin_g);
        let c = (o / cout_g) * cin_g + ci;
        w2.push(v * bn.s[c]);
        b2[o] += v * bn.t[c];
    }
    Ok(Rewritten::new(w2, b2))
}
