//! Prometheus metrics, kept by hand: a few counters, gauges and fixed-bucket
//! histograms rendered in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
const TOKEN_BUCKETS: &[f64] = &[
    16.0, 64.0, 256.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0,
];

#[derive(Clone, Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

struct Batches {
    size: Histogram,
    tokens: Histogram,
    inference: Histogram,
}

/// What one device has done since the server started (across reloads).
#[derive(Default)]
struct DeviceCounters {
    batches: u64,
    sequences: u64,
    tokens: u64,
    busy_seconds: f64,
    failures: u64,
}

/// Everything `/metrics` reports. Shared by the HTTP layer and the batchers.
pub struct Metrics {
    /// (route, status) -> request latency.
    requests: Mutex<BTreeMap<(String, u16), Histogram>>,
    batches: Mutex<Batches>,
    queue_depth: AtomicI64,
    dropped_inputs: AtomicU64,
    models_loaded: AtomicI64,
    reloads: Mutex<BTreeMap<&'static str, u64>>,
    /// Device label -> its counters.
    devices: Mutex<BTreeMap<String, DeviceCounters>>,
    retried_inputs: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            batches: Mutex::new(Batches {
                size: Histogram::new(SIZE_BUCKETS),
                tokens: Histogram::new(TOKEN_BUCKETS),
                inference: Histogram::new(LATENCY_BUCKETS),
            }),
            queue_depth: AtomicI64::new(0),
            dropped_inputs: AtomicU64::new(0),
            models_loaded: AtomicI64::new(0),
            reloads: Mutex::new(BTreeMap::new()),
            devices: Mutex::new(BTreeMap::new()),
            retried_inputs: AtomicU64::new(0),
        }
    }

    pub fn request_done(&self, route: &str, status: u16, elapsed: Duration) {
        let mut map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((route.to_string(), status))
            .or_insert_with(|| Histogram::new(LATENCY_BUCKETS))
            .observe(elapsed.as_secs_f64());
    }

    /// One engine call on `device`, whatever its outcome.
    pub fn batch_ran(&self, device: &str, sequences: usize, tokens: usize, elapsed: Duration) {
        {
            let mut b = self.batches.lock().unwrap_or_else(|e| e.into_inner());
            b.size.observe(sequences as f64);
            b.tokens.observe(tokens as f64);
            b.inference.observe(elapsed.as_secs_f64());
        }
        let mut d = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        let c = d.entry(device.to_string()).or_default();
        c.batches += 1;
        c.sequences += sequences as u64;
        c.tokens += tokens as u64;
        c.busy_seconds += elapsed.as_secs_f64();
    }

    /// `device` failed and left the rotation.
    pub fn engine_failed(&self, device: &str) {
        let mut d = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        d.entry(device.to_string()).or_default().failures += 1;
    }

    /// Inputs handed back by a failed engine and queued again.
    pub fn inputs_retried(&self, n: u64) {
        self.retried_inputs.fetch_add(n, Ordering::Relaxed);
    }

    pub fn queue_changed(&self, delta: i64) {
        self.queue_depth.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn dropped_inputs(&self, n: u64) {
        self.dropped_inputs.fetch_add(n, Ordering::Relaxed);
    }

    pub fn model_loaded(&self, delta: i64) {
        self.models_loaded.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn reload_done(&self, ok: bool) {
        let mut map = self.reloads.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(if ok { "ok" } else { "failed" }).or_insert(0) += 1;
    }

    /// The text exposition; `model` is (version, name, counter) of the model
    /// now serving, `gpu_memory` the bytes its engine holds where it knows,
    /// `engines` (device label, in rotation) for each of its engines.
    pub fn render(
        &self,
        model: Option<(&str, &str, u64)>,
        gpu_memory: Option<u64>,
        engines: &[(&str, bool)],
    ) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP embedrt_request_duration_seconds HTTP request latency by route and status.\n",
        );
        out.push_str("# TYPE embedrt_request_duration_seconds histogram\n");
        {
            let map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
            for ((route, status), h) in map.iter() {
                let labels = format!("route=\"{route}\",status=\"{status}\"");
                h.render(&mut out, "embedrt_request_duration_seconds", &labels);
            }
            out.push_str("# HELP embedrt_requests_total HTTP requests by route and status.\n");
            out.push_str("# TYPE embedrt_requests_total counter\n");
            for ((route, status), h) in map.iter() {
                let _ = writeln!(
                    out,
                    "embedrt_requests_total{{route=\"{route}\",status=\"{status}\"}} {}",
                    h.count
                );
            }
        }
        {
            let b = self.batches.lock().unwrap_or_else(|e| e.into_inner());
            out.push_str("# HELP embedrt_batch_size Sequences per engine call.\n");
            out.push_str("# TYPE embedrt_batch_size histogram\n");
            b.size.render(&mut out, "embedrt_batch_size", "");
            out.push_str("# HELP embedrt_batch_tokens Tokens per engine call.\n");
            out.push_str("# TYPE embedrt_batch_tokens histogram\n");
            b.tokens.render(&mut out, "embedrt_batch_tokens", "");
            out.push_str("# HELP embedrt_inference_duration_seconds Time of one engine call.\n");
            out.push_str("# TYPE embedrt_inference_duration_seconds histogram\n");
            b.inference
                .render(&mut out, "embedrt_inference_duration_seconds", "");
        }
        let gauges = [
            (
                "embedrt_queue_depth",
                "Input sequences waiting for a batch.",
                "gauge",
                self.queue_depth.load(Ordering::Relaxed),
            ),
            (
                "embedrt_dropped_inputs_total",
                "Queued inputs dropped because their client went away or their request failed.",
                "counter",
                self.dropped_inputs.load(Ordering::Relaxed) as i64,
            ),
            (
                "embedrt_models_loaded",
                "Models in memory (2 while a reload drains the old one).",
                "gauge",
                self.models_loaded.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, kind, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out.push_str("# HELP embedrt_reloads_total Model reloads by result.\n");
        out.push_str("# TYPE embedrt_reloads_total counter\n");
        for (result, n) in self
            .reloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(out, "embedrt_reloads_total{{result=\"{result}\"}} {n}");
        }
        self.render_devices(&mut out, engines);
        if let Some((version, name, counter)) = model {
            out.push_str("# HELP embedrt_model_info The model now serving.\n");
            out.push_str("# TYPE embedrt_model_info gauge\n");
            let _ = writeln!(
                out,
                "embedrt_model_info{{version=\"{}\",model=\"{}\"}} 1",
                escape(version),
                escape(name)
            );
            out.push_str("# HELP embedrt_model_version Load counter of the model now serving.\n");
            out.push_str("# TYPE embedrt_model_version gauge\n");
            let _ = writeln!(out, "embedrt_model_version {counter}");
        }
        if let Some(seconds) = process_cpu_seconds() {
            out.push_str(
                "# HELP process_cpu_seconds_total CPU time of this process (user + system).\n",
            );
            out.push_str("# TYPE process_cpu_seconds_total counter\n");
            let _ = writeln!(out, "process_cpu_seconds_total {seconds}");
        }
        if let Some(bytes) = gpu_memory {
            out.push_str("# HELP embedrt_gpu_memory_used_bytes Device memory the engines hold.\n");
            out.push_str("# TYPE embedrt_gpu_memory_used_bytes gauge\n");
            let _ = writeln!(out, "embedrt_gpu_memory_used_bytes {bytes}");
        }
        out
    }
}

