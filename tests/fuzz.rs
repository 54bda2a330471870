//! Fuzzing on the stable toolchain: inputs mutated from the corpus in `fuzz/corpus/` (bit flips,
//! insertions of YAML and HTTP tokens, deletions, duplications, splices, truncations) are fed
//! to the config parser and, as raw responses from a loopback server, to a probe. Neither may
//! panic; every probe must end in a result. Deterministic for a seed; run longer with
//!   FUZZ_ITERATIONS=200000 cargo test --release --test fuzz -- --nocapture
//! (`FUZZ_SEED` picks another sequence). A crash found this way goes into the corpus.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sitewatch::config::{parse_sources, Secrets};
use sitewatch::probe::Prober;

struct NoSecrets;

impl Secrets for NoSecrets {
    fn env(&self, _: &str) -> Option<String> {
        None
    }
    fn file(&self, path: &Path) -> std::io::Result<String> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            path.display().to_string(),
        ))
    }
}

fn corpus(kind: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let inputs: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!inputs.is_empty(), "empty corpus {}", dir.display());
    inputs
}

fn iterations(default: usize) -> usize {
    std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rng() -> fastrand::Rng {
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5173_7761_7463);
    fastrand::Rng::with_seed(seed)
}

const TOKENS: &[&[u8]] = &[
    b"\n",
    b": ",
    b"- ",
    b"[",
    b"]",
    b"{",
    b"}",
    b"*a",
    b"&a ",
    b"\0",
    b"99999999999999999999",
    b"-1",
    b"\r\n",
    b"\t",
    b"'",
    b"\"",
    b"\\",
    b"\xff\xfe",
    b"sites:",
    b"url: ",
    b"http://",
    b"regex: ",
    b"(",
    b"{1000}",
    b"1MiB",
    b"1h",
    b"0s",
    b"HTTP/1.1 ",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked",
    b"Location: ",
    b"\r\n\r\n",
    b"0\r\n",
    b"ffffffff\r\n",
];

fn mutate(rng: &mut fastrand::Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut v = corpus[rng.usize(..corpus.len())].clone();
    for _ in 0..rng.usize(1..=6) {
        let at = rng.usize(..=v.len());
        match rng.u8(..7) {
            0 if !v.is_empty() => {
                let i = rng.usize(..v.len());
                v[i] ^= 1 << rng.u8(..8);
            }
            1 => {
                let t = TOKENS[rng.usize(..TOKENS.len())];
                v.splice(at..at, t.iter().copied());
            }
            2 if at < v.len() => {
                let end = rng.usize(at..=v.len().min(at + 32));
                v.drain(at..end);
            }
            3 if at < v.len() => {
                let end = rng.usize(at..=v.len().min(at + 64));
                let piece = v[at..end].to_vec();
                v.splice(at..at, piece);
            }
            4 => {
                let other = &corpus[rng.usize(..corpus.len())];
                let from = rng.usize(..=other.len());
                let to = rng.usize(from..=other.len());
                v.splice(at..at, other[from..to].iter().copied());
            }
            5 => v.truncate(at),
            _ => {
                let byte = rng.u8(..);
                v.insert(at, byte);
            }
        }
    }
    v
}

#[test]
fn config_parser_never_panics_on_mutated_configs() {
    let corpus = corpus("config");
    let mut rng = rng();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fuzz.yaml");
    let (mut ok, mut rejected) = (0, 0);
    for i in 0..iterations(3_000) {
        let input = mutate(&mut rng, &corpus);
        // Raw bytes through the file loader (invalid UTF-8 included), text through the parser.
        let outcome = std::panic::catch_unwind(|| {
            if i % 10 == 0 {
                std::fs::write(&file, &input).unwrap();
                sitewatch::config::load_path(&file, &NoSecrets).is_ok()
            } else {
                let text = String::from_utf8_lossy(&input).into_owned();
                parse_sources(&[(PathBuf::from("fuzz.yaml"), text)], &NoSecrets).is_ok()
            }
        });
        match outcome {
            Ok(true) => ok += 1,
            Ok(false) => rejected += 1,
            Err(_) => panic!(
                "the config parser panicked on input {i}:\n{}",
                String::from_utf8_lossy(&input)
            ),
        }
    }
    eprintln!("config fuzz: {ok} accepted, {rejected} rejected with errors");
    assert!(
        ok > 0 && rejected > 0,
        "mutations too weak or too strong: {ok} / {rejected}"
    );
}

#[test]
fn deeply_nested_and_huge_configs_are_errors_not_crashes() {
    for text in [
        "[".repeat(100_000),
        "{a: ".repeat(50_000),
        format!(
            "sites:\n{}",
            "  - id: x\n    url: http://127.0.0.1:9/\n".repeat(20_000)
        ),
        "a: &a [1]\n".to_string()
            + &(0..30)
                .map(|i| format!("b{i}: &b{i} [*a, *a]\n"))
                .collect::<String>(),
    ] {
        let result = parse_sources(&[(PathBuf::from("big.yaml"), text)], &NoSecrets);
        assert!(result.is_err(), "accepted a hostile config");
    }
}

#[tokio::test]
async fn probes_end_in_a_result_whatever_the_target_answers() {
    let corpus = corpus("response");
    let answer = Arc::new(Mutex::new(Vec::<u8>::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = answer.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let bytes = served.lock().unwrap().clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock.write_all(&bytes).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    let config = parse_sources(
        &[(
            PathBuf::from("fuzz.yaml"),
            format!(
                "sites:\n  - id: fuzz\n    url: http://{addr}/\n    timeout: 500ms\n    interval: 1s\n    max_redirects: 2\n    regex: ok\n"
            ),
        )],
        &NoSecrets,
    )
    .unwrap();
    let site = config.sites[0].clone();
    let prober = Prober::new(&config.network).unwrap();
    let mut rng = rng();
    let mut classes = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..iterations(300) {
        let input = mutate(&mut rng, &corpus);
        *answer.lock().unwrap() = input.clone();
        let result = tokio::spawn({
            let (prober, site) = (prober.clone(), site.clone());
            async move { prober.probe(&site).await }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "a probe panicked on the response:\n{}",
                String::from_utf8_lossy(&input)
            )
        });
        assert!(result.duration.as_secs_f64() < 5.0);
        *classes.entry(result.class.to_string()).or_default() += 1;
    }
    eprintln!("response fuzz: {classes:?}");
    assert!(classes.len() >= 3, "too few outcomes: {classes:?}");
}
