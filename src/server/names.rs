//! The names this machine answers to on the network: its hostname and the addresses of its
//! interfaces. The certificate names them all, the Host allow-list accepts them, and the
//! phone URL uses the first LAN address.

use std::net::IpAddr;

/// The hostname and every non-loopback interface address (v4 and v6) of this machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalNames {
    /// The machine's hostname, when it has one that is a valid DNS name.
    pub hostname: Option<String>,
    /// Every non-loopback interface address, IPv4 first, each once, in a stable order.
    pub addrs: Vec<IpAddr>,
}

impl LocalNames {
    /// The DNS names: `hostname` and `hostname.local` (mDNS), lower case; empty without one.
    pub fn dns_names(&self) -> Vec<String> {
        match &self.hostname {
            Some(host) => {
                let host = host.to_ascii_lowercase();
                if host.ends_with(".local") {
                    vec![host]
                } else {
                    let mdns = format!("{host}.local");
                    vec![host, mdns]
                }
            }
            None => Vec::new(),
        }
    }

    /// The address a phone on the LAN should use: the first IPv4 LAN address, else the first
    /// address of any kind.
    pub fn lan_addr(&self) -> Option<IpAddr> {
        self.addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| self.addrs.first())
            .copied()
    }
}

/// Read the hostname and the interface addresses now (they change with the network).
pub fn local_names() -> LocalNames {
    LocalNames {
        hostname: hostname(),
        addrs: interface_addrs(),
    }
}

fn hostname() -> Option<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| ::hostname::get().ok().and_then(|h| h.into_string().ok()))?;
    let host = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    valid_dns_name(&host).then_some(host)
}

/// A name a certificate and a Host header can carry: labels of letters, digits and `-`.
fn valid_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name != "localhost"
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn interface_addrs() -> Vec<IpAddr> {
    let interfaces = match if_addrs::get_if_addrs() {
        Ok(interfaces) => interfaces,
        Err(e) => {
            tracing::warn!(cause = %e, "cannot list the network interfaces");
            return Vec::new();
        }
    };
    let mut addrs: Vec<IpAddr> = interfaces
        .iter()
        .map(|i| i.ip())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified() && !ip.is_multicast())
        .collect();
    // IPv4 before IPv6, then in address order, so the phone URL does not flip between starts.
    addrs.sort_by_key(|ip| (ip.is_ipv6(), *ip));
    addrs.dedup();
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_are_the_hostname_and_its_mdns_name() {
        let names = LocalNames {
            hostname: Some("Robot-1".into()),
            addrs: vec![],
        };
        assert_eq!(names.dns_names(), vec!["robot-1", "robot-1.local"]);
        assert!(LocalNames::default().dns_names().is_empty());
    }

    #[test]
    fn lan_addr_prefers_ipv4() {
        let names = LocalNames {
            hostname: None,
            addrs: vec!["fe80::1".parse().unwrap(), "192.168.1.7".parse().unwrap()],
        };
        assert_eq!(names.lan_addr(), Some("192.168.1.7".parse().unwrap()));
    }

    #[test]
    fn local_names_have_no_loopback_and_no_duplicates() {
        let names = local_names();
        assert!(names.addrs.iter().all(|a| !a.is_loopback()));
        let mut sorted = names.addrs.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), names.addrs.len());
        if let Some(host) = &names.hostname {
            assert!(valid_dns_name(host), "{host}");
        }
    }

    #[test]
    fn invalid_hostnames_are_refused() {
        assert!(valid_dns_name("robot.lan"));
        assert!(!valid_dns_name("bad name"));
        assert!(!valid_dns_name("-x"));
        assert!(!valid_dns_name(""));
    }
}
