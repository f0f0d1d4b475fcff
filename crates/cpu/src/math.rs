//! Numeric kernels of the CPU engine: GEMM through the `gemm` crate,
//! LayerNorm, exact-erf GELU, softmax.

use gemm::{gemm, Parallelism};

/// Row-major strided matrix view for [`matmul`].
#[derive(Clone, Copy)]
pub struct View {
    pub ptr: *const f32,
    /// Stride between rows.
    pub rs: isize,
    /// Stride between columns.
    pub cs: isize,
}

/// `dst[m, n] (row stride dst_rs) = (accumulate ? dst : 0) + scale * lhs[m, k] * rhs[k, n]`.
///
/// # Safety
/// The views must cover `m x k`, `k x n` and `m x n` valid elements, `dst`
/// must not alias the inputs.
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    scale: f32,
    parallel: bool,
) {
    let par = if parallel {
        Parallelism::Rayon(rayon::current_num_threads())
    } else {
        Parallelism::None
    };
    gemm(
        m, n, k, dst, 1, dst_rs, accumulate, lhs.ptr, lhs.cs, lhs.rs, rhs.ptr, rhs.cs, rhs.rs, 1.0,
        scale, false, false, false, par,
    );
}

/// `y = x W^T + b` for `x: [rows, in]` and the weight given TRANSPOSED,
/// `w_t = W^T: [in, out]` (see [`transpose`]), written into `y: [rows, out]`.
/// If `residual` is given it is added too (the post-attention / post-FFN
/// skip connection).
///
/// Why transposed: `gemm` turns this row-major problem into
/// `y^T = W x^T` and packs `W` into column panels on every call; from
/// PyTorch's `[out, in]` layout that packing is a strided transpose (it was
/// ~12 % of the engine's time), from `[in, out]` it is a contiguous copy.
pub fn linear(
    x: &[f32],
    rows: usize,
    w_t: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    y: &mut [f32],
) {
    let out = bias.len();
    let inp = w_t.len() / out;
    assert_eq!(x.len(), rows * inp);
    assert_eq!(y.len(), rows * out);
    // Seed the output with bias (+ residual) and let the GEMM accumulate.
    for (r, row) in y.chunks_exact_mut(out).enumerate() {
        row.copy_from_slice(bias);
        if let Some(res) = residual {
            for (o, &v) in row.iter_mut().zip(&res[r * out..(r + 1) * out]) {
                *o += v;
            }
        }
    }
    // SAFETY: shapes asserted above; y is a distinct buffer from x and weight.
    unsafe {
        matmul(
            rows,
            out,
            inp,
            y.as_mut_ptr(),
            out as isize,
            true,
            View {
                ptr: x.as_ptr(),
                rs: inp as isize,
                cs: 1,
            },
            View {
                ptr: w_t.as_ptr(),
                rs: out as isize,
                cs: 1,
            },
            1.0,
            true,
        );
    }
}

/// `[rows, cols]` row-major -> `[cols, rows]` row-major.
pub fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(m.len(), rows * cols);
    let mut t = vec![0.0f32; m.len()];
    for (r, row) in m.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            t[c * rows + r] = v;
        }
    }
    t
}

/// LayerNorm over each row of `x` in place (biased variance, as PyTorch).
pub fn layer_norm_rows(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = gamma.len();
    for row in x.chunks_exact_mut(n) {
        layer_norm(row, gamma, beta, eps);
    }
}

pub fn layer_norm(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mean = sum_f32(row) / n;
    let mut var = 0.0f32;
    for &v in row.iter() {
        var += (v - mean) * (v - mean);
    }
    let inv = 1.0 / (var / n + eps).sqrt();
    for ((v, &g), &b) in row.iter_mut().zip(gamma).zip(beta) {
        *v = (*v - mean) * inv * g + b;
    }
}

