//! `embedrt info --plan FILE`: what a plan holds. Reads and verifies the
//! file; needs no GPU. Without `--plan`: the plan cache (where the fp16
//! plans built without `--plan` go) and the plans in it.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use embedrt_core::quant::FallbackWeights;
use embedrt_cuda::plan::PLAN_FORMAT_VERSION;
use embedrt_cuda::quant_plan::QuantInfo;
use embedrt_cuda::Plan;

#[derive(Args)]
pub struct InfoArgs {
    /// The plan file (without it: the plan cache and what it holds).
    #[arg(long)]
    plan: Option<PathBuf>,
    /// Print the header as JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InfoArgs) -> Result<()> {
    let Some(path) = &args.plan else {
        return plan_cache(args.json);
    };
    let plan = Plan::read(path)?;
    let h = &plan.header;
    if args.json {
        println!("{}", serde_json::to_string_pretty(h)?);
        return Ok(());
    }
    let c = &h.config;
    let mib = |b: usize| b as f64 / (1u64 << 20) as f64;
    println!("plan            {}", path.display());
    println!(
        "format          version {PLAN_FORMAT_VERSION}, written by embedrt {}",
        h.embedrt_version
    );
    println!(
        "model           {} hidden {} layers {} heads {} intermediate {} vocab {}",
        c.architecture.name(),
        c.hidden_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.intermediate_size,
        c.vocab_size
    );
    println!(
        "pooling         {}, normalize {}, max_seq_length {}",
        h.pooling, h.normalize, h.max_seq_length
    );
    println!("precision       {}", h.precision_name());
    if h.quant.is_none() {
        println!("gelu            {}", h.gelu.name());
    }
    if let Some(q) = &h.quant {
        quant_lines(q, mib);
    }
    println!("profile         {} (MIN:OPT:MAX)", h.profile);
    println!(
        "batch limits    {} sequences, {} tokens",
        h.profile.max.batch,
        h.profile.token_budget()
    );
    println!(
        "gpu             {} (compute capability {}.{})",
        h.gpu.name, h.gpu.cc_major, h.gpu.cc_minor
    );
    // A quantized plan's 8-bit GEMMs have their own line (quant_lines); this one is about the
    // float GEMMs (a quantized plan's fallbacks), whose algorithms are timed at build time
    // unless the plan was built untuned.
    let float_gemms = if h.quant.is_some() {
        "float gemms"
    } else {
        "gemm algorithms"
    };
    let algos = if h.gemm_algos.is_empty() {
        "cuBLASLt's heuristic choice".to_string()
    } else {
        format!("{} timed at build time", h.gemm_algos.len())
    };
    println!(
        "{float_gemms:<15} {algos} (cuBLASLt {})",
        h.cublaslt_version
    );
    println!("tensors         {}", h.tensors.len());
    println!(
        "weight bytes    {} ({:.1} MiB)",
        h.weight_bytes,
        mib(h.weight_bytes)
    );
    println!(
        "workspace bytes {} ({:.1} MiB) per execution slot",
        h.workspace_bytes,
        mib(h.workspace_bytes)
    );
    let slots = embedrt_cuda::engine::DEFAULT_SLOTS;
    let total = h.weight_bytes + slots * h.workspace_bytes;
    println!(
        "device memory   {} ({:.1} MiB) once loaded: weights + {slots} slots (1 slot where memory is short), besides the CUDA context",
        total,
        mib(total)
    );
    println!("tokenizer bytes {}", h.tokenizer_bytes);
    Ok(())
}

