//! How an engine runs, chosen by the caller at load: `CudaEngine::load(plan,
//! ordinal, &options)`. The defaults are the proven, fastest-measured path;
//! every other value is an ablation or an opt-in experiment (docs/perf/gpu.md).
//!
//! The library reads no environment variable. The CLI and the Python package
//! read the `EMBEDRT_*` names in [`EngineOptions::ENV_VARS`] through
//! [`EngineOptions::from_lookup`], which they hand a lookup (`std::env::var`),
//! so the names and their parsing live here, once.

use std::path::PathBuf;

use embedrt_core::quant::GeluForm;
use embedrt_core::{Error, Result};

use crate::kernels::Kernel;

/// Execution slots made by default: two let one batch's copies and host work
/// overlap another's compute.
pub const DEFAULT_SLOTS: usize = 2;
/// Most execution slots a load makes.
pub const MAX_SLOTS: usize = 4;
/// Graph buckets up to this many tokens use the small-token linear kernels
/// by default (the kernels exist for 16 to 64).
pub const SMALL_LINEAR_MAX_TOKENS: usize = 64;

/// Which attention kernel runs where both apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attention {
    /// The tensor-core kernel (`attention_tc.cu`) where it applies (fp16,
    /// sm_80+, head size a multiple of 16), else the CUDA-core one; batches
    /// of at most 112 tokens take `attention_tc_short`, the same kernel with
    /// shared memory cut to the batch (more blocks an SM for short
    /// sentences; fp8 W2's calls -7%, run 27), launched plainly where the
    /// loop launches early (early, it was slower; plainly, fp16 W2's calls
    /// -2% and W3 -0.005..-0.013 ms, run 28); `tc`.
    TensorCores,
    /// `attention_tc` for every batch, its static shared memory too, launched
    /// as the loop launches (the default before run 27); `tc-static`.
    TensorCoresStatic,
    /// The occupancy variant `attention_tc2` (Q in shared memory, 32-key
    /// tiles, 80 registers: 3 blocks of 8 warps an SM); `tc2`.
    TensorCores2,
    /// `attention_tc4`: the same with at most 4 warps a block (6 blocks an
    /// SM); `tc4`.
    TensorCores4,
    /// `attention_tc_mt2`: 32 queries (two MMA row tiles) a warp, up to 4
    /// warps a block, 255 registers: each K/V fragment feeds two MMAs; `mt2`.
    TensorCoresMt2,
    /// `attention_tc_pipe` (`attention_pipe.cu`) for batches of at most 128
    /// tokens and more than a wave of (sequence, head) items, attention_tc
    /// for the rest: attention_tc's arithmetic in resident blocks that take
    /// items from a counter, loading the next key tile, Q rows and bias values
    /// while computing the current; `pipe`. Faster alone, not in the
    /// two-slot W2 job for fp8 plans (docs/PERFORMANCE.md run 27): opt-in.
    TensorCoresPipe,
    /// `tc`, with full blocks (batches longer than 112 tokens) on Hopper's
    /// wgmma kernels (`attention_wg.cu`; fp16 Q, K, V, head size 64, sm_90a)
    /// where they are built, `tc` alone elsewhere: `wg`, `wg-q`, `wg-qo`.
    /// The default is `wg-qo` (W1's attention -15% fp16 and -18% fp8 against
    /// `tc`, run 30).
    Wgmma(WgmmaAttention),
    /// Always the CUDA-core kernel (an ablation).
    Scalar,
}

impl Attention {
    /// The wgmma kernel that takes full blocks, if any.
    pub fn wgmma(self) -> Option<WgmmaAttention> {
        match self {
            Attention::Wgmma(w) => Some(w),
            _ => None,
        }
    }
}

impl Default for Attention {
    fn default() -> Self {
        Attention::Wgmma(WgmmaAttention::QSharedOverlapped)
    }
}

