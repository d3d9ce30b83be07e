//! LAN mode end to end: HTTPS with a client that trusts only the brain's generated
//! certificate, the certificate's names, the header and body timeouts that cut slow clients
//! off while `/healthz` keeps answering, and the QR code printed at start.

mod common;

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use creature::Service;
use creature::server::names::local_names;
use futures::StreamExt;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A brain in LAN mode (HTTPS, token on), listening on loopback only.
async fn start_lan(tweak: impl FnOnce(&mut creature::Config)) -> (Service, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.server.lan = true;
    tweak(&mut config);
    let service = Service::start_on(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("the service starts");
    (service, dir)
}

/// A reqwest client that trusts the brain's certificate and nothing else.
fn pinned_client(service: &Service, token: Option<&str>) -> reqwest::Client {
    let pem = std::fs::read(service.cert_path().expect("serving https")).unwrap();
    let certs = reqwest::Certificate::from_pem_bundle(&pem).unwrap();
    let mut builder = reqwest::Client::builder()
        .tls_certs_only(certs)
        .timeout(Duration::from_secs(10));
    if let Some(token) = token {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        builder = builder.default_headers(headers);
    }
    builder.build().unwrap()
}

/// A rustls client configuration that trusts only `cert_pem`.
fn pinned_tls(cert_pem: &std::path::Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in creature::pairing::read_certs(cert_pem).unwrap() {
        roots.add(cert).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(creature::pairing::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[tokio::test]
async fn https_end_to_end_with_a_pinned_certificate() {
    let (service, dir) = start_lan(|_| {}).await;
    let base = service.url();
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    let token = service
        .access_token()
        .expect("LAN mode has a token")
        .to_string();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("access-token"))
            .unwrap()
            .trim(),
        token
    );

    let client = pinned_client(&service, Some(&token));
    let health: Value = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");

    // The pairing links: the phone URL carries the token in the fragment.
    let resp = client.get(format!("{base}/api/pair")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let pair: Value = resp.json().await.unwrap();
    let url = pair["url"].as_str().unwrap();
    assert_eq!(url, format!("{base}/face#token={token}"));
    assert_eq!(pair["urls"][0].as_str(), Some(url));
    assert!(pair["qr_svg"].as_str().unwrap().contains("<svg"));
    assert_eq!(service.pairing().url, url);

    // Without the token: 401, in the error shape.
    let anonymous = pinned_client(&service, None);
    let resp = anonymous
        .get(format!("{base}/api/pair"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");

    // A client that does not trust this certificate gets no answer at all...
    let other = tempfile::tempdir().unwrap();
    let foreign = creature::pairing::ensure_self_signed(
        other.path(),
        &creature::pairing::CertNames::for_machine(&local_names(), &[]),
    )
    .unwrap();
    let foreign_pem = std::fs::read(&foreign.cert).unwrap();
    let stranger = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&foreign_pem).unwrap())
        .build()
        .unwrap();
    let refused = stranger.get(format!("{base}/healthz")).send().await;
    assert!(refused.is_err(), "a foreign certificate must not verify");
    // ...and plain HTTP on the TLS port is not served.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", service.addr()))
        .send()
        .await;
    assert!(
        plain.map(|r| !r.status().is_success()).unwrap_or(true),
        "plain HTTP must not reach the API in LAN mode"
    );

    // Websockets work over TLS too (a face socket, with the token as a bearer).
    let tcp = TcpStream::connect(service.addr()).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(pinned_tls(service.cert_path().unwrap()));
    let tls = connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "wss://{}/ws/face",
            service.addr()
        ))
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut face, _) = tokio_tungstenite::client_async(request, tls)
        .await
        .expect("the face socket upgrades over TLS");
    let frame = tokio::time::timeout(Duration::from_secs(5), face.next())
        .await
        .expect("a face frame within 5 s")
        .expect("the socket stays open")
        .unwrap();
    assert!(frame.is_text() || frame.is_binary(), "{frame:?}");
    service.shutdown().await;
}

