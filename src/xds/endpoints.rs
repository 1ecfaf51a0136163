//! EDS and a cluster's inline load assignment: endpoints with their
//! locality and priority (`Found`), the names of a DNS cluster, and both
//! back into the `endpoints` tables of the config file's shape.

use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, LocalityLbEndpoints,
};
use toml::{Table, Value};

use super::convert::u32_value;
use super::convert::Rejected;
use crate::discovery::Found;
use crate::upstream::locality::MAX_PRIORITY;
use crate::upstream::Locality;

/// An IP socket address.
fn socket(a: Option<&Address>) -> Result<SocketAddr, Rejected> {
    let (host, port) = host_port(a)?;
    let ip: IpAddr = host
        .parse()
        .map_err(|_| Rejected::invalid(format!("\"{host}\" is not an IP address")))?;
    Ok(SocketAddr::new(ip, port))
}

/// Host and port of a socket address.
pub(super) fn host_port(a: Option<&Address>) -> Result<(String, u16), Rejected> {
    let Some(address::Address::SocketAddress(s)) = a.and_then(|a| a.address.as_ref()) else {
        return Err(Rejected::unsupported("only socket addresses are supported"));
    };
    let port = match &s.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => {
            u16::try_from(*p).map_err(|_| Rejected::invalid(format!("port {p} is out of range")))?
        }
        Some(socket_address::PortSpecifier::NamedPort(n)) => {
            return Err(Rejected::unsupported(format!(
                "named port \"{n}\" is not supported"
            )))
        }
        None => 0,
    };
    Ok((s.address.clone(), port))
}

/// Endpoints of a load assignment, with their locality's region, zone
/// and priority (priorities past 7 are refused); with `skip_unhealthy`, endpoints whose health status says not to send
/// them traffic are left out.
pub fn endpoints(
    cla: Option<&ClusterLoadAssignment>,
    skip_unhealthy: bool,
) -> Result<Vec<Found>, Rejected> {
    let mut out: Vec<Found> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let Some(cla) = cla else { return Ok(out) };
    for group in &cla.endpoints {
        let (locality, priority) = group_locality(group)?;
        for ep in &group.lb_endpoints {
            // HEALTHY (1) and UNKNOWN (0) take traffic; UNHEALTHY (2),
            // DRAINING (3), TIMEOUT (4) and DEGRADED (5) do not.
            if skip_unhealthy && ep.health_status > 1 {
                continue;
            }
            let Some(lb_endpoint::HostIdentifier::Endpoint(e)) = &ep.host_identifier else {
                return Err(Rejected::unsupported("named endpoints are not supported"));
            };
            let a = socket(e.address.as_ref())?;
            let weight = u32_value(ep.load_balancing_weight.as_ref())
                .unwrap_or(1)
                .clamp(1, 1000);
            if seen.insert(a) {
                out.push(Found {
                    address: a,
                    written: a.to_string(),
                    weight,
                    locality: locality.clone(),
                    priority,
                });
            }
        }
    }
    Ok(out)
}

/// A STRICT_DNS cluster's `host:port` names, weighted.
pub(super) fn dns_names(cla: Option<&ClusterLoadAssignment>) -> Result<Vec<Value>, Rejected> {
    let mut out = Vec::new();
    let Some(cla) = cla else { return Ok(out) };
    for group in &cla.endpoints {
        let (locality, priority) = group_locality(group)?;
        for ep in &group.lb_endpoints {
            let Some(lb_endpoint::HostIdentifier::Endpoint(e)) = &ep.host_identifier else {
                return Err(Rejected::unsupported("named endpoints are not supported"));
            };
            let (host, port) = host_port(e.address.as_ref())?;
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            let weight = u32_value(ep.load_balancing_weight.as_ref()).unwrap_or(1);
            let mut t = Table::new();
            t.insert("address".into(), format!("{host}:{port}").into());
            t.insert("weight".into(), i64::from(weight.clamp(1, 1000)).into());
            locality_keys(&mut t, &locality, priority);
            out.push(t.into());
        }
    }
    Ok(out)
}

pub(super) fn endpoint_array(found: &[Found]) -> Value {
    Value::Array(
        found
            .iter()
            .map(|f| {
                let mut t = Table::new();
                t.insert("address".into(), f.address.to_string().into());
                t.insert("weight".into(), i64::from(f.weight).into());
                locality_keys(&mut t, &f.locality, f.priority);
                t.into()
            })
            .collect(),
    )
}

/// A locality group's region and zone (`sub_zone` is not used) and its
/// priority.
fn group_locality(group: &LocalityLbEndpoints) -> Result<(Locality, u32), Rejected> {
    if group.priority > MAX_PRIORITY {
        return Err(Rejected::unsupported(format!(
            "priority {} is not supported (0 to {MAX_PRIORITY})",
            group.priority
        )));
    }
    let locality = group
        .locality
        .as_ref()
        .map(|l| Locality::new(l.region.clone(), l.zone.clone()))
        .unwrap_or_default();
    Ok((locality, group.priority))
}

/// An endpoint table's `zone`, `region` and `priority`, where set.
fn locality_keys(t: &mut Table, locality: &Locality, priority: u32) {
    if !locality.zone.is_empty() {
        t.insert("zone".into(), locality.zone.clone().into());
    }
    if !locality.region.is_empty() {
        t.insert("region".into(), locality.region.clone().into());
    }
    if priority > 0 {
        t.insert("priority".into(), i64::from(priority).into());
    }
}

/// An EDS resource: its name and endpoints.
pub fn assignment(cla: &ClusterLoadAssignment) -> Result<Vec<Found>, Rejected> {
    if cla.cluster_name.is_empty() {
        return Err(Rejected::missing(
            "a ClusterLoadAssignment without cluster_name",
        ));
    }
    if !cla.named_endpoints.is_empty() {
        return Err(Rejected::unsupported("named_endpoints are not supported"));
    }
    endpoints(Some(cla), true)
}
