//! Pairing a phone with the brain on the LAN: the TLS certificate (self-signed for every
//! name and address of this machine, kept in `<data_dir>/tls/` and renewed when the names
//! change or expiry nears, or the operator's own), the rustls server configuration, and the
//! phone URL with its QR code (for the terminal and as SVG).

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::server::names::LocalNames;

/// Folder of the data dir that keeps the certificate.
pub const TLS_DIR: &str = "tls";
/// The certificate chain (PEM).
pub const CERT_FILE: &str = "cert.pem";
/// Its private key (PEM, mode 0600).
pub const KEY_FILE: &str = "key.pem";
/// What the self-signed certificate was made for: its names and its expiry.
pub const RECORD_FILE: &str = "names.txt";
/// How long a generated certificate is valid.
const VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// A generated certificate this close to expiry is made anew at start.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Why TLS or pairing could not be set up; every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum PairingError {
    #[error("cannot read the TLS {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the TLS {what} {} is not usable: {reason}", path.display())]
    Corrupt {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "the TLS certificate {} and key {} do not work together: {source}",
        cert.display(),
        key.display()
    )]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot make the self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot make the QR code: {0}")]
    Qr(#[from] qrcode::types::QrError),
}

/// The crypto provider of every TLS configuration here (the one reqwest uses too).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The names a certificate is made for: DNS names and IP addresses, sorted, each once.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CertNames {
    pub dns: BTreeSet<String>,
    pub ips: BTreeSet<IpAddr>,
}

impl CertNames {
    /// This machine's names (hostname, hostname.local, every LAN address), the loopback
    /// names, and `extra` (`[server] allowed_hosts`: names or addresses).
    pub fn for_machine(local: &LocalNames, extra: &[String]) -> CertNames {
        let mut names = CertNames::default();
        names.dns.insert("localhost".to_string());
        names.ips.insert(IpAddr::V4(Ipv4Addr::LOCALHOST));
        names.ips.insert(IpAddr::V6(Ipv6Addr::LOCALHOST));
        names.dns.extend(local.dns_names());
        names.ips.extend(local.addrs.iter().copied());
        for host in extra {
            let host = host.trim().trim_start_matches('[').trim_end_matches(']');
            match host.parse::<IpAddr>() {
                Ok(ip) => {
                    names.ips.insert(ip);
                }
                Err(_) if !host.is_empty() => {
                    names.dns.insert(host.to_ascii_lowercase());
                }
                Err(_) => {}
            }
        }
        names
    }

    fn record_lines(&self) -> Vec<String> {
        let dns = self.dns.iter().map(|d| format!("dns {d}"));
        let ips = self.ips.iter().map(|ip| format!("ip {ip}"));
        dns.chain(ips).collect()
    }
}

/// Where a certificate and its key are, and whether this start made them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The self-signed certificate was (re)made by this call.
    pub generated: bool,
}

/// The self-signed certificate in `<data_dir>/tls/`, made anew when missing, made for other
/// names, or within 30 days of expiry.
pub fn ensure_self_signed(data_dir: &Path, names: &CertNames) -> Result<TlsFiles, PairingError> {
    ensure_self_signed_at(data_dir, names, SystemTime::now())
}

