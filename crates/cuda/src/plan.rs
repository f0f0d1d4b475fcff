//! The plan file: a model prepared for one GPU, as `embedrt build` writes it.
//!
//! Layout (all integers little-endian):
//! ```text
//! magic    16 bytes  "EMBEDRT-PLAN" + 4 zero bytes
//! version   u32      PLAN_FORMAT_VERSION
//! hlen      u64      length of the header
//! header    hlen     JSON (PlanHeader)
//! tokenizer          header.tokenizer_bytes: the raw tokenizer.json
//! weights            header.weight_bytes: every tensor in the target precision
//! checksum  32 bytes SHA-256 of everything before it
//! ```
//! Nothing here needs a GPU, so the format and its error messages are tested
//! on any machine.

use std::path::Path;
use std::str::FromStr;

use embedrt_core::{
    Architecture, Error, GemmKind, ModelConfig, PoolingMode, Result, TransformerWeights,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const PLAN_MAGIC: &[u8; 16] = b"EMBEDRT-PLAN\0\0\0\0";
/// Bump whenever the header, the weight layout or the kernels' expectations change.
/// Version 2 added quantized plans (`PlanHeader::quant`); version 1 plans
/// (fp32/fp16, no `quant`) still load unchanged.
pub const PLAN_FORMAT_VERSION: u32 = 2;
/// Oldest plan format this embedrt still reads.
pub const PLAN_FORMAT_OLDEST: u32 = 1;
const PREFIX_LEN: usize = 16 + 4 + 8;
const CHECKSUM_LEN: usize = 32;
/// Tensors start on 16-byte boundaries (vector loads, cuBLASLt's minimum).
pub const TENSOR_ALIGN: usize = 16;
/// cuBLASLt workspace, part of the workspace bytes.
pub const GEMM_WORKSPACE_BYTES: usize = 32 << 20;

pub use crate::quant_plan::QuantInfo;
use embedrt_core::quant::GeluForm;
pub use embedrt_core::Precision;

/// The GELU a float plan gets without `--gelu`: tanh for fp16, where
/// cuBLASLt's FFN-in epilogue then replaces the GELU pass (H200 run 28:
/// MPNet-base W1 +9%, W2's calls -11%, cosine to the fp32 plan unchanged at
/// 0.9999992; MiniLM STS-B dev Spearman 86.7107 against fp32's 86.7173; the
/// tanh form is also what TensorRT's GELU plugin computes); exact for fp32,
/// the accuracy reference.
pub fn default_gelu(precision: Precision) -> GeluForm {
    match precision {
        Precision::Fp16 => GeluForm::Tanh,
        Precision::Fp32 => GeluForm::Exact,
    }
}

/// One `BATCHxSEQ` point of a profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub batch: usize,
    pub seq: usize,
}

impl Shape {
    pub fn tokens(&self) -> usize {
        self.batch * self.seq
    }
}

/// The shapes a plan is built for: GEMM algorithms are tuned around `opt`;
/// a batch holds at most `max.batch` sequences of at most `max.seq` tokens
/// and, together, at most `max_tokens` tokens. Memory is sized by that
/// token budget, not by `max.batch x max.seq`: every activation buffer is
/// per token (attention never materializes scores), so a plan that accepts
/// 1024 x 512 shapes needs no 512k-token workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub min: Shape,
    pub opt: Shape,
    pub max: Shape,
    /// Tokens in flight per batch; 0 (plans written before the budget
    /// existed) means `max.batch x max.seq`.
    #[serde(default)]
    pub max_tokens: usize,
}

/// The default token budget of a batch. Run 20 (docs/PERFORMANCE.md)
/// measured MPNet-base fp16 on the H200: 32k tokens keep `serve` at
/// 1,766 MiB in all (two slots of 515 MiB; target <= 2 GiB), and W2 ran
/// 11% slower at 16k, so 32k is the default.
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 32768;