impl Metrics {
    fn render_devices(&self, out: &mut String, engines: &[(&str, bool)]) {
        out.push_str(
            "# HELP embedrt_inputs_retried_total Inputs requeued for another engine after theirs failed.\n",
        );
        out.push_str("# TYPE embedrt_inputs_retried_total counter\n");
        let _ = writeln!(
            out,
            "embedrt_inputs_retried_total {}",
            self.retried_inputs.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP embedrt_engine_healthy 1 while the serving model's engine on this device is in rotation, 0 after it failed.\n",
        );
        out.push_str("# TYPE embedrt_engine_healthy gauge\n");
        for (label, healthy) in engines {
            let _ = writeln!(
                out,
                "embedrt_engine_healthy{{device=\"{}\"}} {}",
                escape(label),
                u8::from(*healthy)
            );
        }
        let d = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        let mut counters: BTreeMap<&str, &DeviceCounters> =
            d.iter().map(|(k, v)| (k.as_str(), v)).collect();
        // A device that has not run a batch yet still gets its zeros.
        let zero = DeviceCounters::default();
        for (label, _) in engines {
            counters.entry(label).or_insert(&zero);
        }
        type Field = fn(&DeviceCounters) -> String;
        let series: [(&str, &str, Field); 5] = [
            (
                "embedrt_device_batches_total",
                "Engine calls by device.",
                |c| c.batches.to_string(),
            ),
            (
                "embedrt_device_sequences_total",
                "Sequences embedded by device.",
                |c| c.sequences.to_string(),
            ),
            (
                "embedrt_device_tokens_total",
                "Tokens embedded by device.",
                |c| c.tokens.to_string(),
            ),
            (
                "embedrt_device_busy_seconds_total",
                "Seconds each device spent in engine calls.",
                |c| c.busy_seconds.to_string(),
            ),
            (
                "embedrt_device_failures_total",
                "Engine failures by device (each takes that engine out of rotation).",
                |c| c.failures.to_string(),
            ),
        ];
        for (name, help, field) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (label, c) in &counters {
                let _ = writeln!(out, "{name}{{device=\"{}\"}} {}", escape(label), field(c));
            }
        }
    }
}

/// User + system CPU seconds from /proc/self/stat (Linux; fields 14 and 15,
/// counted in USER_HZ, which is 100 on every Linux platform we run on).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
