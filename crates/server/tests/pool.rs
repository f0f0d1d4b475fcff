//! Several engines behind one server: real CPU engines on a tiny fixture
//! stand in for GPUs (the pool does not know the difference). One of them
//! is wrapped in a fault injector that starts failing on command, as a GPU
//! does after a lost device; the test drives a real server on loopback
//! under concurrent load and expects zero failed requests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use embedrt_core::pooling::normalize;
use embedrt_core::{Backend, BackendInfo, Error, Result, SentenceModel, TokenBatch};
use embedrt_cpu::CpuEngine;
use embedrt_server::pool::{worker, Engine, Pool};
use embedrt_server::queue::{BatchLimits, Queue};
use embedrt_server::{BatchSettings, LoadedModel, Loader, Metrics, Options, Target};
use serde_json::{json, Value};

const FIXTURE: &str = "tiny-bert-mean-norm";

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(FIXTURE)
}

fn cpu_engine(model: &SentenceModel) -> Arc<dyn Backend> {
    let weights = model.load_weights().unwrap();
    Arc::new(CpuEngine::new(&model.config, weights, model.pooling, model.max_seq_length).unwrap())
}

/// A fault injector: passes batches to a real engine until told to fail,
/// then fails every batch with a backend error, as a GPU whose context was
/// lost does.
struct FaultInjector {
    inner: Arc<dyn Backend>,
    failing: AtomicBool,
    /// Its health check reports a lost device (batches still run).
    sick: AtomicBool,
    calls: AtomicU64,
    faults: AtomicU64,
}

impl FaultInjector {
    fn new(inner: Arc<dyn Backend>) -> Arc<Self> {
        Arc::new(FaultInjector {
            inner,
            failing: AtomicBool::new(false),
            sick: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            faults: AtomicU64::new(0),
        })
    }
}

impl Backend for FaultInjector {
    fn info(&self) -> BackendInfo {
        self.inner.info()
    }
    fn hidden_size(&self) -> usize {
        self.inner.hidden_size()
    }
    fn embed(&self, batch: &TokenBatch) -> Result<Vec<f32>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            self.faults.fetch_add(1, Ordering::SeqCst);
            return Err(Error::Backend(
                "fault injector: CUDA error: device lost (simulated)".into(),
            ));
        }
        self.inner.embed(batch)
    }
    fn health(&self) -> Result<()> {
        if self.sick.load(Ordering::SeqCst) {
            return Err(Error::fault(
                embedrt_core::FaultKind::DeviceLost,
                "fault injector: CUDA health check: device lost (simulated)",
            ));
        }
        self.inner.health()
    }
}

