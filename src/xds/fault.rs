//! `envoy.filters.http.fault` per route or virtual host
//! (`typed_per_filter_config`, an `HTTPFault`) into a route's `fault`
//! table: a fixed delay and an HTTP or gRPC abort, each with its
//! percentage, and `max_active_faults`. Anything else in the message is
//! NACKed rather than dropped.

use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use toml::{Table, Value};

use super::convert::Rejected;
use super::convert::{duration, u32_value};

/// The filter's name, the key of `typed_per_filter_config`.
pub const FILTER: &str = "envoy.filters.http.fault";
const TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";

/// The `fault` table for one route's per-filter config.
pub fn fault(any: &Any) -> Result<Table, Rejected> {
    if any.type_url != TYPE_URL {
        return Err(Rejected::unsupported(format!(
            "{FILTER}: per-route config of type {} is not supported (an HTTPFault is)",
            any.type_url
        )));
    }
    let f =
        HttpFault::decode(any.value.as_slice()).map_err(|e| Rejected::undecodable(FILTER, &e))?;
    if !f.headers.is_empty()
        || !f.downstream_nodes.is_empty()
        || !f.upstream_cluster.is_empty()
        || f.response_rate_limit.is_some()
    {
        return Err(Rejected::unsupported(format!(
            "{FILTER}: headers, downstream_nodes, upstream_cluster and response_rate_limit are not supported"
        )));
    }
    let mut t = Table::new();
    if let Some(a) = &f.abort {
        if !a.response_body.is_empty() {
            return Err(Rejected::unsupported(format!(
                "{FILTER}: abort.response_body is not supported"
            )));
        }
        let mut at = Table::new();
        match a.error_type {
            Some(ErrorType::HttpStatus(s)) if (400..600).contains(&s) => {
                at.insert("status".into(), i64::from(s).into());
            }
            Some(ErrorType::HttpStatus(s)) => {
                return Err(Rejected::unsupported(format!(
                    "{FILTER}: abort.http_status {s} is not supported (400 to 599 are)"
                )))
            }
            Some(ErrorType::GrpcStatus(g)) if g <= 16 => {
                at.insert("grpc_status".into(), i64::from(g).into());
            }
            Some(ErrorType::GrpcStatus(g)) => {
                return Err(Rejected::invalid(format!("{FILTER}: abort.grpc_status {g} is not a gRPC status")))
            }
            Some(ErrorType::HeaderAbort(_)) | None => {
                return Err(Rejected::unsupported(format!(
                    "{FILTER}: header-controlled aborts are not supported (http_status or grpc_status are)"
                )))
            }
        }
        at.insert("percent".into(), percent(a.percentage.as_ref())?);
        t.insert("abort".into(), at.into());
    }
    if let Some(d) = &f.delay {
        let mut dt = Table::new();
        match &d.fault_delay_secifier {
            Some(FaultDelaySecifier::FixedDelay(fixed)) => {
                let Some(text) = duration(Some(fixed)) else {
                    return Err(Rejected::invalid(format!(
                        "{FILTER}: delay.fixed_delay must be at least 1 ms"
                    )));
                };
                dt.insert("duration".into(), text.into());
            }
            _ => {
                return Err(Rejected::unsupported(format!(
                    "{FILTER}: header-controlled delays are not supported (fixed_delay is)"
                )))
            }
        }
        dt.insert("percent".into(), percent(d.percentage.as_ref())?);
        t.insert("delay".into(), dt.into());
    }
    if t.is_empty() {
        return Err(Rejected::missing(format!(
            "{FILTER}: an HTTPFault without abort or delay"
        )));
    }
    if let Some(n) = u32_value(f.max_active_faults.as_ref()) {
        if n == 0 {
            return Err(Rejected::invalid(format!(
                "{FILTER}: max_active_faults must be at least 1"
            )));
        }
        t.insert("max_active".into(), i64::from(n).into());
    }
    Ok(t)
}

/// A `FractionalPercent` as a percentage (absent: 0, as in Envoy).
fn percent(p: Option<&FractionalPercent>) -> Result<Value, Rejected> {
    p.map_or(Ok(0.0), fractional)
        .map(Value::Float)
        .map_err(|e| e.within(FILTER))
}

/// A `FractionalPercent` as a percentage, 0.0 to 100.0.
pub fn fractional(p: &FractionalPercent) -> Result<f64, Rejected> {
    let denominator = match DenominatorType::try_from(p.denominator) {
        Ok(DenominatorType::Hundred) => 100.0,
        Ok(DenominatorType::TenThousand) => 10_000.0,
        Ok(DenominatorType::Million) => 1_000_000.0,
        Err(_) => return Err(Rejected::invalid("unknown percentage denominator")),
    };
    Ok((f64::from(p.numerator) / denominator * 100.0).min(100.0))
}
