//! The CUDA C kernels: embedded in the binary, compiled by NVRTC at run time
//! to a CUBIN for the GPU in hand, cached on disk.
//!
//! Cache key: SHA-256 of the source, the compile options (precision, model
//! sizes), the GPU architecture and the NVRTC version. Each cache file ends in
//! a SHA-256 of its CUBIN, so a corrupt entry is noticed and rebuilt rather
//! than loaded.

use std::ffi::{c_char, c_int, CString};
use std::path::{Path, PathBuf};

use cudarc::nvrtc::sys as nvrtc;
use embedrt_core::{Error, Result};
use sha2::{Digest, Sha256};

/// The encoder's kernels, one NVRTC program: the shared helpers and the plain kernels,
/// the tensor-core attention, the small-token linear layers, Hopper's FFN-in GEMM, and the
/// quantized plans' kernels (quant_io.cu first: its helpers are used by the others).
pub const ENCODER_SOURCE: &str = concat!(
    include_str!("../kernels/quant_io.cu"),
    include_str!("../kernels/encoder.cu"),
    include_str!("../kernels/attention_tc.cu"),
    include_str!("../kernels/attention_pipe.cu"),
    include_str!("../kernels/small_linear.cu"),
    include_str!("../kernels/ffn_gemm_sm90.cu"),
    include_str!("../kernels/attention_wg.cu"),
    include_str!("../kernels/quant.cu"),
);

/// Where a kernel is in the compiled program: the `.cu` files guard the
/// tensor-core, Hopper and quantized kernels with `#if`, so a program for
/// another GPU or precision does not have them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Built {
    /// Every program.
    Always,
    /// fp16 on sm_80+.
    Fp16Sm80,
    /// fp16 on sm_80+ with a head size that is a multiple of 16.
    Fp16Sm80Head16,
    /// fp16 on sm_90a (Hopper's arch-specific target).
    Fp16Sm90a,
    /// fp16 on sm_90a with a head size of 64.
    Fp16Sm90aHead64,
    /// Programs for quantized plans (`EMBEDRT_QUANT` defined).
    Quant,
    /// Programs for quantized plans on sm_80+.
    QuantSm80,
    /// Programs for quantized plans on sm_80+ with a head size that is a
    /// multiple of 16.
    QuantSm80Head16,
    /// Programs for fp8 plans (`EMBEDRT_QUANT=2`, sm_89+) with a head size
    /// that is a multiple of 16.
    Fp8Head16,
}

/// One table of every kernel the engine looks up: its id, its `extern "C"`
/// name, the `.cu` file defining it and when it is built. The engine asks for
/// kernels by id only ([`Kernel::name`]); tests/python/test_kernels_nvrtc.py
/// parses the lines between the BEGIN and END markers (keep one entry a line).
macro_rules! kernel_table {
    ($($id:ident = $name:literal in $file:literal when $built:ident,)*) => {
        /// A kernel of the encoder program (the table in kernels.rs).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Kernel {
            $($id,)*
        }

        impl Kernel {
            pub const ALL: &'static [Kernel] = &[$(Kernel::$id,)*];

            /// The `extern "C"` name in the CUBIN.
            pub fn name(self) -> &'static str {
                match self {
                    $(Kernel::$id => $name,)*
                }
            }

            /// The file under `crates/cuda/kernels/` that defines it.
            pub fn source_file(self) -> &'static str {
                match self {
                    $(Kernel::$id => $file,)*
                }
            }

            pub fn built(self) -> Built {
                match self {
                    $(Kernel::$id => Built::$built,)*
                }
            }
        }
    };
}