/// Which of the wgmma attention kernels (`attention_wg.cu`) takes full blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WgmmaAttention {
    /// `attention_wg`: Q's fragments in registers; `wg`.
    QInRegisters,
    /// `attention_wg_q`: Q in shared memory; `wg-q`.
    QShared,
    /// `attention_wg_qo`: Q in shared memory, the two key tiles of a batch
    /// of at most 128 tokens overlapped; `wg-qo`.
    QSharedOverlapped,
}

impl WgmmaAttention {
    /// Its kernel in the encoder program.
    pub fn kernel(self) -> Kernel {
        match self {
            WgmmaAttention::QInRegisters => Kernel::AttentionWg,
            WgmmaAttention::QShared => Kernel::AttentionWgQ,
            WgmmaAttention::QSharedOverlapped => Kernel::AttentionWgQo,
        }
    }
}

/// How a float plan's FFN-in activation is computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Gelu {
    /// As the plan says (`PlanHeader::gelu`, chosen at build: tanh for fp16
    /// by default, exact for fp32); `plan`.
    #[default]
    Plan,
    /// The models' definition whatever the plan says: exact-erf GELU, a pass
    /// after the cuBLASLt GEMM (fused in the small-token and Hopper FFN-in
    /// kernels); `exact`.
    Exact,
    /// cuBLASLt's tanh-approximated `GELU_BIAS` epilogue (and the tanh form
    /// in the small-token kernels) whatever the plan says; `tanh`.
    Tanh,
}

impl Gelu {
    /// The GELU a plan whose header says `plan` runs with.
    pub fn resolve(self, plan: GeluForm) -> GeluForm {
        match self {
            Gelu::Plan => plan,
            Gelu::Exact => GeluForm::Exact,
            Gelu::Tanh => GeluForm::Tanh,
        }
    }
}

/// Which GEMM runs the FFN-in layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FfnGemm {
    /// cuBLASLt, then the GELU pass.
    #[default]
    Cublaslt,
    /// Hopper only (fp16, sm_90): our wgmma GEMM with the exact GELU in its
    /// epilogue (`ffn_gemm_sm90.cu`). Correct, but slower than cuBLASLt + the
    /// GELU pass so far (docs/perf/gpu.md run 16); elsewhere cuBLASLt runs.
    Own,
    /// `Own` in clusters of (M, N) CTAs that multicast the operand slices
    /// they share (`own-c2`: 2 x 1, `own-c4`: 2 x 2).
    OwnClusters(usize, usize),
}

impl FfnGemm {
    /// The cluster shape of our kernel, `None` for cuBLASLt.
    pub fn own_cluster(self) -> Option<(usize, usize)> {
        match self {
            FfnGemm::Cublaslt => None,
            FfnGemm::Own => Some((1, 1)),
            FfnGemm::OwnClusters(m, n) => Some((m, n)),
        }
    }
}

/// Where the small-token kernels' LayerNorms run (`small_linear.cu`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SmallLayerNorm {
    /// In the next linear kernel: each of its blocks normalizes the rows it
    /// reads (`ln_in`); `next`. Where the rows do not fit in shared memory,
    /// the ticket runs instead. Correct but slower on the H200 (W3 0.348 vs
    /// 0.330 ms, run 23), so opt-in.
    InNextKernel,
    /// In the attn-out / FFN-out kernel itself: the last block to finish
    /// normalizes every row (the ticket epilogue); `ticket`.
    #[default]
    Ticket,
    /// attn-out / FFN-out add each row's sum and sum of squares into a small
    /// buffer as they write it (atomics); the next linear kernel normalizes
    /// each x fragment as it loads it with those statistics, with no prologue
    /// and no serial tail; `stats`. Not with `small_attention=fused` (the
    /// ticket runs there). Correct (one text at a time: cosine 0.9999995 to
    /// the ticket's), but no faster on the H200 (W3 0.378-0.388 ms against
    /// 0.378-0.386 in the same call, run 28), so opt-in.
    Statistics,
}

