//! Name resolution and the network policy, applied to the resolved address before connecting.
//!
//! The address that is checked is the address that is connected to: the probe never looks a
//! name up twice, so a DNS answer that changes between lookups cannot get around the policy.

use std::net::IpAddr;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use ipnet::IpNet;

use crate::config::{IpVersion, Network, ResolverSetting, SiteNetwork};

/// Why a name gave no usable address.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The resolver failed or the name does not exist.
    #[error("dns lookup of {host} failed: {reason}")]
    Lookup {
        /// The name looked up.
        host: String,
        /// What the resolver said.
        reason: String,
    },
    /// The name exists but has no address of the wanted family.
    #[error("{host} has no {family} address")]
    NoAddress {
        /// The name looked up.
        host: String,
        /// `IPv4`, `IPv6` or `IP`.
        family: &'static str,
    },
    /// The resolver could not be built from the configuration.
    #[error("cannot set up the resolver: {0}")]
    Setup(String),
}

/// Resolves names the way the configuration says.
#[derive(Clone)]
pub enum Resolver {
    /// The operating system's resolver (`getaddrinfo`: `/etc/hosts`, `/etc/resolv.conf`, nsswitch).
    System,
    /// Configured name servers.
    Servers(Box<TokioResolver>),
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resolver::System => f.write_str("Resolver::System"),
            Resolver::Servers(_) => f.write_str("Resolver::Servers"),
        }
    }
}

impl Resolver {
    /// Builds the resolver of a `network` section.
    pub fn new(network: &Network) -> Result<Self, ResolveError> {
        let servers = match &network.resolver {
            ResolverSetting::System => return Ok(Resolver::System),
            ResolverSetting::Servers(s) => s,
        };
        let name_servers = servers
            .iter()
            .map(|addr| {
                let conn = |protocol| {
                    let mut c = ConnectionConfig::new(protocol);
                    c.port = addr.port();
                    c
                };
                NameServerConfig::new(
                    addr.ip(),
                    true,
                    vec![conn(ProtocolConfig::Udp), conn(ProtocolConfig::Tcp)],
                )
            })
            .collect();
        let config = ResolverConfig::from_parts(None, vec![], name_servers);
        let mut opts = ResolverOpts::default();
        // Every probe measures a real lookup, as blackbox_exporter does.
        opts.cache_size = 0;
        let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| ResolveError::Setup(e.to_string()))?;
        Ok(Resolver::Servers(Box::new(resolver)))
    }

    /// The addresses of `host` in the wanted family, preferred first. Unless `every` is set,
    /// `auto` asks for IPv6 only when the name has no IPv4 address, as most clients do;
    /// with `every` (or a preference) both families are asked for.
    pub async fn lookup_all(
        &self,
        host: &str,
        version: IpVersion,
        every: bool,
    ) -> Result<Vec<IpAddr>, ResolveError> {
        let fail = |reason: String| ResolveError::Lookup {
            host: host.to_string(),
            reason,
        };
        let mut addrs: Vec<IpAddr> = match self {
            Resolver::System => tokio::net::lookup_host((host, 0))
                .await
                .map_err(|e| fail(e.to_string()))?
                .map(|sa| sa.ip())
                .collect(),
            Resolver::Servers(r) => {
                // One query per family; a CNAME chain's A/AAAA records are the answers kept.
                let ask = |kind: RecordType| async move {
                    r.lookup(host, kind).await.map(|l| {
                        l.answers()
                            .iter()
                            .filter_map(|rec| match &rec.data {
                                RData::A(a) => Some(IpAddr::V4(a.0)),
                                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                                _ => None,
                            })
                            .collect::<Vec<_>>()
                    })
                };
                let v4 = || ask(RecordType::A);
                let v6 = || ask(RecordType::AAAA);
                let both = |a: Result<Vec<IpAddr>, _>, b: Result<Vec<IpAddr>, _>| match (a, b) {
                    (Err(e), Err(_)) => Err(e),
                    (a, b) => {
                        let mut all = a.unwrap_or_default();
                        all.extend(b.unwrap_or_default());
                        Ok(all)
                    }
                };
                let found = match version {
                    IpVersion::Ipv4 => v4().await,
                    IpVersion::Ipv6 => v6().await,
                    IpVersion::Auto if !every => match v4().await {
                        Ok(a) if !a.is_empty() => Ok(a),
                        first => both(first, v6().await),
                    },
                    _ => {
                        let (a, b) = tokio::join!(v4(), v6());
                        both(a, b)
                    }
                };
                found.map_err(|e| fail(e.to_string()))?
            }
        };
        let mut seen = std::collections::HashSet::new();
        addrs.retain(|ip| version.admits(ip) && seen.insert(*ip));
        match version {
            IpVersion::PreferIpv4 => addrs.sort_by_key(|ip| ip.is_ipv6()),
            IpVersion::PreferIpv6 => addrs.sort_by_key(|ip| ip.is_ipv4()),
            _ => {}
        }
        if addrs.is_empty() {
            return Err(ResolveError::NoAddress {
                host: host.to_string(),
                family: version.family(),
            });
        }
        Ok(addrs)
    }
}

/// The `deny`/`allow` lists, checked against every address before a socket is opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    deny: Vec<IpNet>,
    allow: Vec<IpNet>,
    builtin: Vec<IpNet>,
}