/// [`ensure_self_signed`] as if it were `now`.
pub fn ensure_self_signed_at(
    data_dir: &Path,
    names: &CertNames,
    now: SystemTime,
) -> Result<TlsFiles, PairingError> {
    let dir = data_dir.join(TLS_DIR);
    let cert = dir.join(CERT_FILE);
    let key = dir.join(KEY_FILE);
    let record = dir.join(RECORD_FILE);
    let reason = match read_record(&record) {
        _ if !cert.exists() || !key.exists() => Some("no certificate yet"),
        None => Some("no record of its names"),
        Some((lines, _)) if lines != names.record_lines() => Some("the names changed"),
        Some((_, not_after)) if not_after < unix_secs(now) + RENEW_BEFORE.as_secs() => {
            Some("it expires soon")
        }
        Some(_) => None,
    };
    let Some(reason) = reason else {
        return Ok(TlsFiles {
            cert,
            key,
            generated: false,
        });
    };
    let (cert_pem, key_pem, not_after) = generate(names, now)?;
    std::fs::create_dir_all(&dir).map_err(|source| PairingError::Write {
        path: dir.clone(),
        source,
    })?;
    write_file(&key, key_pem.as_bytes(), true)?;
    write_file(&cert, cert_pem.as_bytes(), false)?;
    let mut text = format!("not_after {not_after}\n");
    for line in names.record_lines() {
        text.push_str(&line);
        text.push('\n');
    }
    write_file(&record, text.as_bytes(), false)?;
    tracing::info!(
        path = %cert.display(),
        reason,
        names = names.record_lines().join(", "),
        "made a self-signed TLS certificate"
    );
    Ok(TlsFiles {
        cert,
        key,
        generated: true,
    })
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The record's name lines and `not_after` (unix seconds), if it reads.
fn read_record(path: &Path) -> Option<(Vec<String>, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let not_after = lines.next()?.strip_prefix("not_after ")?.parse().ok()?;
    Some((lines.map(str::to_string).collect(), not_after))
}

fn generate(names: &CertNames, now: SystemTime) -> Result<(String, String, u64), PairingError> {
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "creature brain (self-signed)");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "creature");
    for dns in &names.dns {
        params
            .subject_alt_names
            .push(rcgen::SanType::DnsName(dns.clone().try_into()?));
    }
    for ip in &names.ips {
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(*ip));
    }
    // A day of slack for phones whose clock runs behind.
    let start = unix_secs(now).saturating_sub(24 * 3600);
    let not_after = unix_secs(now) + VALIDITY.as_secs();
    params.not_before = offset_time(start)?;
    params.not_after = offset_time(not_after)?;
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem(), not_after))
}

fn offset_time(unix: u64) -> Result<time::OffsetDateTime, PairingError> {
    i64::try_from(unix)
        .ok()
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .ok_or(PairingError::Generate(rcgen::Error::Time))
}

fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), PairingError> {
    use std::io::Write;
    let err = |source| PairingError::Write {
        path: path.to_path_buf(),
        source,
    };
    let temp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&temp).map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    std::fs::rename(&temp, path).map_err(err)
}