kernel_table! {
    // BEGIN KERNELS
    EmbedLayernorm = "embed_layernorm" in "encoder.cu" when Always,
    Layernorm = "layernorm" in "encoder.cu" when Always,
    Gelu = "gelu" in "encoder.cu" when Always,
    Attention = "attention" in "encoder.cu" when Always,
    Pool = "pool" in "encoder.cu" when Always,
    AttentionTc = "attention_tc" in "attention_tc.cu" when Fp16Sm80Head16,
    AttentionTc2 = "attention_tc2" in "attention_tc.cu" when Fp16Sm80Head16,
    AttentionTc4 = "attention_tc4" in "attention_tc.cu" when Fp16Sm80Head16,
    AttentionTcMt2 = "attention_tc_mt2" in "attention_tc.cu" when Fp16Sm80Head16,
    AttentionTcQ8 = "attention_tc_q8" in "attention_tc.cu" when Fp8Head16,
    AttentionTcPipe = "attention_tc_pipe" in "attention_pipe.cu" when Fp16Sm80Head16,
    AttentionTcShort = "attention_tc_short" in "attention_tc.cu" when Fp16Sm80Head16,
    SmallLinearM16 = "small_linear_m16" in "small_linear.cu" when Fp16Sm80,
    SmallLinearM32 = "small_linear_m32" in "small_linear.cu" when Fp16Sm80,
    SmallLinearM48 = "small_linear_m48" in "small_linear.cu" when Fp16Sm80,
    SmallLinearM64 = "small_linear_m64" in "small_linear.cu" when Fp16Sm80,
    FfnInGeluSm90 = "ffn_in_gelu_sm90" in "ffn_gemm_sm90.cu" when Fp16Sm90a,
    FfnInGeluSm90C2 = "ffn_in_gelu_sm90_c2" in "ffn_gemm_sm90.cu" when Fp16Sm90a,
    FfnInGeluSm90C4 = "ffn_in_gelu_sm90_c4" in "ffn_gemm_sm90.cu" when Fp16Sm90a,
    AttentionWg = "attention_wg" in "attention_wg.cu" when Fp16Sm90aHead64,
    AttentionWgQ = "attention_wg_q" in "attention_wg.cu" when Fp16Sm90aHead64,
    AttentionWgQo = "attention_wg_qo" in "attention_wg.cu" when Fp16Sm90aHead64,
    EmbedLayernormQ = "embed_layernorm_q" in "quant.cu" when Quant,
    LayernormQ = "layernorm_q" in "quant.cu" when Quant,
    GeluQ = "gelu_q" in "quant.cu" when Quant,
    EpilogueBias = "epilogue_bias" in "quant.cu" when Quant,
    EpilogueLn = "epilogue_ln" in "quant.cu" when Quant,
    DequantWeight = "dequant_weight" in "quant.cu" when Quant,
    SmallLinearQM16 = "small_linear_q_m16" in "small_linear.cu" when QuantSm80,
    SmallLinearQM32 = "small_linear_q_m32" in "small_linear.cu" when QuantSm80,
    SmallLinearQM48 = "small_linear_q_m48" in "small_linear.cu" when QuantSm80,
    SmallLinearQM64 = "small_linear_q_m64" in "small_linear.cu" when QuantSm80,
    SmallAttnOutM16 = "small_attn_out_m16" in "small_linear.cu" when Fp16Sm80Head16,
    SmallAttnOutQM16 = "small_attn_out_q_m16" in "small_linear.cu" when QuantSm80Head16,
    // END KERNELS
}

/// The small-token linear kernels by token bucket: 16, 32, 48, 64 tokens.
pub const SMALL_LINEAR: [Kernel; 4] = [
    Kernel::SmallLinearM16,
    Kernel::SmallLinearM32,
    Kernel::SmallLinearM48,
    Kernel::SmallLinearM64,
];

/// The same over a quantized plan's 8-bit weights (`EMBEDRT_QUANT` programs).
pub const SMALL_LINEAR_Q: [Kernel; 4] = [
    Kernel::SmallLinearQM16,
    Kernel::SmallLinearQM32,
    Kernel::SmallLinearQM48,
    Kernel::SmallLinearQM64,
];