fn texts(n: usize, salt: usize) -> Vec<String> {
    let words = [
        "alpha", "beta", "the", "model", "runs", "fast", "on", "cpu", "and", "gpu",
    ];
    (0..n)
        .map(|i| {
            (0..((i + salt) % 9) + 1)
                .map(|j| words[(i * 3 + j + salt) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// Each text alone through a fresh engine, normalized: what the server must return.
fn reference(model: &SentenceModel, engine: &dyn Backend, texts: &[String]) -> Vec<Vec<f32>> {
    texts
        .iter()
        .map(|t| {
            let ids = model.tokenizer.encode(t).unwrap().ids;
            let mut v = engine.embed(&TokenBatch::from_sequences(&[ids])).unwrap();
            normalize(&mut v);
            v
        })
        .collect()
}

fn max_diff(got: &[Vec<f32>], want: &[Vec<f32>]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .flat_map(|(g, w)| {
            assert_eq!(g.len(), w.len());
            g.iter().zip(w).map(|(a, b)| (a - b).abs())
        })
        .fold(0.0, f32::max)
}

/// A plain HTTP/1.1 exchange over loopback: (status, body).
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw[9..12].parse().unwrap();
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The engines of each load, so the test can reach the fault injector of
/// the pool now serving.
#[derive(Default)]
struct Loads {
    injectors: Mutex<Vec<[Arc<FaultInjector>; 2]>>,
}

impl Loads {
    /// The injectors of `cpu:0` and `cpu:1` in the pool loaded last.
    fn latest(&self) -> [Arc<FaultInjector>; 2] {
        self.injectors.lock().unwrap().last().unwrap().clone()
    }
}

/// A loader giving two real CPU engines per load, each behind a fault
/// injector that is off until the test turns it on.
fn two_engine_loader(loads: Arc<Loads>) -> Loader {
    Arc::new(move |_target: &Target| {
        let model = SentenceModel::load(fixture_dir().to_str().unwrap())?;
        let pair = [
            FaultInjector::new(cpu_engine(&model)),
            FaultInjector::new(cpu_engine(&model)),
        ];
        loads.injectors.lock().unwrap().push(pair.clone());
        let [a, b] = pair;
        Ok(LoadedModel {
            model: Arc::new(model),
            engines: vec![
                Engine {
                    label: "cpu:0".into(),
                    backend: a,
                },
                Engine {
                    label: "cpu:1".into(),
                    backend: b,
                },
            ],
            name: FIXTURE.into(),
            fingerprint: "000000000000".into(),
            memory_in_use: None,
        })
    })
}

/// A server in this process on a free loopback port, stopped on drop.
struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(loader: Loader) -> Server {
        let options = Options {
            host: "127.0.0.1".into(),
            port: 0,
            batch: BatchSettings {
                max_batch_tokens: None,
                // Small batches: many engine calls, so both engines get work.
                max_batch_requests: Some(2),
                max_wait: Duration::ZERO,
            },
            max_concurrent_requests: 512,
            max_client_batch_size: 32,
            payload_limit: 2_000_000,
            api_key: None,
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let stop = async move {
                    let _ = stop_rx.await;
                };
                embedrt_server::serve_on(
                    listener,
                    options,
                    Target::Model(FIXTURE.into()),
                    loader,
                    false,
                    stop,
                )
                .await
                .unwrap();
            });
        });
        let addr = addr_rx.recv().unwrap();
        let server = Server {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while http(addr, "GET", "/ready", None).0 != 200 {
            assert!(Instant::now() < deadline, "the server never got ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

fn devices(addr: SocketAddr) -> Vec<Value> {
    let (status, body) = http(addr, "GET", "/info", None);
    assert_eq!(status, 200, "{body}");
    let info: Value = serde_json::from_str(&body).unwrap();
    info["devices"].as_array().unwrap().clone()
}

#[test]
fn a_failing_engine_leaves_the_rotation_with_zero_failed_requests() {
    let model = SentenceModel::load(fixture_dir().to_str().unwrap()).unwrap();
    let reference_engine = cpu_engine(&model);
    let loads = Arc::new(Loads::default());
    let server = Server::start(two_engine_loader(loads.clone()));
    let addr = server.addr;
    let [injector, _] = loads.latest();

    // Concurrent clients, each checking every answer against the engine.
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (done, stop) = (done.clone(), stop.clone());
            let model = SentenceModel::load(fixture_dir().to_str().unwrap()).unwrap();
            let engine = cpu_engine(&model);
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                let mut round = 0;
                while !stop.load(Ordering::SeqCst) {
                    let inputs = texts(5, c * 1000 + round);
                    round += 1;
                    let (status, body) =
                        http(addr, "POST", "/embed", Some(&json!({"inputs": inputs})));
                    if status != 200 {
                        failures.push(format!("{status}: {body}"));
                        continue;
                    }
                    let got: Vec<Vec<f32>> = serde_json::from_str(&body).unwrap();
                    let diff = max_diff(&got, &reference(&model, engine.as_ref(), &inputs));
                    if diff > 1e-5 {
                        failures.push(format!("answer differs from the engine by {diff}"));
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
                failures
            })
        })
        .collect();

    let wait_for = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_for("traffic", &|| done.load(Ordering::SeqCst) >= 20);
    // Both engines took batches before the fault.
    wait_for("cpu:0 to take batches", &|| {
        injector.calls.load(Ordering::SeqCst) > 1
    });
    injector.failing.store(true, Ordering::SeqCst);
    wait_for("the fault", &|| injector.faults.load(Ordering::SeqCst) >= 1);
    let after_fault = done.load(Ordering::SeqCst);
    wait_for("traffic after the fault", &|| {
        done.load(Ordering::SeqCst) >= after_fault + 30
    });
    stop.store(true, Ordering::SeqCst);
    let failures: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert!(failures.is_empty(), "failed requests: {failures:?}");

    // The faulty engine was called once more (the fault) and never again.
    assert_eq!(injector.faults.load(Ordering::SeqCst), 1);
    let (status, body) = http(addr, "GET", "/ready", None);
    assert_eq!(status, 200, "{body}");
    let devs = devices(addr);
    assert_eq!(devs.len(), 2);
    assert_eq!(devs[0]["device"], "cpu:0");
    assert_eq!(devs[0]["state"], "failed");
    assert_eq!(devs[0]["failures"], 1);
    assert!(
        devs[0]["error"]
            .as_str()
            .unwrap()
            .contains("fault injector"),
        "{devs:?}"
    );
    assert_eq!(devs[1]["device"], "cpu:1");
    assert_eq!(devs[1]["state"], "healthy");
    assert!(devs[1]["batches"].as_u64().unwrap() > 0);

    let (_, text) = http(addr, "GET", "/metrics", None);
    assert_eq!(
        metric(&text, "embedrt_device_failures_total{device=\"cpu:0\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "embedrt_device_failures_total{device=\"cpu:1\"}"),
        0.0
    );
    assert_eq!(
        metric(&text, "embedrt_engine_healthy{device=\"cpu:0\"}"),
        0.0
    );
    assert_eq!(
        metric(&text, "embedrt_engine_healthy{device=\"cpu:1\"}"),
        1.0
    );
    assert!(metric(&text, "embedrt_inputs_retried_total") >= 1.0);
    assert!(metric(&text, "embedrt_device_batches_total{device=\"cpu:0\"}") >= 2.0);
    assert!(metric(&text, "embedrt_device_batches_total{device=\"cpu:1\"}") >= 1.0);

    // The one engine left still answers correctly.
    let inputs = texts(7, 42);
    let (status, body) = http(addr, "POST", "/embed", Some(&json!({"inputs": inputs})));
    assert_eq!(status, 200, "{body}");
    let got: Vec<Vec<f32>> = serde_json::from_str(&body).unwrap();
    assert!(max_diff(&got, &reference(&model, reference_engine.as_ref(), &inputs)) < 1e-5);

    // A reload builds a fresh pool: both engines serve again.
    let (status, body) = http(addr, "POST", "/admin/reload", None);
    assert_eq!(status, 200, "{body}");
    let devs = devices(addr);
    assert!(devs.iter().all(|d| d["state"] == "healthy"), "{devs:?}");
    let (_, text) = http(addr, "GET", "/metrics", None);
    assert_eq!(
        metric(&text, "embedrt_engine_healthy{device=\"cpu:0\"}"),
        1.0
    );
    // Failures count over the server's life, across reloads.
    assert_eq!(
        metric(&text, "embedrt_device_failures_total{device=\"cpu:0\"}"),
        1.0
    );
}

#[test]
fn when_every_engine_fails_requests_fail_cleanly_and_a_reload_recovers() {
    let loads = Arc::new(Loads::default());
    let server = Server::start(two_engine_loader(loads.clone()));
    let addr = server.addr;
    for injector in loads.latest() {
        injector.failing.store(true, Ordering::SeqCst);
    }
    // The batch fails on one engine, is retried on the other, fails again:
    // the request gets the engine's error, nothing hangs.
    let inputs = texts(3, 1);
    let (status, body) = http(addr, "POST", "/embed", Some(&json!({"inputs": inputs})));
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("fault injector"), "{body}");
    let devs = devices(addr);
    assert!(devs.iter().all(|d| d["state"] == "failed"), "{devs:?}");
    // Nothing serves: not ready, and new requests are refused at once.
    let (status, body) = http(addr, "GET", "/ready", None);
    assert_eq!(status, 503, "{body}");
    let (status, body) = http(addr, "POST", "/embed", Some(&json!({"inputs": inputs})));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("reload"), "{body}");
    let (_, text) = http(addr, "GET", "/metrics", None);
    assert_eq!(
        metric(&text, "embedrt_device_failures_total{device=\"cpu:0\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "embedrt_device_failures_total{device=\"cpu:1\"}"),
        1.0
    );
    // A reload brings fresh engines.
    let (status, body) = http(addr, "POST", "/admin/reload", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(http(addr, "GET", "/ready", None).0, 200);
    let (status, body) = http(addr, "POST", "/embed", Some(&json!({"inputs": inputs})));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn an_input_error_fails_its_request_but_keeps_the_engine() {
    let model = SentenceModel::load(fixture_dir().to_str().unwrap()).unwrap();
    let metrics = Arc::new(Metrics::new());
    let queue = Arc::new(Queue::new(
        BatchLimits {
            max_tokens: 10_000,
            max_sequences: 1,
            max_wait: Duration::ZERO,
        },
        metrics.clone(),
    ));
    let pool = Arc::new(Pool::new(vec![
        Engine {
            label: "cpu:0".into(),
            backend: cpu_engine(&model),
        },
        Engine {
            label: "cpu:1".into(),
            backend: cpu_engine(&model),
        },
    ]));
    let workers: Vec<_> = (0..2)
        .map(|i| {
            let (q, p, m) = (queue.clone(), pool.clone(), metrics.clone());
            std::thread::spawn(move || worker(q, p, i, m))
        })
        .collect();
    // A token id outside the vocabulary: the input is at fault, not the engine.
    let err = queue
        .submit(vec![vec![1u32, 1_000_000, 2]])
        .wait_blocking()
        .unwrap_err();
    assert!(err.contains("vocabulary"), "{err}");
    assert_eq!(pool.healthy(), 2);
    let seqs: Vec<Vec<u32>> = texts(8, 3)
        .iter()
        .map(|t| model.tokenizer.encode(t).unwrap().ids)
        .collect();
    assert_eq!(queue.submit(seqs).wait_blocking().unwrap().len(), 8);
    queue.close();
    for w in workers {
        w.join().unwrap();
    }
    assert!(pool.statuses().iter().all(|s| s.healthy));
}

#[test]
fn health_checks_take_a_sick_engine_out_and_answer_503_when_none_is_left() {
    let loads = Arc::new(Loads::default());
    let server = Server::start(two_engine_loader(loads.clone()));
    let addr = server.addr;
    let [first, second] = loads.latest();
    let (status, body) = http(addr, "GET", "/health", None);
    assert_eq!(status, 200, "{body}");
    // cpu:0's check fails: it leaves the rotation, cpu:1 still serves.
    first.sick.store(true, Ordering::SeqCst);
    let (status, body) = http(addr, "GET", "/health", None);
    assert_eq!(status, 200, "{body}");
    let devs = devices(addr);
    assert_eq!(devs[0]["state"], "failed", "{devs:?}");
    assert!(
        devs[0]["error"].as_str().unwrap().contains("health check"),
        "{devs:?}"
    );
    assert_eq!(devs[1]["state"], "healthy", "{devs:?}");
    let calls_before = first.calls.load(Ordering::SeqCst);
    let inputs = texts(6, 2);
    let (status, body) = http(addr, "POST", "/embed", Some(&json!({"inputs": inputs})));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        first.calls.load(Ordering::SeqCst),
        calls_before,
        "a replica out of rotation got a batch"
    );
    // The last one fails its check too: /health and /ready say 503.
    second.sick.store(true, Ordering::SeqCst);
    let (status, body) = http(addr, "GET", "/health", None);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("reload"), "{body}");
    assert_eq!(http(addr, "GET", "/ready", None).0, 503);
}