/// What `--network.multi-tenant` denies on top of `network.deny`: addresses a site list written
/// by someone else must never reach. Private ranges are not in it: some intranets use them,
/// or public ranges, for the very sites they monitor; `network.deny`/`allow` decide those.
pub const MULTI_TENANT_DENY: &[&str] = &[
    "127.0.0.0/8",        // this host (the exporter's own endpoints, sidecars)
    "::1/128",            // this host, IPv6
    "0.0.0.0/8",          // "this network": 0.0.0.0 reaches this host on Linux
    "::/128",             // the unspecified IPv6 address
    "169.254.0.0/16",     // link-local: AWS, GCP, Azure and OpenStack metadata at 169.254.169.254
    "fe80::/10",          // link-local, IPv6
    "fd00:ec2::254/128",  // AWS instance metadata over IPv6
    "100.100.100.200/32", // Alibaba Cloud metadata
    "168.63.129.16/32",   // Azure wire server
];

impl Policy {
    /// The policy of a `network` section.
    pub fn new(network: &Network) -> Self {
        let builtin = if network.multi_tenant {
            MULTI_TENANT_DENY
                .iter()
                .map(|n| n.parse().expect("valid built-in CIDR"))
                .collect()
        } else {
            Vec::new()
        };
        Self {
            deny: network.deny.clone(),
            allow: network.allow.clone(),
            builtin,
        }
    }

    /// `Err` with the reason when the address may not be connected to.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        self.check_site(ip, None)
    }

    /// Like [`Policy::check`], with a site's own exceptions (`--network.site-overrides`):
    /// `--network.multi-tenant` always wins, then the site's `deny`, then its `allow`, then
    /// the `network` section.
    pub fn check_site(&self, ip: IpAddr, site: Option<&SiteNetwork>) -> Result<(), String> {
        // An IPv4-mapped IPv6 address is the IPv4 address for policy purposes.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        if let Some(net) = self.builtin.iter().find(|n| n.contains(&ip)) {
            return Err(format!(
                "address {ip} is denied by --network.multi-tenant ({net})"
            ));
        }
        if let Some(site) = site {
            if let Some(net) = site.deny.iter().find(|n| n.contains(&ip)) {
                return Err(format!(
                    "address {ip} is denied by the site's network.deny {net}"
                ));
            }
            if site.allow.iter().any(|n| n.contains(&ip)) {
                return Ok(());
            }
        }
        if let Some(net) = self.deny.iter().find(|n| n.contains(&ip)) {
            return Err(format!("address {ip} is denied by network.deny {net}"));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|n| n.contains(&ip)) {
            return Err(format!("address {ip} is not in network.allow"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_tenant_denies_the_host_and_metadata_but_not_private_ranges() {
        let on = Policy::new(&Network {
            multi_tenant: true,
            ..Network::default()
        });
        let off = Policy::new(&Network::default());
        for denied in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "169.254.169.254",
            "fd00:ec2::254",
            "fe80::1",
            "100.100.100.200",
            "168.63.129.16",
        ] {
            let ip: IpAddr = denied.parse().unwrap();
            let e = on.check(ip).unwrap_err();
            assert!(e.contains("--network.multi-tenant"), "{denied}: {e}");
            assert!(off.check(ip).is_ok(), "{denied} without the switch");
        }
        for allowed in [
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "11.0.0.1",
            "8.8.8.8",
            "fd12::1",
        ] {
            assert!(on.check(allowed.parse().unwrap()).is_ok(), "{allowed}");
        }
    }

    #[test]
    fn a_site_exception_opens_a_range_but_never_past_multi_tenant() {
        let network = Network {
            deny: vec!["10.0.0.0/8".parse().unwrap()],
            multi_tenant: true,
            ..Network::default()
        };
        let p = Policy::new(&network);
        let site = SiteNetwork {
            allow: vec![
                "10.1.2.3/32".parse().unwrap(),
                "127.0.0.1/32".parse().unwrap(),
            ],
            deny: vec!["192.0.2.0/24".parse().unwrap()],
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(p.check(ip("10.1.2.3")).is_err());
        assert!(p.check_site(ip("10.1.2.3"), Some(&site)).is_ok());
        assert!(p.check_site(ip("10.1.2.4"), Some(&site)).is_err());
        let e = p.check_site(ip("127.0.0.1"), Some(&site)).unwrap_err();
        assert!(e.contains("--network.multi-tenant"), "{e}");
        let e = p.check_site(ip("192.0.2.7"), Some(&site)).unwrap_err();
        assert!(e.contains("the site's network.deny"), "{e}");
        assert!(p.check(ip("192.0.2.7")).is_ok());
    }

    #[test]
    fn deny_wins_and_allow_restricts() {
        let network = Network {
            deny: vec!["169.254.0.0/16".parse().unwrap()],
            allow: vec![
                "127.0.0.0/8".parse().unwrap(),
                "169.254.0.0/16".parse().unwrap(),
            ],
            ..Network::default()
        };
        let p = Policy::new(&network);
        assert!(p.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(p
            .check("169.254.169.254".parse().unwrap())
            .unwrap_err()
            .contains("denied"));
        assert!(p
            .check("11.1.1.1".parse().unwrap())
            .unwrap_err()
            .contains("allow"));
        // Mapped addresses are checked as IPv4.
        assert!(p.check("::ffff:169.254.1.1".parse().unwrap()).is_err());
    }
}