impl Profile {
    pub const DEFAULT: &'static str = "1x8:64x128:256x512";
    /// The profile of the plan built without `--plan` (the default GPU
    /// path): GEMMs tuned at W1's 256 x 128, up to 1024 short sequences per
    /// batch so short-sentence batches fill the token budget. Memory is the
    /// token budget's; run 20 measured this profile at 32k tokens.
    pub const SERVING: &'static str = "1x8:256x128:1024x512";

    /// Caps every sequence length at the model's `max_seq_length`.
    pub fn capped(mut self, max_seq_length: usize) -> Self {
        for s in [&mut self.min, &mut self.opt, &mut self.max] {
            s.seq = s.seq.min(max_seq_length);
        }
        self
    }

    /// Tokens one batch may hold: the budget, at least one longest
    /// sequence, at most `max.batch x max.seq`.
    pub fn token_budget(&self) -> usize {
        let all = self.max.tokens();
        match self.max_tokens {
            0 => all,
            t => t.clamp(self.max.seq.min(all), all),
        }
    }

    /// The same profile with another token budget (checked against the shapes).
    pub fn with_max_tokens(mut self, tokens: usize) -> Result<Self> {
        if tokens < self.max.seq {
            return Err(Error::Input(format!(
                "--max-batch-tokens {tokens}: a batch must hold at least one sequence of the profile's MAX length {}",
                self.max.seq
            )));
        }
        self.max_tokens = tokens;
        Ok(self)
    }
}

impl FromStr for Profile {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::Input(format!(
                "profile {s:?}: {why}; expected MIN:OPT:MAX, each BATCHxSEQ, e.g. {}",
                Profile::DEFAULT
            ))
        };
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 3 {
            return Err(bad("needs three shapes"));
        }
        let mut shapes = Vec::with_capacity(3);
        for p in parts {
            let (b, q) = p.split_once('x').ok_or_else(|| bad("a shape lacks 'x'"))?;
            let batch: usize = b.parse().map_err(|_| bad("batch is not a number"))?;
            let seq: usize = q
                .parse()
                .map_err(|_| bad("sequence length is not a number"))?;
            if batch == 0 || seq == 0 {
                return Err(bad("sizes must be at least 1"));
            }
            shapes.push(Shape { batch, seq });
        }
        let (min, opt, max) = (shapes[0], shapes[1], shapes[2]);
        let ordered = |a: Shape, b: Shape| a.batch <= b.batch && a.seq <= b.seq;
        if !ordered(min, opt) || !ordered(opt, max) {
            return Err(bad(
                "shapes must grow: MIN <= OPT <= MAX in batch and length",
            ));
        }
        Ok(Profile {
            min,
            opt,
            max,
            max_tokens: DEFAULT_MAX_BATCH_TOKENS,
        })
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = |x: Shape| format!("{}x{}", x.batch, x.seq);
        write!(f, "{}:{}:{}", s(self.min), s(self.opt), s(self.max))
    }
}

/// The GPU a plan was built for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuTarget {
    pub name: String,
    pub cc_major: i32,
    pub cc_minor: i32,
}

/// A cuBLASLt algorithm chosen at build time for one GEMM at one token count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GemmChoice {
    /// "qkv", "attn_out", "ffn_in" or "ffn_out".
    pub gemm: String,
    pub tokens: usize,
    /// The opaque `cublasLtMatmulAlgo_t` (64 bytes), hex.
    pub algo: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorEntry {
    pub name: String,
    pub shape: Vec<usize>,
    /// Byte offset inside the weight section.
    pub offset: usize,
    pub bytes: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanHeader {
    pub embedrt_version: String,
    pub precision: Precision,
    pub config: ModelConfig,
    pub pooling: PoolingMode,
    pub normalize: bool,
    pub max_seq_length: usize,
    pub profile: Profile,
    pub gpu: GpuTarget,
    pub cublaslt_version: usize,
    pub gemm_algos: Vec<GemmChoice>,
    pub tensors: Vec<TensorEntry>,
    pub tokenizer_bytes: usize,
    pub weight_bytes: usize,
    /// Device bytes besides the weights that loading the plan allocates.
    pub workspace_bytes: usize,
    /// The FFN's GELU: exact (erf, the models' definition) or tanh, which
    /// cuBLASLt's FFN-in epilogue computes in place of a GELU pass over the
    /// intermediate tensor ([`default_gelu`]). A quantized plan's is its
    /// table's. Plans written before this field: exact.
    #[serde(default)]
    pub gelu: GeluForm,
    /// Quantized plans only (format version 2): 8-bit GEMMs, their scales,
    /// what fell back to fp16 and the accuracy measured at build time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quant: Option<crate::quant_plan::QuantInfo>,
}

impl PlanHeader {
    /// "fp32" or "fp16", or a quantized plan's 8-bit format ("int8", "fp8").
    pub fn precision_name(&self) -> &'static str {
        match &self.quant {
            Some(q) => q.format.name(),
            None => self.precision.name(),
        }
    }
}

