//! The CPU engine against sentence-transformers: tiny random-weight MPNet
//! and BERT fixtures (every pooling mode, edge texts) and the real
//! all-MiniLM-L6-v2 (golden embeddings and STS-B dev Spearman).

mod common;

use common::*;
use embedrt_core::{sts, TokenBatch};

#[test]
fn tiny_fixtures_match_sentence_transformers() {
    for name in TINY_FIXTURES {
        let expected = read_expected(name);
        let embedder = cpu_embedder(&fixture_dir(name));
        assert_eq!(
            embedder.model.max_seq_length, expected.max_seq_length,
            "{name}"
        );
        assert_eq!(embedder.model.normalize, expected.normalize, "{name}");
        let encoded = embedder.tokenize(&expected.texts).unwrap();
        for (i, (enc, want)) in encoded.iter().zip(&expected.token_ids).enumerate() {
            assert_eq!(
                &enc.ids, want,
                "{name}: token ids of text {i} {:?}",
                expected.texts[i]
            );
        }
        let got = embedder
            .embed(&expected.texts, 8, expected.normalize, &|_| {})
            .unwrap();
        for (i, (g, w)) in got.iter().zip(&expected.embeddings).enumerate() {
            let diff = max_abs_diff(g, w);
            assert!(
                diff <= 1e-5,
                "{name}: text {i} {:?}: max abs diff {diff}",
                expected.texts[i]
            );
        }
    }
}

#[derive(serde::Deserialize)]
struct Golden {
    sentences: Vec<String>,
    input_ids: Vec<Vec<u32>>,
    embeddings: Vec<Vec<f32>>,
}

#[test]
fn minilm_matches_golden_embeddings() {
    let golden: Golden = serde_json::from_slice(
        &std::fs::read(shared_data("golden/minilm-stsb-dev-256.json")).unwrap(),
    )
    .unwrap();
    let embedder = cpu_embedder(&minilm_dir());
    let encoded = embedder.tokenize(&golden.sentences).unwrap();
    for (i, (enc, want)) in encoded.iter().zip(&golden.input_ids).enumerate() {
        assert_eq!(&enc.ids, want, "token ids of sentence {i}");
    }
    let got = embedder
        .embed(&golden.sentences, 32, true, &|_| {})
        .unwrap();
    assert_eq!(got.len(), golden.embeddings.len());
    for (i, (g, w)) in got.iter().zip(&golden.embeddings).enumerate() {
        let diff = max_abs_diff(g, w);
        assert!(diff <= 1e-5, "sentence {i}: max abs diff {diff}");
    }
}

#[test]
fn minilm_stsb_dev_spearman() {
    let text = std::fs::read_to_string(shared_data("stsb/stsb-en-dev.csv")).unwrap();
    let pairs = sts::parse_csv(&text).unwrap();
    assert_eq!(pairs.len(), 1500);
    let embedder = cpu_embedder(&minilm_dir());
    let sentences: Vec<&str> = pairs
        .iter()
        .flat_map(|p| [p.sentence1.as_str(), p.sentence2.as_str()])
        .collect();
    let v = embedder.embed(&sentences, 64, false, &|_| {}).unwrap();
    let cos: Vec<f64> = v
        .chunks_exact(2)
        .map(|p| sts::cosine(&p[0], &p[1]))
        .collect();
    let gold: Vec<f64> = pairs.iter().map(|p| p.score).collect();
    let spearman = 100.0 * sts::spearman(&cos, &gold);
    // sentence-transformers fp32: 86.7163
    assert!((spearman - 86.716).abs() <= 0.01, "spearman {spearman}");
}

#[test]
fn minilm_edge_texts_give_unit_vectors() {
    let embedder = cpu_embedder(&minilm_dir());
    let long = "the quick brown fox jumps over the lazy dog ".repeat(400);
    let texts = [
        "",
        " \t\n ",
        long.as_str(),
        "Crème brûlée, naïve café — Ångström",
        "我爱自然语言处理。東京は日本の首都です。",
        "I love 🍕 and 🎉 👍🏽",
        "ctrl\u{0}\u{7}\u{1b}[0m\r\nend",
    ];
    let enc = embedder.tokenize(&texts).unwrap();
    assert_eq!(enc[2].ids.len(), embedder.model.max_seq_length);
    assert!(enc[2].truncated && !enc[0].truncated);
    let v = embedder.embed(&texts, 4, true, &|_| {}).unwrap();
    for (t, e) in texts.iter().zip(&v) {
        let norm: f32 = e.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(e.iter().all(|x| x.is_finite()), "{t:?}");
        assert!((norm - 1.0).abs() < 1e-5, "{t:?}: norm {norm}");
    }
}

/// A sentence's embedding must not depend on its batch: alone, first in a
/// batch of mixed lengths, or last.
#[test]
fn results_do_not_depend_on_batch_composition() {
    for name in ["tiny-mpnet-mean-norm", "tiny-bert-max"] {
        let expected = read_expected(name);
        let embedder = cpu_embedder(&fixture_dir(name));
        let seqs: Vec<Vec<u32>> = embedder
            .tokenize(&expected.texts)
            .unwrap()
            .into_iter()
            .map(|e| e.ids)
            .collect();
        let hidden = embedder.backend.hidden_size();
        let all = embedder
            .backend
            .embed(&TokenBatch::from_sequences(&seqs))
            .unwrap();
        for (i, seq) in seqs.iter().enumerate() {
            let alone = embedder
                .backend
                .embed(&TokenBatch::from_sequences(&[seq]))
                .unwrap();
            let row = &all[i * hidden..(i + 1) * hidden];
            let diff = max_abs_diff(&alone, row);
            assert!(
                diff <= 1e-6,
                "{name}: text {i} alone vs batched differs by {diff}"
            );
        }
        // Same batch twice: bit-identical (deterministic).
        let again = embedder
            .backend
            .embed(&TokenBatch::from_sequences(&seqs))
            .unwrap();
        assert_eq!(all, again, "{name}: two runs differ");
    }
}

#[test]
fn invalid_batches_are_errors_not_panics() {
    let embedder = cpu_embedder(&fixture_dir("tiny-bert-mean-norm"));
    let too_long = vec![5u32; embedder.model.max_seq_length + 1];
    for bad in [
        TokenBatch::from_sequences(&[vec![2u32, 100_000, 3]]),
        TokenBatch::from_sequences(&[Vec::<u32>::new()]),
        TokenBatch::from_sequences(&[too_long]),
    ] {
        assert!(embedder.backend.embed(&bad).is_err());
    }
}