/// The rustls server configuration for a certificate chain and key in PEM files; the
/// errors name the file that is missing or unusable.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, PairingError> {
    let chain = read_certs(cert)?;
    let key_der = read_key(key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| PairingError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            source,
        })?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|source| PairingError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            source,
        })?;
    // HTTP/1.1 only: browsers open websockets over it, never over HTTP/2 here.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, PairingError> {
    std::fs::read(path).map_err(|source| PairingError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The certificates of a PEM file (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PairingError> {
    let pem = read_pem("certificate", path)?;
    let corrupt = |reason: String| PairingError::Corrupt {
        what: "certificate",
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| corrupt(e.to_string()))?;
    if certs.is_empty() {
        return Err(corrupt("it holds no PEM certificate".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, PairingError> {
    let pem = read_pem("key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| PairingError::Corrupt {
        what: "key",
        path: path.to_path_buf(),
        reason: format!("no PEM private key in it ({e})"),
    })
}

/// The links that open the face on a phone, with the token in the fragment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pairing {
    /// The one to use: the first LAN address (or the bound one).
    pub url: String,
    /// Every address and name the brain can be reached by, `url` first.
    pub urls: Vec<String>,
    /// The inspector page at `url`'s address, with the token too.
    pub inspector: String,
}

impl Pairing {
    /// The phone links for a brain listening on `bound` (`tls`: https, else http). A brain
    /// bound to all interfaces is reached by its LAN addresses and `hostname.local`; one
    /// bound to an address by that address. The token rides in the fragment, never the query.
    pub fn new(bound: SocketAddr, tls: bool, local: &LocalNames, token: Option<&str>) -> Pairing {
        let scheme = if tls { "https" } else { "http" };
        let port = bound.port();
        let fragment = token.map(|t| format!("#token={t}")).unwrap_or_default();
        let link = |host: String| format!("{scheme}://{host}:{port}/face{fragment}");
        let mut hosts: Vec<String> = Vec::new();
        if bound.ip().is_unspecified() {
            if let Some(first) = local.lan_addr() {
                hosts.push(url_host(first));
            }
            hosts.extend(
                local
                    .addrs
                    .iter()
                    // A link-local v6 address needs a zone no phone knows.
                    .filter(|ip| !is_link_local_v6(ip))
                    .map(|ip| url_host(*ip)),
            );
            hosts.extend(
                local
                    .dns_names()
                    .into_iter()
                    .filter(|n| n.ends_with(".local")),
            );
            if hosts.is_empty() {
                hosts.push("localhost".into());
            }
        } else {
            hosts.push(url_host(bound.ip()));
        }
        let mut seen = BTreeSet::new();
        hosts.retain(|h| seen.insert(h.clone()));
        let inspector = hosts
            .first()
            .map(|host| format!("{scheme}://{host}:{port}/inspector{fragment}"))
            .unwrap_or_default();
        let urls: Vec<String> = hosts.into_iter().map(link).collect();
        Pairing {
            url: urls.first().cloned().unwrap_or_default(),
            urls,
            inspector,
        }
    }

    /// The QR code of `url` for a terminal.
    pub fn qr_terminal(&self) -> Result<String, PairingError> {
        qr_terminal(&self.url)
    }

    /// The QR code of `url` as an SVG document.
    pub fn qr_svg(&self) -> Result<String, PairingError> {
        qr_svg(&self.url)
    }
}

/// `GET /api/pair`: `{url, urls, qr_svg}` of the running brain (the guard asks for the
/// token first when auth is on). The listener hands the links in as an extension; a router
/// without one (tests driving `app` directly) has nothing to pair with.
pub async fn api_pair(
    pairing: Option<axum::Extension<Arc<Pairing>>>,
) -> Result<axum::Json<serde_json::Value>, crate::server::error::ApiError> {
    let Some(axum::Extension(pairing)) = pairing else {
        return Err(crate::server::error::ApiError::unavailable(
            "this brain is not serving on a socket, so there is no address to pair with",
        ));
    };
    let qr_svg = pairing
        .qr_svg()
        .map_err(crate::server::error::ApiError::internal)?;
    Ok(axum::Json(serde_json::json!({
        "url": pairing.url,
        "urls": pairing.urls,
        "qr_svg": qr_svg,
    })))
}

fn url_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

fn is_link_local_v6(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// Modules of quiet zone around a terminal QR code.
pub const QR_QUIET_ZONE: usize = 2;

/// `text` as a QR code drawn with Unicode half blocks, two module rows per line. Light
/// modules (and the quiet zone) are drawn, dark ones left blank, so it scans on the usual
/// dark terminal background (like `qrencode -t UTF8`).
pub fn qr_terminal(text: &str) -> Result<String, PairingError> {
    let code = qrcode::QrCode::with_error_correction_level(text, qrcode::EcLevel::L)?;
    let width = code.width();
    let colors = code.to_colors();
    let size = width + 2 * QR_QUIET_ZONE;
    // Light (drawn) unless it is a dark module of the code.
    let light = |x: usize, y: usize| -> bool {
        if x < QR_QUIET_ZONE || y < QR_QUIET_ZONE {
            return true;
        }
        let (cx, cy) = (x - QR_QUIET_ZONE, y - QR_QUIET_ZONE);
        if cx >= width || cy >= width {
            return true;
        }
        colors[cy * width + cx] == qrcode::Color::Light
    };
    let mut out = String::with_capacity((size + 1) * size.div_ceil(2) * 3);
    for y in (0..size).step_by(2) {
        for x in 0..size {
            let top = light(x, y);
            let bottom = y + 1 >= size || light(x, y + 1);
            out.push(match (top, bottom) {
                (true, true) => '█',
                (true, false) => '▀',
                (false, true) => '▄',
                (false, false) => ' ',
            });
        }
        out.push('\n');
    }
    Ok(out)
}

/// `text` as a QR code in an SVG document (dark on white, with a quiet zone).
pub fn qr_svg(text: &str) -> Result<String, PairingError> {
    let code = qrcode::QrCode::with_error_correction_level(text, qrcode::EcLevel::M)?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(240, 240)
        .quiet_zone(true)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(ips: &[&str]) -> CertNames {
        let local = LocalNames {
            hostname: Some("robot".into()),
            addrs: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
        };
        CertNames::for_machine(&local, &["brain.example".into()])
    }

    #[test]
    fn the_certificate_names_every_name() {
        let n = names(&["192.168.1.7", "fd00::7"]);
        let dns: Vec<&str> = n.dns.iter().map(String::as_str).collect();
        assert_eq!(
            dns,
            vec!["brain.example", "localhost", "robot", "robot.local"]
        );
        let ips: Vec<String> = n.ips.iter().map(ToString::to_string).collect();
        assert_eq!(ips, vec!["127.0.0.1", "192.168.1.7", "::1", "fd00::7"]);
    }

    #[test]
    fn the_certificate_is_kept_while_the_names_stay_and_renewed_when_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let first = ensure_self_signed_at(dir.path(), &names(&["192.168.1.7"]), now).unwrap();
        assert!(first.generated);
        let pem = std::fs::read(&first.cert).unwrap();
        server_config(&first.cert, &first.key).expect("rustls takes it");

        let again = ensure_self_signed_at(dir.path(), &names(&["192.168.1.7"]), now).unwrap();
        assert!(!again.generated);
        assert_eq!(std::fs::read(&again.cert).unwrap(), pem);

        let moved = ensure_self_signed_at(dir.path(), &names(&["192.168.1.8"]), now).unwrap();
        assert!(moved.generated, "a new address means a new certificate");
        assert_ne!(std::fs::read(&moved.cert).unwrap(), pem);
        let record = std::fs::read_to_string(dir.path().join(TLS_DIR).join(RECORD_FILE)).unwrap();
        assert!(record.contains("ip 192.168.1.8"), "{record}");
        assert!(!record.contains("192.168.1.7"), "{record}");
    }

    #[test]
    fn the_certificate_is_renewed_within_30_days_of_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let n = names(&[]);
        let now = SystemTime::now();
        assert!(
            ensure_self_signed_at(dir.path(), &n, now)
                .unwrap()
                .generated
        );
        let in_300_days = now + Duration::from_secs(300 * 24 * 3600);
        assert!(
            !ensure_self_signed_at(dir.path(), &n, in_300_days)
                .unwrap()
                .generated
        );
        let in_340_days = now + Duration::from_secs(340 * 24 * 3600);
        assert!(
            ensure_self_signed_at(dir.path(), &n, in_340_days)
                .unwrap()
                .generated
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_key_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let files = ensure_self_signed(dir.path(), &names(&[])).unwrap();
        let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn missing_and_corrupt_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let files = ensure_self_signed(dir.path(), &names(&[])).unwrap();
        let e = server_config(&missing, &files.key).unwrap_err().to_string();
        assert!(e.contains("nope.pem") && e.contains("certificate"), "{e}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a pem").unwrap();
        let e = server_config(&files.cert, &junk).unwrap_err().to_string();
        assert!(e.contains("junk.pem") && e.contains("key"), "{e}");
        let e = server_config(&junk, &files.key).unwrap_err().to_string();
        assert!(e.contains("junk.pem") && e.contains("certificate"), "{e}");
    }

    #[test]
    fn the_phone_url_uses_the_first_lan_address_and_the_fragment() {
        let local = LocalNames {
            hostname: Some("robot".into()),
            addrs: vec![
                "fe80::1".parse().unwrap(),
                "10.0.0.5".parse().unwrap(),
                "fd00::5".parse().unwrap(),
            ],
        };
        let all = Pairing::new("0.0.0.0:8443".parse().unwrap(), true, &local, Some("T0k"));
        assert_eq!(all.url, "https://10.0.0.5:8443/face#token=T0k");
        assert_eq!(
            all.urls,
            vec![
                "https://10.0.0.5:8443/face#token=T0k",
                "https://[fd00::5]:8443/face#token=T0k",
                "https://robot.local:8443/face#token=T0k",
            ]
        );
        let one = Pairing::new("127.0.0.1:9000".parse().unwrap(), false, &local, None);
        assert_eq!(one.url, "http://127.0.0.1:9000/face");
    }

    #[test]
    fn qr_codes_render() {
        let text = qr_terminal("https://10.0.0.5:8443/face#token=abc").unwrap();
        assert!(text.lines().count() > 10);
        let first = text.lines().next().unwrap();
        assert!(first.chars().all(|c| c == '█'), "quiet zone: {first}");
        let svg = qr_svg("https://10.0.0.5:8443/face#token=abc").unwrap();
        assert!(svg.contains("<svg"), "{svg}");
    }
}