pub struct Plan {
    pub header: PlanHeader,
    pub tokenizer_json: Vec<u8>,
    pub weights: Vec<u8>,
}

impl Plan {
    /// Writes the plan atomically (temp file + rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let header = serde_json::to_vec(&self.header)
            .map_err(|e| Error::Backend(format!("cannot encode the plan header: {e}")))?;
        let mut bytes = Vec::with_capacity(
            PREFIX_LEN + header.len() + self.tokenizer_json.len() + self.weights.len() + 32,
        );
        bytes.extend_from_slice(PLAN_MAGIC);
        bytes.extend_from_slice(&PLAN_FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&self.tokenizer_json);
        bytes.extend_from_slice(&self.weights);
        let sum = Sha256::digest(&bytes);
        bytes.extend_from_slice(&sum);
        embedrt_core::fsutil::write_atomic(path, &bytes).map_err(|e| Error::io(path, e))
    }

    /// Reads and verifies a plan: magic, format version, length, checksum.
    /// Each failure names its cause.
    pub fn read(path: &Path) -> Result<Plan> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&bytes).map_err(|why| Error::Model(format!("plan {}: {why}", path.display())))
    }

    fn parse(bytes: &[u8]) -> std::result::Result<Plan, String> {
        if bytes.len() < 12 || bytes[..12] != PLAN_MAGIC[..12] {
            return Err("not an embedrt plan file (bad magic bytes)".into());
        }
        if bytes.len() < PREFIX_LEN + CHECKSUM_LEN {
            return Err(format!(
                "truncated: {} bytes, shorter than the fixed header",
                bytes.len()
            ));
        }
        if bytes[12..16] != PLAN_MAGIC[12..16] {
            return Err("not an embedrt plan file (bad magic bytes)".into());
        }
        let version = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
        if !(PLAN_FORMAT_OLDEST..=PLAN_FORMAT_VERSION).contains(&version) {
            return Err(format!(
                "written in plan format version {version}, this embedrt ({}) reads versions \
                 {PLAN_FORMAT_OLDEST} to {PLAN_FORMAT_VERSION}; rebuild the plan with `embedrt build`",
                env!("CARGO_PKG_VERSION")
            ));
        }
        let mut hlen = [0u8; 8];
        hlen.copy_from_slice(&bytes[20..28]);
        let hlen = u64::from_le_bytes(hlen) as usize;
        let body_end = bytes.len() - CHECKSUM_LEN;
        if hlen > body_end - PREFIX_LEN {
            return Err(format!(
                "truncated: the header claims {hlen} bytes but the file holds {}",
                bytes.len()
            ));
        }
        let stored_sum = &bytes[body_end..];
        let header: std::result::Result<PlanHeader, _> =
            serde_json::from_slice(&bytes[PREFIX_LEN..PREFIX_LEN + hlen]);
        let sections_fit = |h: &PlanHeader| {
            PREFIX_LEN
                .checked_add(hlen)
                .and_then(|n| n.checked_add(h.tokenizer_bytes))
                .and_then(|n| n.checked_add(h.weight_bytes))
        };
        // Length before checksum: a short file says "truncated", not "corrupted".
        if let Ok(h) = &header {
            match sections_fit(h) {
                Some(n) if n == body_end => {}
                Some(n) if n > body_end => {
                    return Err(format!(
                        "truncated: {} bytes, the header describes {}",
                        bytes.len(),
                        n + CHECKSUM_LEN
                    ))
                }
                _ => {}
            }
        }
        if Sha256::digest(&bytes[..body_end]).as_slice() != stored_sum {
            return Err("corrupted: the SHA-256 checksum does not match the contents".into());
        }
        let header = header.map_err(|e| format!("corrupted header: {e}"))?;
        if sections_fit(&header) != Some(body_end) {
            return Err("corrupted: section lengths do not add up to the file size".into());
        }
        let tok_start = PREFIX_LEN + hlen;
        let w_start = tok_start + header.tokenizer_bytes;
        for t in &header.tensors {
            if t.offset
                .checked_add(t.bytes)
                .is_none_or(|end| end > header.weight_bytes)
            {
                return Err(format!(
                    "corrupted: tensor {} lies outside the weights",
                    t.name
                ));
            }
        }
        Ok(Plan {
            tokenizer_json: bytes[tok_start..w_start].to_vec(),
            weights: bytes[w_start..body_end].to_vec(),
            header,
        })
    }

    pub fn tensor(&self, name: &str) -> Result<&TensorEntry> {
        self.header
            .tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| Error::Model(format!("plan lacks tensor {name:?}")))
    }
}