#[tokio::test]
async fn the_certificate_names_every_lan_address() {
    let (service, _dir) =
        start_lan(|c| c.server.allowed_hosts = vec!["brain.example".into()]).await;
    let cert_path = service.cert_path().unwrap().to_path_buf();
    let pem = std::fs::read(&cert_path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    let san = cert
        .subject_alternative_name()
        .unwrap()
        .expect("the certificate has subject alternative names");
    let mut ips: Vec<IpAddr> = Vec::new();
    let mut dns: Vec<String> = Vec::new();
    for name in &san.value.general_names {
        match name {
            x509_parser::extensions::GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*bytes).unwrap())),
                16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*bytes).unwrap())),
                n => panic!("an IP of {n} bytes"),
            },
            x509_parser::extensions::GeneralName::DNSName(name) => dns.push(name.to_string()),
            _ => {}
        }
    }
    let local = local_names();
    let mut wanted: Vec<IpAddr> = local.addrs.clone();
    wanted.push("127.0.0.1".parse().unwrap());
    wanted.push("::1".parse().unwrap());
    for ip in &wanted {
        assert!(ips.contains(ip), "{ip} missing from {ips:?}");
    }
    for name in local
        .dns_names()
        .iter()
        .chain(["localhost".to_string(), "brain.example".to_string()].iter())
    {
        assert!(dns.contains(name), "{name} missing from {dns:?}");
    }
    let validity = cert.validity();
    let days = (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86_400;
    assert!((360..=370).contains(&days), "valid for {days} days");

    // And rustls itself accepts the certificate for each address as the server name.
    let connector = tokio_rustls::TlsConnector::from(pinned_tls(&cert_path));
    for ip in wanted {
        let tcp = TcpStream::connect(service.addr()).await.unwrap();
        connector
            .connect(ServerName::IpAddress(ip.into()), tcp)
            .await
            .unwrap_or_else(|e| panic!("rustls refuses the certificate for {ip}: {e}"));
    }
    let tcp = TcpStream::connect(service.addr()).await.unwrap();
    let wrong = connector
        .connect(ServerName::try_from("elsewhere.example").unwrap(), tcp)
        .await;
    assert!(
        wrong.is_err(),
        "a name the certificate lacks must not verify"
    );
    service.shutdown().await;
}

/// Read from `tcp` until the server closes it; what it sent, and how long that took.
async fn read_until_closed(tcp: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), tcp.read(&mut buf)).await
        {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "still open after {limit:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), start.elapsed())
}