/// Looks `kernel` up in a loaded module of the encoder program.
///
/// # Safety
/// `module` must be a live module loaded from [`ENCODER_SOURCE`].
pub unsafe fn function(
    module: cudarc::driver::sys::CUmodule,
    kernel: Kernel,
) -> Result<cudarc::driver::sys::CUfunction> {
    let name = CString::new(kernel.name()).unwrap_or_default();
    // SAFETY: the caller's promise on `module`.
    unsafe { cudarc::driver::result::module::get_function(module, name) }
        .map_err(|e| crate::fault::driver_fault(&format!("kernel lookup of {}", kernel.name()), e))
}

/// Where compiled kernels live unless the caller names a directory
/// (`EngineOptions::kernel_cache`, which the CLI fills from
/// `$EMBEDRT_KERNEL_CACHE`): `$XDG_CACHE_HOME/embedrt/kernels`, else
/// `~/.cache/embedrt/kernels`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(p).join("embedrt/kernels"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/embedrt/kernels"))
}

pub fn nvrtc_version() -> Result<(i32, i32)> {
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: plain out-parameters.
    let r = unsafe { nvrtc::nvrtcVersion(&mut major, &mut minor) };
    if r != nvrtc::nvrtcResult::NVRTC_SUCCESS {
        return Err(Error::Backend(format!("nvrtcVersion failed: {r:?}")));
    }
    Ok((major, minor))
}

/// A compiled CUBIN and whether it came from the cache.
pub struct Cubin {
    pub image: Vec<u8>,
    pub from_cache: bool,
    pub key: String,
}

/// The NVRTC target for compute capability `cc`: `sm_XY`, and on Hopper
/// `sm_90a`, whose wgmma and TMA instructions the FFN-in kernel uses (the
/// plan is built for one GPU, so the arch-specific target costs nothing).
pub fn target_arch(cc: (i32, i32)) -> String {
    match cc {
        (9, 0) => "sm_90a".into(),
        (major, minor) => format!("sm_{major}{minor}"),
    }
}

/// Compiles `source` with `defines` for [`target_arch`] or takes it from the
/// cache in `cache_dir` (None: [`default_cache_dir`]).
pub fn compile_cached(
    source: &str,
    defines: &[String],
    cc: (i32, i32),
    cache_dir: Option<&Path>,
) -> Result<Cubin> {
    let nv = nvrtc_version()?;
    let arch = target_arch(cc);
    let mut h = Sha256::new();
    h.update(source.as_bytes());
    for d in defines {
        h.update(b"\0");
        h.update(d.as_bytes());
    }
    h.update(format!("\0{arch}\0nvrtc {}.{}", nv.0, nv.1).as_bytes());
    let key = hex::encode(h.finalize());
    let dir = cache_dir.map(Path::to_path_buf).or_else(default_cache_dir);
    let path = dir.map(|d| d.join(format!("{key}.cubin")));
    if let Some(p) = &path {
        if let Ok(bytes) = std::fs::read(p) {
            if let Some(image) = verify_entry(&bytes) {
                return Ok(Cubin {
                    image,
                    from_cache: true,
                    key,
                });
            }
            // Corrupt: fall through, rebuild and overwrite.
        }
    }
    let image = compile(source, defines, &arch)?;
    if let Some(p) = &path {
        // A cache that cannot be written only costs the next start a compile.
        let _ = store_entry(p, &image);
    }
    Ok(Cubin {
        image,
        from_cache: false,
        key,
    })
}

/// `cubin ++ sha256(cubin)` -> cubin, or None if the trailer does not match.
pub fn verify_entry(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() <= 32 {
        return None;
    }
    let (image, sum) = bytes.split_at(bytes.len() - 32);
    (Sha256::digest(image).as_slice() == sum).then(|| image.to_vec())
}

fn store_entry(path: &Path, image: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut bytes = image.to_vec();
    bytes.extend_from_slice(&Sha256::digest(image));
    embedrt_core::fsutil::write_atomic(path, &bytes)
}

