//! The convolution's Winograd path (`winograd`, `winograd_grad_w`) behind `conv2d`'s
//! generic entry points: each function runs its whole batch there when the element type is
//! f32 and the geometry qualifies (`winograd::applies`), and otherwise returns `false`
//! without writing anything, for the caller to take the im2col path. Off x86-64 there is no
//! Winograd path.

#![cfg_attr(not(target_arch = "x86_64"), allow(unused_imports))]

use super::conv2d::{FusedActivation, Geom};
use super::conv2d_gemm::{bounds, f32_slice, f32_slice_mut};
#[cfg(target_arch = "x86_64")]
use super::winograd::{self, convolve, Finish, Shape, TransformedWeights};
use candle_core::WithDType;
use std::mem::MaybeUninit;

#[cfg(not(target_arch = "x86_64"))]
pub(super) use off_x86::*;

/// Whether `conv2d` runs a convolution of this geometry (f32) on Winograd.
#[cfg(all(test, target_arch = "x86_64"))]
pub(super) fn winograd_applies(g: &Geom) -> bool {
    winograd::applies(g)
}

/// The forward of the whole batch on Winograd F(2x2, 3x3) (`winograd::applies`) when `T`
/// is `f32`; `false` (and nothing written) otherwise.
#[cfg(target_arch = "x86_64")]
pub(super) fn forward_winograd<T: WithDType>(
    g: &Geom,
    (x, w, bias): (&[T], &[T], Option<&[T]>),
    (y, residual, act): (&mut [MaybeUninit<T>], Option<&[T]>, FusedActivation),
) -> bool {
    let (Some(x32), Some(w32)) = (f32_slice(x), f32_slice(w)) else {
        return false;
    };
    if !winograd::applies(g) {
        return false;
    }
    let weights = TransformedWeights::forward(w32, (g.cout_g, g.cin_g));
    // SAFETY: `T` is `f32` (its slice converted), so this is the same memory retyped.
    let y32 = unsafe { &mut *(y as *mut [MaybeUninit<T>] as *mut [MaybeUninit<f32>]) };
    let finish = Finish {
        bias: bias.and_then(f32_slice),
        residual: residual.and_then(f32_slice),
        clamp: bounds::<f32>(act),
    };
    convolve(&Shape::forward(g), (x32, &weights), y32, finish);
    true
}

/// The input gradient of the whole batch on Winograd F(2x2, 3x3)
/// (`winograd::applies_to_grad_x`) when `T` is `f32`, every element of `dx` written;
/// `false` (and nothing written) otherwise.
#[cfg(target_arch = "x86_64")]
pub(super) fn grad_x_winograd<T: WithDType>(
    g: &Geom,
    (gy, w): (&[T], &[T]),
    dx: &mut [MaybeUninit<T>],
) -> bool {
    let (Some(gy32), Some(w32)) = (f32_slice(gy), f32_slice(w)) else {
        return false;
    };
    if !winograd::applies_to_grad_x(g) {
        return false;
    }
    let weights = TransformedWeights::grad_x(w32, (g.cout_g, g.cin_g));
    // SAFETY: `T` is `f32` (its slice converted), so this is the same memory retyped.
    let dx32 = unsafe { &mut *(dx as *mut [MaybeUninit<T>] as *mut [MaybeUninit<f32>]) };
    convolve(&Shape::grad_x(g), (gy32, &weights), dx32, Finish::default());
    true
}

/// The weight gradient of the whole batch on Winograd F(2x2, 3x3) (`winograd::applies`)
/// when `T` is `f32`, every element of `dw` written; `false` (and nothing written)
/// otherwise.
#[cfg(target_arch = "x86_64")]
pub(super) fn grad_w_winograd<T: WithDType>(g: &Geom, (x, gy): (&[T], &[T]), dw: &mut [T]) -> bool {
    let (Some(x32), Some(gy32), Some(dw32)) = (f32_slice(x), f32_slice(gy), f32_slice_mut(dw))
    else {
        return false;
    };
    if !winograd::applies(g) {
        return false;
    }
    super::winograd_grad_w::grad_w(&Shape::forward(g), x32, gy32, dw32);
    true
}

/// Off x86-64: no Winograd path.
#[cfg(not(target_arch = "x86_64"))]
mod off_x86 {
    use super::*;

    #[cfg(test)]
    pub(in super::super) fn winograd_applies(_: &Geom) -> bool {
        false
    }

    pub(in super::super) fn forward_winograd<T: WithDType>(
        _: &Geom,
        _: (&[T], &[T], Option<&[T]>),
        _: (&mut [MaybeUninit<T>], Option<&[T]>, FusedActivation),
    ) -> bool {
        false
    }

    pub(in super::super) fn grad_x_winograd<T: WithDType>(
        _: &Geom,
        _: (&[T], &[T]),
        _: &mut [MaybeUninit<T>],
    ) -> bool {
        false
    }

    pub(in super::super) fn grad_w_winograd<T: WithDType>(
        _: &Geom,
        _: (&[T], &[T]),
        _: &mut [T],
    ) -> bool {
        false
    }
}