/// Refuses a plan built for another GPU generation.
pub fn check_target(header: &PlanHeader, name: &str, cc: (i32, i32)) -> Result<()> {
    let g = &header.gpu;
    if (g.cc_major, g.cc_minor) != cc {
        return Err(Error::Model(format!(
            "plan was built for compute capability {}.{} ({}), this GPU is {}.{} ({name}); \
             rebuild it on this GPU with `embedrt build`",
            g.cc_major, g.cc_minor, g.name, cc.0, cc.1
        )));
    }
    Ok(())
}

/// The names the engine looks weights up by.
pub fn layer_tensor(layer: usize, what: &str) -> String {
    format!("layer.{layer}.{what}")
}

/// Every weight in the engine's layout and the target precision: Q, K and V
/// stacked into one `[3H, H]` matrix (one GEMM), BERT's token-type row 0
/// only, everything else as Hugging Face stores it (`[out, in]`).
pub fn pack_weights(
    weights: &TransformerWeights,
    precision: Precision,
) -> (Vec<TensorEntry>, Vec<u8>) {
    pack_weights_with(weights, precision, &|_, _| None)
}

/// A GEMM weight in its 8-bit form: the bytes (`[out, in]`, 1 per
/// parameter) and the per-output-channel scales.
pub type PackedGemm = (Vec<u8>, Vec<f32>);

/// Chooses a GEMM's packing: `((layer, kind), weight [out, in])` -> its 8-bit
/// form, or None to keep the plan's precision.
pub type QuantizeGemm<'a> = dyn Fn((usize, GemmKind), &[f32]) -> Option<PackedGemm> + 'a;