/// How batches that do not run as a graph (more than 2,048 tokens: each
/// fills the GPU) share it when several slots hold one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LargeBatches {
    /// `serial` for float plans, `concurrent` for quantized ones: what run 28
    /// measured faster for each (fp16 W2 148k serial against 136-139k
    /// concurrent, W1 -1%; fp8 W1 -6% serial, W2 191k serial against
    /// 184-210k concurrent); `auto`.
    #[default]
    Auto,
    /// A large batch's kernels start only after the previous large batch's
    /// have finished, whichever slot ran it: slots then overlap copies and
    /// host work with compute, not two batches' kernels with each other;
    /// `serial`.
    Serial,
    /// Each slot's stream runs as soon as it can; `concurrent`.
    Concurrent,
}

impl LargeBatches {
    /// Whether large batches run one at a time for a plan (`quantized` or not).
    pub fn serial(self, quantized: bool) -> bool {
        match self {
            LargeBatches::Auto => !quantized,
            LargeBatches::Serial => true,
            LargeBatches::Concurrent => false,
        }
    }
}

/// Tuning and ablation switches of one engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineOptions {
    /// Execution slots wanted (clamped to 1..=4): each has its own stream,
    /// activations, pinned staging and graphs, so that many batches can be in
    /// flight. Fewer are made where they do not fit in free memory with 512 MiB
    /// to spare; one always is.
    pub slots: usize,
    /// Batches of up to 2,048 tokens run as one CUDA graph launch; off: every
    /// batch launches its kernels one by one.
    pub graphs: bool,
    pub attention: Attention,
    pub gelu: Gelu,
    pub ffn_gemm: FfnGemm,
    /// Graph buckets of at most this many tokens run their linear layers
    /// through the small-token kernels (`small_linear.cu`); 0 turns them off.
    pub small_linear_max_tokens: usize,
    pub small_layernorm: SmallLayerNorm,
    /// Batches of at most 16 tokens compute their attention inside the
    /// attn-out kernel (`small_attn_out*` in small_linear.cu), one launch a
    /// layer less. Correct (cosine 0.9999993 to the separate kernel) but
    /// slower on the H200 (MPNet-base W3 0.361 vs 0.330 ms, fp8 0.353 vs
    /// 0.320; docs/PERFORMANCE.md run 24), so off by default: the attention
    /// kernel runs on its own (`separate`).
    pub small_attention_fused: bool,
    /// Quantized plans: small batches run the small-token kernels over the
    /// 8-bit weights (fp16 activations) instead of the 8-bit GEMM loop.
    /// Default on: fp8 W3 0.548 -> 0.318 ms on the H200 (docs/PERFORMANCE.md run 23).
    pub small_linear_8bit: bool,
    /// sm_90+: the float encoder's kernels launch early (programmatic
    /// dependent launch), each starting while the one before finishes; this
    /// includes quantized plans' small batches, not their 8-bit GEMM loop.
    /// Elsewhere, ignored.
    pub early_launch: bool,
    /// Whether batches too large for a graph may run their kernels side by
    /// side on two slots.
    pub large_batches: LargeBatches,
    /// Where compiled kernels are cached; None: [`crate::kernels::default_cache_dir`].
    pub kernel_cache: Option<PathBuf>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            slots: DEFAULT_SLOTS,
            graphs: true,
            attention: Attention::default(),
            gelu: Gelu::default(),
            ffn_gemm: FfnGemm::default(),
            small_linear_max_tokens: SMALL_LINEAR_MAX_TOKENS,
            small_layernorm: SmallLayerNorm::default(),
            small_attention_fused: false,
            small_linear_8bit: true,
            early_launch: true,
            large_batches: LargeBatches::Auto,
            kernel_cache: None,
        }
    }
}