/// Pairwise-ish summation in 8 lanes: vectorizes and loses less precision
/// than a running sum.
fn sum_f32(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))`, as `torch.nn.GELU()` (not the
/// tanh approximation). Written as `0.5 x (2 - erfc(z))` for x >= 0 and
/// `0.5 x erfc(|z|)` for x < 0, so the negative side has no cancellation.
/// Branch-free, so the loop vectorizes: GELU through scalar f64 `libm::erf`
/// took about a fifth of the engine's time.
///
/// The workspace builds for baseline x86-64 (4-wide SSE), so the loop is
/// also compiled for AVX-512 and AVX2 and picked at run time: same
/// operations in the same order (no FMA contraction), bit-identical results.
pub fn gelu_in_place(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { gelu_avx512(x) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { gelu_avx2(x) };
        }
    }
    gelu_portable(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_avx512(x: &mut [f32]) {
    gelu_portable(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gelu_avx2(x: &mut [f32]) {
    gelu_portable(x)
}

#[inline(always)]
fn gelu_portable(x: &mut [f32]) {
    for v in x.iter_mut() {
        let c = erfc_nonneg(v.abs() * std::f32::consts::FRAC_1_SQRT_2);
        let one_plus_erf = if *v >= 0.0 { 2.0 - c } else { c };
        *v = 0.5 * *v * one_plus_erf;
    }
}

/// GELU's tanh form, `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`
/// (PyTorch's `approximate="tanh"`, cuBLASLt's GELU epilogue), with tanh
/// written as `1 - 2 / (e^{2z} + 1)` on |z| so that `exp_nonpos` serves.
/// Used by quantized models whose table says `gelu: tanh`.
pub fn gelu_tanh_in_place(x: &mut [f32]) {
    const C: f32 = 0.797_884_6; // sqrt(2 / pi)
    for v in x.iter_mut() {
        let z = C * (*v + 0.044_715 * *v * *v * *v);
        let e = exp_nonpos(-2.0 * z.abs());
        let t = (1.0 - e) / (1.0 + e);
        let t = if z >= 0.0 { t } else { -t };
        *v = 0.5 * *v * (1.0 + t);
    }
}

/// erfc(z) for z >= 0 by the Chebyshev fit of Press et al., Numerical
/// Recipes (2nd ed.) §6.2, `erfcc`: relative error below 1.2e-7 for all z.
#[inline(always)]
fn erfc_nonneg(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = -1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204
                                + t * (1.488_515_9 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    t * exp_nonpos(-z * z + p)
}

/// e^y for y <= 0 (inputs below -87 give ~0): y = n ln2 + r with |r| <=
/// ln2/2, e^r by its degree-7 Taylor polynomial (error < 1e-8 relative),
/// 2^n from the exponent bits. Branch-free so callers vectorize.
#[inline(always)]
fn exp_nonpos(y: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let y = y.max(-87.0);
    // Round to nearest by the 1.5 * 2^23 trick: `f32::round` is a libm call
    // on baseline x86-64 and would stop the loop from vectorizing.
    const ROUNDER: f32 = 12_582_912.0;
    let n = (y * std::f32::consts::LOG2_E + ROUNDER) - ROUNDER;
    let r = (y - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

/// Softmax of one row in place.
pub fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tanh_gelu_matches_its_formula_in_f64() {
        let xs: Vec<f32> = (-400..=400).map(|i| i as f32 / 40.0).collect();
        let mut y = xs.clone();
        gelu_tanh_in_place(&mut y);
        let c = (2.0f64 / std::f64::consts::PI).sqrt();
        for (&x, &g) in xs.iter().zip(&y) {
            let x = x as f64;
            let want = 0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh());
            assert!(
                (g as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "{x}: {g} vs {want}"
            );
        }
        // It is an approximation of the exact GELU: close, not equal.
        let mut exact = xs.clone();
        gelu_in_place(&mut exact);
        let worst = exact
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst > 1e-5 && worst < 1e-3, "{worst}");
    }

    #[test]
    fn linear_matches_naive_loops() {
        let (rows, inp, out) = (5, 7, 3);
        let x: Vec<f32> = (0..rows * inp)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let w: Vec<f32> = (0..out * inp)
            .map(|i| ((i * 13 % 7) as f32 - 3.0) / 2.0)
            .collect();
        let b = vec![0.5, -1.0, 2.0];
        let res: Vec<f32> = (0..rows * out).map(|i| i as f32).collect();
        let mut y = vec![f32::NAN; rows * out];
        linear(&x, rows, &transpose(&w, out, inp), &b, Some(&res), &mut y);
        for r in 0..rows {
            for o in 0..out {
                let mut want = b[o] + res[r * out + o];
                for k in 0..inp {
                    want += x[r * inp + k] * w[o * inp + k];
                }
                assert!((y[r * out + o] - want).abs() < 1e-4, "{r},{o}");
            }
        }
    }

    #[test]
    fn gelu_is_the_erf_form() {
        let mut v = [-3.0f32, -1.0, 0.0, 0.5, 2.0];
        gelu_in_place(&mut v);
        // torch.nn.functional.gelu(torch.tensor([-3., -1., 0., .5, 2.]))
        let want = [-0.0040496, -0.1586553, 0.0, 0.3457312, 1.9544997];
        for (a, b) in v.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn gelu_matches_f64_erf_everywhere() {
        // Against the f64 definition on a dense grid, tails included.
        let mut worst = 0.0f64;
        for i in -200_000..=200_000 {
            let x = i as f32 * 1e-4;
            let mut v = [x];
            gelu_in_place(&mut v);
            let xd = x as f64;
            let want = 0.5 * xd * (1.0 + libm::erf(xd / std::f64::consts::SQRT_2));
            let err = (v[0] as f64 - want).abs() / want.abs().max(1.0);
            worst = worst.max(err);
        }
        assert!(worst < 5e-7, "worst error {worst}");
        let mut far = [-100.0f32, -30.0, 30.0, 100.0];
        gelu_in_place(&mut far);
        for (got, want) in far.iter().zip([0.0f32, 0.0, 30.0, 100.0]) {
            assert!((got - want).abs() < 1e-30, "{got} vs {want}");
        }
    }

    #[test]
    fn gelu_simd_paths_are_bit_identical_to_the_portable_loop() {
        let x: Vec<f32> = (-40_000..40_000).map(|i| i as f32 * 3.7e-4).collect();
        let mut want = x.clone();
        gelu_portable(&mut want);
        let mut got = x.clone();
        gelu_in_place(&mut got);
        assert!(got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            let mut got = x.clone();
            // SAFETY: AVX2 checked just above.
            unsafe { gelu_avx2(&mut got) };
            assert!(got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }

    #[test]
    fn exp_nonpos_matches_std() {
        for i in 0..87_000 {
            let y = -(i as f32) * 1e-3;
            let (got, want) = (exp_nonpos(y), (y as f64).exp());
            assert!(
                ((got as f64 - want) / want).abs() < 3e-7,
                "{y}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn layer_norm_gives_zero_mean_unit_variance() {
        let mut row = [1.0f32, 2.0, 3.0, 4.0];
        layer_norm(&mut row, &[1.0; 4], &[0.0; 4], 0.0);
        let mean: f32 = row.iter().sum::<f32>() / 4.0;
        let var: f32 = row.iter().map(|v| v * v).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5);
    }
}
