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

/// `y = x W^T + b` for `x: [rows, in]`, `W: [out, in]` (PyTorch layout),
/// written into `y: [rows, out]`. If `residual` is given it is added too
/// (the post-attention / post-FFN skip connection).
pub fn linear(
    x: &[f32],
    rows: usize,
    weight: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    y: &mut [f32],
) {
    let out = bias.len();
    let inp = weight.len() / out;
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
            // W^T[k, n] = W[n, k]
            View {
                ptr: weight.as_ptr(),
                rs: 1,
                cs: inp as isize,
            },
            1.0,
            true,
        );
    }
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
/// tanh approximation).
pub fn gelu_in_place(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// erf for f32 through the f64 routine: exact to f32 rounding. The
/// bottleneck is the GEMMs, not this.
#[inline]
fn erf(x: f32) -> f32 {
    libm::erf(x as f64) as f32
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
        linear(&x, rows, &w, &b, Some(&res), &mut y);
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
    fn layer_norm_gives_zero_mean_unit_variance() {
        let mut row = [1.0f32, 2.0, 3.0, 4.0];
        layer_norm(&mut row, &[1.0; 4], &[0.0; 4], 0.0);
        let mean: f32 = row.iter().sum::<f32>() / 4.0;
        let var: f32 = row.iter().map(|v| v * v).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5);
    }
}
