//! The optional OTLP exporter (`--features otlp`): with `OTEL_EXPORTER_OTLP_ENDPOINT` set,
//! `telemetry::init` exports spans over OTLP/HTTP, each with the parent `adopt` gave it,
//! and `telemetry::shutdown` flushes them. A collector stand-in on loopback receives the
//! request. Its own test binary: the tracer provider is built once per process, from the
//! environment of the first `init`.
#![cfg(feature = "otlp")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_SPAN: &str = "b7ad6b7169203331";
const WAIT: Duration = Duration::from_secs(30);

/// Accepts one request within [`WAIT`], answers 200, returns (path, body).
fn receive_one(listener: &TcpListener) -> Result<(String, Vec<u8>), String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + WAIT;
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("no export request: {e}")),
        }
    };
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(WAIT))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut request_line = String::new();
    reader
        .read_line(&mut request_line)
        .map_err(|e| e.to_string())?;
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| e.to_string())?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().map_err(|_| line.to_owned())?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).map_err(|e| e.to_string())?;
    stream
        .write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n",
        )
        .map_err(|e| e.to_string())?;
    let path = request_line.split_whitespace().nth(1).unwrap_or_default();
    Ok((path.to_owned(), body))
}

fn bytes_of(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn spans_are_exported_over_otlp_http_with_the_parent_they_adopted() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::env::set_var(saga_kit::telemetry::OTLP_ENDPOINT_VAR, &endpoint);
    let collector = std::thread::spawn(move || receive_one(&listener));

    saga_kit::telemetry::init();
    let span = tracing::info_span!("exported_span", trace_id = tracing::field::Empty);
    saga_kit::trace::adopt(&span, Some(&format!("00-{TRACE}-{PARENT_SPAN}-01")));
    span.in_scope(|| tracing::info!("inside"));
    drop(span);
    saga_kit::telemetry::shutdown();

    let (path, body) = collector.join().expect("collector thread").unwrap();
    assert_eq!(path, "/v1/traces");
    assert!(contains(&body, b"exported_span"), "the span's name");
    assert!(contains(&body, &bytes_of(TRACE)), "its trace id");
    assert!(
        contains(&body, &bytes_of(PARENT_SPAN)),
        "its parent span id"
    );
}