/// As [`pack_weights`]; `quantize((layer, kind), weight [out, in])` gives a
/// GEMM's 8-bit bytes and scales, stored as `....weight` (bytes) and
/// `....weight_scale` (fp32), or None to keep it in `precision`.
pub fn pack_weights_with(
    weights: &TransformerWeights,
    precision: Precision,
    quantize: &QuantizeGemm,
) -> (Vec<TensorEntry>, Vec<u8>) {
    let mut p = Packer {
        precision,
        entries: Vec::new(),
        blob: Vec::new(),
    };
    let e = &weights.embeddings;
    let h = e.word.shape[1];
    p.floats(
        "embeddings.word".into(),
        e.word.shape.clone(),
        &[&e.word.data],
    );
    p.floats(
        "embeddings.position".into(),
        e.position.shape.clone(),
        &[&e.position.data],
    );
    if let Some(tt) = &e.token_type {
        p.floats("embeddings.token_type0".into(), vec![h], &[&tt.data[..h]]);
    }
    p.floats(
        "embeddings.norm.gamma".into(),
        vec![h],
        &[&e.norm.gamma.data],
    );
    p.floats("embeddings.norm.beta".into(), vec![h], &[&e.norm.beta.data]);
    for (i, l) in weights.layers.iter().enumerate() {
        let qkv = [
            l.query.weight.data.as_slice(),
            l.key.weight.data.as_slice(),
            l.value.weight.data.as_slice(),
        ]
        .concat();
        p.gemm((i, GemmKind::Qkv), vec![3 * h, h], &qkv, quantize);
        p.floats(
            layer_tensor(i, "qkv.bias"),
            vec![3 * h],
            &[&l.query.bias.data, &l.key.bias.data, &l.value.bias.data],
        );
        for (kind, lin) in [
            (GemmKind::AttnOut, &l.attn_out),
            (GemmKind::FfnIn, &l.ffn_in),
            (GemmKind::FfnOut, &l.ffn_out),
        ] {
            p.gemm(
                (i, kind),
                lin.weight.shape.clone(),
                &lin.weight.data,
                quantize,
            );
            p.floats(
                layer_tensor(i, &format!("{}.bias", kind.name())),
                lin.bias.shape.clone(),
                &[&lin.bias.data],
            );
        }
        for (name, n) in [("attn_norm", &l.attn_norm), ("ffn_norm", &l.ffn_norm)] {
            p.floats(
                layer_tensor(i, &format!("{name}.gamma")),
                vec![h],
                &[&n.gamma.data],
            );
            p.floats(
                layer_tensor(i, &format!("{name}.beta")),
                vec![h],
                &[&n.beta.data],
            );
        }
    }
    if let Some(b) = &weights.relative_attention_bias {
        p.floats(
            "relative_attention_bias".into(),
            b.shape.clone(),
            &[&b.data],
        );
    }
    (p.entries, p.blob)
}

/// The weight section being written: tensors on 16-byte boundaries.
struct Packer {
    precision: Precision,
    entries: Vec<TensorEntry>,
    blob: Vec<u8>,
}

impl Packer {
    fn raw(&mut self, name: String, shape: Vec<usize>, bytes: &[u8]) {
        while !self.blob.len().is_multiple_of(TENSOR_ALIGN) {
            self.blob.push(0);
        }
        let offset = self.blob.len();
        self.blob.extend_from_slice(bytes);
        self.entries.push(TensorEntry {
            name,
            shape,
            offset,
            bytes: bytes.len(),
        });
    }

    fn floats(&mut self, name: String, shape: Vec<usize>, parts: &[&[f32]]) {
        let mut bytes = Vec::new();
        for &v in parts.iter().flat_map(|p| p.iter()) {
            match self.precision {
                Precision::Fp32 => bytes.extend_from_slice(&v.to_le_bytes()),
                Precision::Fp16 => bytes.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            }
        }
        self.raw(name, shape, &bytes);
    }

    /// A GEMM weight: 8-bit with its scales where `quantize` says so.
    fn gemm(
        &mut self,
        site: (usize, GemmKind),
        shape: Vec<usize>,
        w: &[f32],
        quantize: &QuantizeGemm,
    ) {
        let name = layer_tensor(site.0, &format!("{}.weight", site.1.name()));
        match quantize(site, w) {
            Some((bytes, scales)) => {
                let out = shape[0];
                self.raw(name.clone(), shape, &bytes);
                let sb: Vec<u8> = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
                self.raw(format!("{name}_scale"), vec![out], &sb);
            }
            None => self.floats(name, shape, &[w]),
        }
    }
}