impl EngineOptions {
    /// The option keys [`EngineOptions::set`] takes, with the values they accept.
    pub const KEYS: &'static [(&'static str, &'static str)] = &[
        ("slots", "1 to 4"),
        ("graphs", "on or off (1 or 0)"),
        (
            "attention",
            "tc, tc-static, tc2, tc4, mt2, pipe, wg, wg-q, wg-qo or scalar",
        ),
        ("gelu", "plan, exact or tanh"),
        ("ffn_gemm", "cublaslt, own, own-c2 or own-c4"),
        ("small_linear", "the largest token bucket, 0 = off"),
        ("small_layernorm", "next, ticket or stats"),
        ("small_attention", "fused or separate"),
        ("small_linear_8bit", "on or off (1 or 0)"),
        ("early_launch", "on or off (1 or 0)"),
        ("large_batches", "auto, serial or concurrent"),
        ("kernel_cache", "a directory"),
    ];

    /// The environment variables the CLI and the Python package map onto
    /// option keys (the names bench/gpu scripts and docs/perf use).
    pub const ENV_VARS: &'static [(&'static str, &'static str)] = &[
        ("EMBEDRT_CUDA_SLOTS", "slots"),
        ("EMBEDRT_CUDA_GRAPHS", "graphs"),
        ("EMBEDRT_ATTENTION", "attention"),
        ("EMBEDRT_GELU", "gelu"),
        ("EMBEDRT_FFN_GEMM", "ffn_gemm"),
        ("EMBEDRT_SMALL_LINEAR", "small_linear"),
        ("EMBEDRT_SMALL_LAYERNORM", "small_layernorm"),
        ("EMBEDRT_SMALL_ATTENTION", "small_attention"),
        ("EMBEDRT_SMALL_LINEAR_8BIT", "small_linear_8bit"),
        ("EMBEDRT_EARLY_LAUNCH", "early_launch"),
        ("EMBEDRT_LARGE_BATCHES", "large_batches"),
        ("EMBEDRT_KERNEL_CACHE", "kernel_cache"),
    ];

    /// Sets one option from its text form (`slots=1`, `attention=scalar`, ...).
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        self.parse(key, value)
            .map_err(|why| Error::Input(format!("engine option {key}={value}: {why}")))
    }

    /// The defaults with every variable of [`Self::ENV_VARS`] that `lookup`
    /// finds applied (an empty value counts as unset). The caller decides where
    /// the values come from: `|name| std::env::var(name).ok()`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut options = EngineOptions::default();
        for (var, key) in Self::ENV_VARS {
            let Some(value) = lookup(var).filter(|v| !v.is_empty()) else {
                continue;
            };
            options
                .parse(key, &value)
                .map_err(|why| Error::Input(format!("{var}={value}: {why}")))?;
        }
        Ok(options)
    }

    fn parse(&mut self, key: &str, value: &str) -> std::result::Result<(), String> {
        let expected = || {
            let what = Self::KEYS.iter().find(|(k, _)| *k == key).map(|(_, w)| *w);
            format!("expected {}", what.unwrap_or("?"))
        };
        match key {
            "slots" => {
                self.slots = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_SLOTS).contains(n))
                    .ok_or_else(expected)?
            }
            "graphs" => self.graphs = on_off(value).ok_or_else(expected)?,
            "early_launch" => self.early_launch = on_off(value).ok_or_else(expected)?,
            "small_linear_8bit" => self.small_linear_8bit = on_off(value).ok_or_else(expected)?,
            "attention" => {
                self.attention = match value {
                    "tc" => Attention::TensorCores,
                    "tc-static" => Attention::TensorCoresStatic,
                    "tc2" => Attention::TensorCores2,
                    "tc4" => Attention::TensorCores4,
                    "mt2" => Attention::TensorCoresMt2,
                    "pipe" => Attention::TensorCoresPipe,
                    "wg" => Attention::Wgmma(WgmmaAttention::QInRegisters),
                    "wg-q" => Attention::Wgmma(WgmmaAttention::QShared),
                    "wg-qo" => Attention::Wgmma(WgmmaAttention::QSharedOverlapped),
                    "scalar" => Attention::Scalar,
                    _ => return Err(expected()),
                }
            }
            "gelu" => {
                self.gelu = match value {
                    "plan" => Gelu::Plan,
                    "exact" => Gelu::Exact,
                    "tanh" => Gelu::Tanh,
                    _ => return Err(expected()),
                }
            }
            "ffn_gemm" => {
                self.ffn_gemm = match value {
                    "cublaslt" => FfnGemm::Cublaslt,
                    "own" => FfnGemm::Own,
                    "own-c2" => FfnGemm::OwnClusters(2, 1),
                    "own-c4" => FfnGemm::OwnClusters(2, 2),
                    _ => return Err(expected()),
                }
            }
            "small_linear" => {
                self.small_linear_max_tokens = value.parse().map_err(|_| expected())?
            }
            "small_layernorm" => {
                self.small_layernorm = match value {
                    "next" => SmallLayerNorm::InNextKernel,
                    "ticket" => SmallLayerNorm::Ticket,
                    "stats" => SmallLayerNorm::Statistics,
                    _ => return Err(expected()),
                }
            }
            "small_attention" => {
                self.small_attention_fused = match value {
                    "fused" => true,
                    "separate" => false,
                    _ => return Err(expected()),
                }
            }
            "large_batches" => {
                self.large_batches = match value {
                    "auto" => LargeBatches::Auto,
                    "serial" => LargeBatches::Serial,
                    "concurrent" => LargeBatches::Concurrent,
                    _ => return Err(expected()),
                }
            }
            "kernel_cache" => self.kernel_cache = Some(PathBuf::from(value)),
            _ => {
                let keys: Vec<&str> = Self::KEYS.iter().map(|(k, _)| *k).collect();
                return Err(format!(
                    "unknown option; the options are {}",
                    keys.join(", ")
                ));
            }
        }
        Ok(())
    }
}

