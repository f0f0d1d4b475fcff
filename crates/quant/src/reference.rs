//! The CPU fake-quant reference as an evaluator: embeds held-out sentences
//! with fp32 and with a calibration table, and runs the fallback search
//! with it.

use std::sync::Arc;

use embedrt_core::quant::{CalibrationTable, GemmSite, MeasuredAccuracy};
use embedrt_core::{sts, Embedder, Result, SentenceModel};
use embedrt_cpu::CpuEngine;

use crate::fallback::{self, Accuracy, AccuracyTarget, FallbackChoice};
use crate::{cosine_accuracy, with_fallback};

const BATCH: usize = 64;

/// An STS set to measure Spearman on, besides the held-out cosine.
pub struct StsSet {
    pub pairs: Vec<sts::StsPair>,
}

/// Spearman x 100 of `embedder` on `set`.
pub fn spearman(embedder: &Embedder, set: &StsSet) -> Result<f64> {
    let sentences: Vec<&str> = set
        .pairs
        .iter()
        .flat_map(|p| [p.sentence1.as_str(), p.sentence2.as_str()])
        .collect();
    let v = embedder.embed(&sentences, BATCH, false, &|_| {})?;
    let cos: Vec<f64> = v
        .chunks_exact(2)
        .map(|p| sts::cosine(&p[0], &p[1]))
        .collect();
    let gold: Vec<f64> = set.pairs.iter().map(|p| p.score).collect();
    Ok(100.0 * sts::spearman(&cos, &gold))
}

/// Measures fake-quant models against fp32 on the same sentences.
pub struct CpuEvaluator<'a> {
    model: &'a SentenceModel,
    fp32: CpuEngine,
    held_out: &'a [String],
    reference: Vec<Vec<f32>>,
    sts: Option<&'a StsSet>,
    pub spearman_fp32: Option<f64>,
}

impl<'a> CpuEvaluator<'a> {
    pub fn new(
        model: &'a SentenceModel,
        fp32: CpuEngine,
        held_out: &'a [String],
        sts: Option<&'a StsSet>,
    ) -> Result<Self> {
        let embedder = Embedder::new(model.clone(), Arc::new(fp32.clone()));
        let reference = embedder.embed(held_out, BATCH, false, &|_| {})?;
        let spearman_fp32 = sts.map(|s| spearman(&embedder, s)).transpose()?;
        Ok(CpuEvaluator {
            model,
            fp32,
            held_out,
            reference,
            sts,
            spearman_fp32,
        })
    }

    /// Accuracy of the fake-quant model of `table`.
    pub fn evaluate(&self, table: &CalibrationTable) -> Result<Accuracy> {
        let engine = self.fp32.clone().with_calibration(table)?;
        let embedder = Embedder::new(self.model.clone(), Arc::new(engine));
        let q = embedder.embed(self.held_out, BATCH, false, &|_| {})?;
        let mut acc = cosine_accuracy(&self.reference, &q);
        acc.spearman = self.sts.map(|s| spearman(&embedder, s)).transpose()?;
        Ok(acc)
    }

    /// The fallback search over every GEMM with this evaluator; the table
    /// comes back with its fallback list and measured accuracy filled in.
    /// `step(done_evaluations)` is told after each evaluation.
    pub fn choose_fallback(
        &self,
        table: &CalibrationTable,
        target: &AccuracyTarget,
        step: &dyn Fn(usize),
    ) -> Result<(CalibrationTable, FallbackChoice)> {
        let sites = GemmSite::all(self.fp32.num_layers());
        let mut target = target.clone();
        target.spearman_fp32 = self.spearman_fp32;
        let mut n = 0;
        let choice = fallback::choose(&sites, &target, |fb| {
            let acc = self.evaluate(&with_fallback(table, fb));
            n += 1;
            step(n);
            acc
        })?;
        let mut out = with_fallback(table, &choice.fallback);
        out.accuracy = Some(self.measured(&choice.accuracy));
        Ok((out, choice))
    }

    pub fn measured(&self, acc: &Accuracy) -> MeasuredAccuracy {
        MeasuredAccuracy {
            mean_cosine: acc.mean_cosine,
            min_cosine: acc.min_cosine,
            held_out_sentences: self.held_out.len(),
            spearman_fp32: self.spearman_fp32,
            spearman_quantized: acc.spearman,
        }
    }
}