/// Device buffers one execution slot needs besides the weights, sized by
/// the profile's token budget; `(name, bytes)`. The engine allocates
/// exactly these.
pub fn workspace_layout(
    config: &ModelConfig,
    profile: &Profile,
    precision: Precision,
) -> Vec<(&'static str, usize)> {
    let (t, max) = (profile.token_budget(), profile.max);
    let (h, s) = (config.hidden_size, precision.bytes());
    let mut v = vec![
        ("hidden", t * h * s),
        ("qkv", t * 3 * h * s),
        ("context", t * h * s),
        ("scratch", t * h * s),
        ("intermediate", t * config.intermediate_size * s),
        ("tokens", staged_u32s(t, max.batch) * 4),
        ("pooled", max.batch * h * 4),
        ("gemm_workspace", GEMM_WORKSPACE_BYTES),
    ];
    if config.architecture == Architecture::Mpnet {
        let span = (2 * max.seq).saturating_sub(1);
        v.push(("bucket_table", span * 4));
        // The bias of every key - query and head as fp32 (attention_pipe.cu).
        v.push(("bias_table", config.num_attention_heads * span * 4));
    }
    v
}

/// u32s staged for one upload of a batch of `tokens` tokens in `seqs`
/// sequences: ids and positions (`tokens` each), `seqs + 1` offsets, the
/// normalize flag (last).
pub fn staged_u32s(tokens: usize, seqs: usize) -> usize {
    2 * tokens + seqs + 2
}

pub fn workspace_bytes(config: &ModelConfig, profile: &Profile, precision: Precision) -> usize {
    workspace_layout(config, profile, precision)
        .iter()
        .map(|(_, b)| b)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mpnet_base() -> ModelConfig {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny-mpnet-cls/config.json");
        let mut c = ModelConfig::from_file(&path).expect("fixture config");
        // all-mpnet-base-v2's sizes on the fixture's architecture.
        c.hidden_size = 768;
        c.intermediate_size = 3072;
        c.num_attention_heads = 12;
        c.num_hidden_layers = 12;
        c
    }

    #[test]
    fn workspace_follows_the_token_budget_not_batch_times_length() {
        let c = mpnet_base();
        let wide: Profile = "1x8:256x128:1024x512".parse().unwrap();
        assert_eq!(wide.token_budget(), DEFAULT_MAX_BATCH_TOKENS);
        let narrow: Profile = "1x8:64x128:64x512".parse().unwrap();
        // Same budget, 16x fewer batch x length: the same bytes except the
        // per-sequence staging and pooled rows (1024 x 768 fp32 = 3 MiB).
        let (a, b) = (
            workspace_bytes(&c, &wide, Precision::Fp16),
            workspace_bytes(&c, &narrow, Precision::Fp16),
        );
        assert!(a - b < (4 << 20), "{a} vs {b}");
        // 32k tokens of MPNet-base in fp16: hidden, qkv, context, scratch,
        // intermediate = 32768 * (6 * 768 + 3072) * 2 bytes, plus the cuBLASLt workspace.
        let activations = DEFAULT_MAX_BATCH_TOKENS * (6 * 768 + 3072) * 2;
        assert_eq!(DEFAULT_MAX_BATCH_TOKENS, 32768);
        assert!(a >= activations + GEMM_WORKSPACE_BYTES, "{a}");
        assert!(a < activations + GEMM_WORKSPACE_BYTES + (4 << 20), "{a}");
        // Twice the budget, twice the activations.
        let big = wide.with_max_tokens(65536).unwrap();
        let d = workspace_bytes(&c, &big, Precision::Fp16);
        assert!(d - a >= activations, "{d} vs {a}");
    }

    #[test]
    fn token_budget_is_bounded_by_the_shapes() {
        let p: Profile = "1x8:4x64:8x128".parse().unwrap();
        // 8 x 128 = 1024 tokens at most, whatever the budget says.
        assert_eq!(p.token_budget(), 1024);
        assert_eq!(p.with_max_tokens(500).unwrap().token_budget(), 500);
        assert!(
            p.with_max_tokens(100).is_err(),
            "below one MAX-length sequence"
        );
        // Plans written before the budget existed read 0: batch x length.
        let old = Profile { max_tokens: 0, ..p };
        assert_eq!(old.token_budget(), 1024);
        let json =
            r#"{"min":{"batch":1,"seq":8},"opt":{"batch":4,"seq":64},"max":{"batch":8,"seq":128}}"#;
        let parsed: Profile = serde_json::from_str(json).unwrap();
        assert_eq!(parsed.token_budget(), 1024);
    }
}