fn on_off(value: &str) -> Option<bool> {
    match value {
        "1" | "on" | "true" => Some(true),
        "0" | "off" | "false" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_map_onto_the_options_they_set() {
        let env = [
            ("EMBEDRT_CUDA_SLOTS", "1"),
            ("EMBEDRT_CUDA_GRAPHS", "0"),
            ("EMBEDRT_ATTENTION", "scalar"),
            ("EMBEDRT_GELU", "tanh"),
            ("EMBEDRT_FFN_GEMM", "own"),
            ("EMBEDRT_SMALL_LINEAR", "0"),
            ("EMBEDRT_SMALL_LAYERNORM", "next"),
            ("EMBEDRT_SMALL_ATTENTION", "fused"),
            ("EMBEDRT_SMALL_LINEAR_8BIT", "off"),
            ("EMBEDRT_EARLY_LAUNCH", "off"),
            ("EMBEDRT_LARGE_BATCHES", "serial"),
            ("EMBEDRT_KERNEL_CACHE", "/tmp/k"),
        ];
        let lookup = |n: &str| {
            env.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        };
        let o = EngineOptions::from_lookup(lookup).unwrap();
        assert_eq!(
            o,
            EngineOptions {
                slots: 1,
                graphs: false,
                attention: Attention::Scalar,
                gelu: Gelu::Tanh,
                ffn_gemm: FfnGemm::Own,
                small_linear_max_tokens: 0,
                small_layernorm: SmallLayerNorm::InNextKernel,
                small_attention_fused: true,
                small_linear_8bit: false,
                early_launch: false,
                large_batches: LargeBatches::Serial,
                kernel_cache: Some(PathBuf::from("/tmp/k")),
            }
        );
        // Every ENV_VARS key is one set() knows, and every KEYS key has a variable.
        assert_eq!(EngineOptions::ENV_VARS.len(), EngineOptions::KEYS.len());
    }

    #[test]
    fn nothing_set_or_empty_values_are_the_defaults() {
        assert_eq!(
            EngineOptions::from_lookup(|_| None).unwrap(),
            EngineOptions::default()
        );
        let empty = EngineOptions::from_lookup(|_| Some(String::new())).unwrap();
        assert_eq!(empty, EngineOptions::default());
        let d = EngineOptions::default();
        assert_eq!(
            (d.slots, d.graphs, d.small_linear_max_tokens, d.early_launch),
            (2, true, 64, true)
        );
    }

    #[test]
    fn bad_values_name_the_variable_and_what_it_takes() {
        let one = |var: &'static str, value: &'static str| {
            EngineOptions::from_lookup(move |n| (n == var).then(|| value.to_string()))
                .unwrap_err()
                .to_string()
        };
        let e = one("EMBEDRT_CUDA_SLOTS", "many");
        assert!(
            e.contains("EMBEDRT_CUDA_SLOTS=many: expected 1 to 4"),
            "{e}"
        );
        let e = one("EMBEDRT_CUDA_SLOTS", "9");
        assert!(e.contains("expected 1 to 4"), "{e}");
        let e = one("EMBEDRT_ATTENTION", "flash");
        assert!(
            e.contains(
                "EMBEDRT_ATTENTION=flash: expected tc, tc-static, tc2, tc4, mt2, pipe, wg, wg-q, \
                 wg-qo or scalar"
            ),
            "{e}"
        );
        let e = one("EMBEDRT_CUDA_GRAPHS", "maybe");
        assert!(e.contains("expected on or off"), "{e}");
        let e = one("EMBEDRT_EARLY_LAUNCH", "soon");
        assert!(
            e.contains("EMBEDRT_EARLY_LAUNCH=soon: expected on or off"),
            "{e}"
        );
        let e = EngineOptions::default()
            .set("slot", "1")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("engine option slot=1: unknown option; the options are slots,"),
            "{e}"
        );
    }

    #[test]
    fn set_takes_each_key() {
        let mut o = EngineOptions::default();
        assert_eq!(
            o.attention,
            Attention::Wgmma(WgmmaAttention::QSharedOverlapped)
        );
        o.set("attention", "wg-q").unwrap();
        assert_eq!(o.attention.wgmma(), Some(WgmmaAttention::QShared));
        for (k, v) in [
            ("slots", "3"),
            ("graphs", "off"),
            ("attention", "tc"),
            ("gelu", "exact"),
        ] {
            o.set(k, v).unwrap();
        }
        o.set("ffn_gemm", "own-c4").unwrap();
        assert_eq!(o.ffn_gemm.own_cluster(), Some((2, 2)));
        o.set("ffn_gemm", "own-c2").unwrap();
        assert_eq!(o.ffn_gemm.own_cluster(), Some((2, 1)));
        o.set("ffn_gemm", "cublaslt").unwrap();
        assert_eq!(o.ffn_gemm.own_cluster(), None);
        o.set("small_linear", "32").unwrap();
        o.set("small_layernorm", "ticket").unwrap();
        assert_eq!(o.small_layernorm, SmallLayerNorm::Ticket);
        let e = o.set("small_layernorm", "last").unwrap_err().to_string();
        assert!(e.contains("expected next, ticket or stats"), "{e}");
        o.set("small_layernorm", "stats").unwrap();
        assert_eq!(o.small_layernorm, SmallLayerNorm::Statistics);
        assert_eq!(
            (o.slots, o.graphs, o.small_linear_max_tokens),
            (3, false, 32)
        );
        assert_eq!(
            (o.attention, o.gelu, o.ffn_gemm),
            (Attention::TensorCores, Gelu::Exact, FfnGemm::Cublaslt)
        );
        o.set("large_batches", "concurrent").unwrap();
        assert!(!o.large_batches.serial(false));
        assert!(LargeBatches::Auto.serial(false) && !LargeBatches::Auto.serial(true));
        assert!(LargeBatches::Serial.serial(true));
        o.set("gelu", "plan").unwrap();
        assert_eq!(o.gelu.resolve(GeluForm::Tanh), GeluForm::Tanh);
        assert_eq!(Gelu::Exact.resolve(GeluForm::Tanh), GeluForm::Exact);
        assert_eq!(Gelu::Tanh.resolve(GeluForm::Exact), GeluForm::Tanh);
    }
}