#[tokio::test]
async fn slowloris_and_oversize_bodies_are_cut_off_while_healthz_answers() {
    let brain = common::start_with(|c| {
        c.server.header_read_timeout_secs = 1.0;
        c.server.body_read_timeout_secs = 1.0;
    })
    .await;
    let addr = brain.service.addr();
    let host = format!("Host: {addr}\r\n");

    // A slowloris: a partial header, then one more header line every 200 ms, forever.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(format!("GET /healthz HTTP/1.1\r\n{host}").as_bytes())
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        let start = Instant::now();
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if slow
                .write_all(format!("X-Slow-{i}: a\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = slow.flush().await;
        let mut buf = [0u8; 1024];
        // Closed by the server: the read ends (0 or an error) rather than waiting.
        let _ = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf)).await;
        start.elapsed()
    });

    // A body declared at 99999999999 bytes with 13 sent: refused from the header.
    let mut huge = TcpStream::connect(addr).await.unwrap();
    huge.write_all(
        format!(
            "POST /api/tasks HTTP/1.1\r\n{host}Content-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n{{\"action\":\"x"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // A body declared small enough but only partly sent: cut off by the body timeout.
    let mut short = TcpStream::connect(addr).await.unwrap();
    short
        .write_all(
            format!(
                "POST /api/tasks HTTP/1.1\r\n{host}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"action\":\"x"
            )
            .as_bytes(),
        )
        .await
        .unwrap();

    // Meanwhile the brain answers.
    for _ in 0..5 {
        let (status, body) = brain.get("/healthz").await;
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (answer, took) = read_until_closed(&mut huge, Duration::from_secs(4)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
    assert!(took < Duration::from_secs(3), "oversize body held {took:?}");

    let (answer, took) = read_until_closed(&mut short, Duration::from_secs(4)).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "a trickled body gets an error or a close: {answer}"
    );
    assert!(took < Duration::from_secs(3), "a slow body held {took:?}");

    let held = trickle.await.unwrap();
    assert!(
        held < Duration::from_secs(4),
        "the slowloris was held for {held:?} (header timeout 1 s)"
    );
    let (status, _) = brain.get("/healthz").await;
    assert_eq!(status, 200);
    // Nothing was filed by the cut-off requests.
    let (_, tasks) = brain.get("/api/tasks").await;
    let count = tasks
        .as_array()
        .or_else(|| tasks["tasks"].as_array())
        .map_or(0, Vec::len);
    assert_eq!(count, 0, "{tasks}");
    brain.service.shutdown().await;
}

/// Turn the half-block QR code back into a greyscale bitmap (4 px per module).
fn qr_bitmap(lines: &[String]) -> (usize, usize, Vec<u8>) {
    const SCALE: usize = 4;
    let width = lines.iter().map(|l| l.chars().count()).max().unwrap();
    let rows = lines.len() * 2;
    // true = light module.
    let mut modules = vec![vec![true; width]; rows];
    for (y, line) in lines.iter().enumerate() {
        for (x, c) in line.chars().enumerate() {
            let (top, bottom) = match c {
                '█' => (true, true),
                '▀' => (true, false),
                '▄' => (false, true),
                ' ' => (false, false),
                other => panic!("not a QR character: {other:?}"),
            };
            modules[2 * y][x] = top;
            modules[2 * y + 1][x] = bottom;
        }
    }
    // A white border around the printed quiet zone, for the detector.
    let pad = 4;
    let (w, h) = ((width + 2 * pad) * SCALE, (rows + 2 * pad) * SCALE);
    let mut pixels = vec![255u8; w * h];
    for (my, row) in modules.iter().enumerate() {
        for (mx, light) in row.iter().enumerate() {
            if !light {
                for dy in 0..SCALE {
                    for dx in 0..SCALE {
                        let (px, py) = ((mx + pad) * SCALE + dx, (my + pad) * SCALE + dy);
                        pixels[py * w + px] = 0;
                    }
                }
            }
        }
    }
    (w, h, pixels)
}

#[test]
fn the_qr_code_printed_at_start_decodes_to_the_printed_url() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_creature"))
            .args([
                "serve",
                "--lan",
                "--addr",
                "127.0.0.1:0",
                "--log",
                "warn",
                "--data-dir",
            ])
            .arg(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut url = None;
    let mut qr: Vec<String> = Vec::new();
    let mut in_qr = false;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
            break;
        };
        seen.push(line.clone());
        if let Some(rest) = line.trim_start().strip_prefix("phone:") {
            url = Some(rest.trim().to_string());
        } else if line.contains("scan with the phone") {
            in_qr = true;
        } else if in_qr {
            if !line.is_empty() && line.chars().all(|c| "█▀▄ ".contains(c)) {
                qr.push(line);
            } else {
                break;
            }
        }
        // The QR code ends with a full line of quiet zone after the code's last row.
        if in_qr && qr.len() > 10 && qr.last().is_some_and(|l| l.chars().all(|c| c == '█')) {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let url = url.unwrap_or_else(|| panic!("no phone URL printed:\n{}", seen.join("\n")));
    assert!(
        url.starts_with("https://127.0.0.1:") && url.contains("/face#token="),
        "{url}"
    );
    let token = std::fs::read_to_string(dir.path().join("access-token")).unwrap();
    assert!(url.ends_with(token.trim()), "{url}");
    assert!(qr.len() > 10, "no QR code printed:\n{}", seen.join("\n"));

    let (w, h, pixels) = qr_bitmap(&qr);
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| pixels[y * w + x]);
    let grids = image.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code in:\n{}", qr.join("\n"));
    let (_, content) = grids[0].decode().expect("the QR code decodes");
    assert_eq!(content, url);
}

/// Start the built binary with `args` under a file-descriptor limit; its stderr lines come
/// through the channel.
fn spawn_limited(nofile: u32, args: &[&str]) -> (KillOnDrop, std::sync::mpsc::Receiver<String>) {
    let mut child = KillOnDrop(
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_creature"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// One `GET /healthz` on a new connection; whether a 200 came back within `limit`.
async fn healthz_answers(addr: std::net::SocketAddr, limit: Duration) -> bool {
    let attempt = async {
        let mut tcp = TcpStream::connect(addr).await.ok()?;
        tcp.write_all(
            format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .ok()?;
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.ok()?;
        Some(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"))
    };
    tokio::time::timeout(limit, attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

#[tokio::test]
async fn out_of_file_descriptors_accept_backs_off_logs_once_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("creature.toml");
    // Idle connections stay held long enough to use up every descriptor.
    std::fs::write(&config, "[server]\nheader_read_timeout_secs = 60.0\n").unwrap();
    let data = dir.path().join("data");
    let (mut child, lines) = spawn_limited(
        64,
        &[
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--log",
            "warn",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    let mut seen = Vec::new();
    let addr: std::net::SocketAddr = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no banner:\n{}", seen.join("\n")));
        seen.push(line.clone());
        if let Some(rest) = line.strip_prefix("creature: listening on http://") {
            break rest.trim().parse().unwrap();
        }
    };
    assert!(healthz_answers(addr, Duration::from_secs(5)).await);

    // 100 idle connections: the brain runs out of descriptors after about 45 of them.
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let exhausted = common::eventually(Duration::from_secs(10), "accept to fail", || {
        let seen = lines.try_iter().collect::<Vec<_>>();
        async move {
            seen.iter()
                .any(|l| l.contains("cannot accept connections"))
                .then_some(seen)
        }
    })
    .await;
    assert!(
        !healthz_answers(addr, Duration::from_millis(500)).await,
        "no descriptor is left, so nothing should be served"
    );
    // Give it a few back-off rounds: still one line in the log.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(idle);
    let recovered = Instant::now();
    common::eventually(Duration::from_secs(10), "/healthz again", || async move {
        healthz_answers(addr, Duration::from_secs(2))
            .await
            .then_some(())
    })
    .await;
    assert!(
        recovered.elapsed() < Duration::from_secs(5),
        "took {:?} to recover",
        recovered.elapsed()
    );
    let _ = child.kill();
    let _ = child.wait();
    let log: Vec<String> = exhausted.into_iter().chain(lines.try_iter()).collect();
    let complaints = log
        .iter()
        .filter(|l| l.contains("cannot accept connections"))
        .count();
    assert_eq!(
        complaints,
        1,
        "one log line per episode:\n{}",
        log.join("\n")
    );
}

/// A child process killed when the test ends, failed assertions included.
struct KillOnDrop(std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
