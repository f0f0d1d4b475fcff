//! The CUDA C kernels: embedded in the binary, compiled by NVRTC at run time
//! to a CUBIN for the GPU in hand, cached on disk.
//!
//! Cache key: SHA-256 of the source, the compile options (precision, model
//! sizes), the GPU architecture and the NVRTC version. Each cache file ends in
//! a SHA-256 of its CUBIN, so a corrupt entry is noticed and rebuilt rather
//! than loaded.

use std::ffi::{c_char, c_int, CString};
use std::path::PathBuf;

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
    include_str!("../kernels/small_linear.cu"),
    include_str!("../kernels/ffn_gemm_sm90.cu"),
    include_str!("../kernels/quant.cu"),
);

/// Where compiled kernels live: `$EMBEDRT_KERNEL_CACHE`, else
/// `$XDG_CACHE_HOME/embedrt/kernels`, else `~/.cache/embedrt/kernels`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("EMBEDRT_KERNEL_CACHE") {
        return Some(PathBuf::from(p));
    }
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

/// Compiles `source` with `defines` for [`target_arch`] or takes it from the cache.
pub fn compile_cached(source: &str, defines: &[String], cc: (i32, i32)) -> Result<Cubin> {
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
    let path = cache_dir().map(|d| d.join(format!("{key}.cubin")));
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

fn store_entry(path: &std::path::Path, image: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
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