fn compile(source: &str, defines: &[String], arch: &str) -> Result<Vec<u8>> {
    let err = |what: &str, r: nvrtc::nvrtcResult| Error::Backend(format!("NVRTC {what}: {r:?}"));
    let src = CString::new(source).map_err(|_| Error::Backend("kernel source has NUL".into()))?;
    let name = CString::new("encoder.cu").unwrap_or_default();
    let opts: Vec<CString> = vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()]
        .into_iter()
        .chain(defines.iter().map(|d| format!("-D{d}")))
        .filter_map(|s| CString::new(s).ok())
        .collect();
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    let mut prog: nvrtc::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: valid C strings that outlive the calls; prog destroyed below.
    unsafe {
        let r = nvrtc::nvrtcCreateProgram(
            &mut prog,
            src.as_ptr(),
            name.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        );
        if r != nvrtc::nvrtcResult::NVRTC_SUCCESS {
            return Err(err("create", r));
        }
        let r = nvrtc::nvrtcCompileProgram(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr());
        if r != nvrtc::nvrtcResult::NVRTC_SUCCESS {
            let mut log_len = 0usize;
            nvrtc::nvrtcGetProgramLogSize(prog, &mut log_len);
            let mut log = vec![0u8; log_len.max(1)];
            nvrtc::nvrtcGetProgramLog(prog, log.as_mut_ptr() as *mut c_char);
            nvrtc::nvrtcDestroyProgram(&mut prog);
            let log = String::from_utf8_lossy(&log).replace('\n', " | ");
            return Err(Error::Backend(format!(
                "NVRTC failed to compile the kernels for {arch}: {log}"
            )));
        }
        let mut size = 0usize;
        let r = nvrtc::nvrtcGetCUBINSize(prog, &mut size);
        if r != nvrtc::nvrtcResult::NVRTC_SUCCESS {
            nvrtc::nvrtcDestroyProgram(&mut prog);
            return Err(err("get CUBIN size", r));
        }
        let mut image = vec![0u8; size];
        let r = nvrtc::nvrtcGetCUBIN(prog, image.as_mut_ptr() as *mut c_char);
        nvrtc::nvrtcDestroyProgram(&mut prog);
        if r != nvrtc::nvrtcResult::NVRTC_SUCCESS {
            return Err(err("get CUBIN", r));
        }
        Ok(image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each listed kernel is defined in the file the table names (the NVRTC
    /// test compiles them; this keeps the table's file column honest).
    #[test]
    fn every_kernel_is_in_its_source_file() {
        let files = [
            ("encoder.cu", include_str!("../kernels/encoder.cu")),
            (
                "attention_tc.cu",
                include_str!("../kernels/attention_tc.cu"),
            ),
            (
                "attention_pipe.cu",
                include_str!("../kernels/attention_pipe.cu"),
            ),
            (
                "small_linear.cu",
                include_str!("../kernels/small_linear.cu"),
            ),
            (
                "ffn_gemm_sm90.cu",
                include_str!("../kernels/ffn_gemm_sm90.cu"),
            ),
            (
                "attention_wg.cu",
                include_str!("../kernels/attention_wg.cu"),
            ),
            ("quant.cu", include_str!("../kernels/quant.cu")),
        ];
        for k in Kernel::ALL {
            let (_, src) = files
                .iter()
                .find(|(f, _)| *f == k.source_file())
                .unwrap_or_else(|| panic!("{k:?}: no file {}", k.source_file()));
            // `name(` after `__global__ ...`, or the small-linear macro's `(name,`.
            let defined = src.contains(&format!("\n{}(", k.name()))
                || src.contains(&format!(" {}(", k.name()))
                || src.contains(&format!("({},", k.name()));
            assert!(defined, "{} not defined in {}", k.name(), k.source_file());
        }
        let mut names: Vec<&str> = Kernel::ALL.iter().map(|k| k.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(
            names.len(),
            Kernel::ALL.len(),
            "a kernel name is listed twice"
        );
    }
}