/// The plan cache directory and, per cached plan, its name, size, precision,
/// GPU and model; a file that does not read back says why (the next start
/// on it rebuilds it).
fn plan_cache(json: bool) -> Result<()> {
    let Some(dir) = crate::open::plan_cache_dir() else {
        if json {
            println!("{}", serde_json::json!({ "plan_cache": null, "plans": [] }));
        } else {
            println!("plan cache      off (EMBEDRT_PLAN_CACHE=off, or no HOME)");
        }
        return Ok(());
    };
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "plan"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => anyhow::bail!("plan cache {}: {e}", dir.display()),
    };
    files.sort();
    let mut rows = Vec::new();
    for file in &files {
        let bytes = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        let what = match Plan::read(file) {
            Ok(p) => {
                let h = &p.header;
                format!(
                    "{} {} {} for {} (sm_{}{}), embedrt {}",
                    h.precision_name(),
                    h.config.architecture.name(),
                    h.profile,
                    h.gpu.name,
                    h.gpu.cc_major,
                    h.gpu.cc_minor,
                    h.embedrt_version
                )
            }
            Err(e) => format!("unreadable ({e}); rebuilt on next use"),
        };
        rows.push((file, bytes, what));
    }
    if json {
        let plans: Vec<_> = rows
            .iter()
            .map(|(f, b, w)| serde_json::json!({ "path": f, "bytes": b, "plan": w }))
            .collect();
        println!(
            "{}",
            serde_json::json!({ "plan_cache": dir, "plans": plans })
        );
        return Ok(());
    }
    println!("plan cache      {} ({} plans)", dir.display(), rows.len());
    for (file, bytes, what) in rows {
        let mib = bytes as f64 / (1u64 << 20) as f64;
        println!("  {} ({mib:.1} MiB): {what}", file.display());
    }
    Ok(())
}

/// A quantized plan: GEMM weight bytes against fp32's, what fell back, accuracy.
fn quant_lines(q: &QuantInfo, mib: impl Fn(usize) -> f64) {
    let gemms = q.activations.len() + q.fallback.len();
    println!(
        "quantization    {} GEMMs: {} of {gemms} in {} (per-{} weight scales, per-tensor \
         activation scales, {} GELU, {} attention inputs), calibrator {} over {} sentences",
        q.format.name(),
        gemms - q.fallback.len(),
        q.format.name(),
        q.weight_scales.name(),
        q.gelu.name(),
        q.attention_inputs.name(),
        q.calibrator,
        q.calibration_sentences
    );
    println!(
        "gemm weights    {} bytes ({:.1} MiB) for {} parameters: {:.1}% of fp32's {} ({:.1} MiB)",
        q.gemm_weight_bytes,
        mib(q.gemm_weight_bytes),
        q.gemm_params,
        100.0 * q.gemm_weight_ratio(),
        q.gemm_weight_bytes_fp32(),
        mib(q.gemm_weight_bytes_fp32())
    );
    let algos = if q.gemm_algos.is_empty() {
        "cuBLASLt's heuristic choice".to_string()
    } else {
        format!("{} timed at build time", q.gemm_algos.len())
    };
    println!(
        "8-bit gemms     {} output, algorithms: {algos}",
        q.gemm_output.name()
    );
    if q.fallback.is_empty() {
        println!("fallback        none (every GEMM quantized)");
    } else {
        let weights = match q.fallback_weights {
            FallbackWeights::EightBit => format!(
                "fp16 on {} weights (1 byte a parameter, per-channel scales)",
                q.format.name()
            ),
            FallbackWeights::Float => "fp16 (fp16 weights)".to_string(),
        };
        println!(
            "fallback        {} in {weights}: {}",
            q.fallback.len(),
            q.fallback.join(", ")
        );
    }
    match &q.accuracy {
        Some(a) => {
            let sp = match (a.spearman_fp32, a.spearman_quantized) {
                (Some(f), Some(qz)) => {
                    format!(", STS Spearman {qz:.2} vs fp32 {f:.2} (drop {:.2})", f - qz)
                }
                _ => String::new(),
            };
            println!(
                "accuracy        cosine to fp32 mean {:.5} min {:.5} over {} held-out sentences{sp}",
                a.mean_cosine, a.min_cosine, a.held_out_sentences
            );
        }
        None => println!("accuracy        not measured at build time (build with --eval)"),
    }
}
