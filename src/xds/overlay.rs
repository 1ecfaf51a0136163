//! The resources the xDS client holds, their translation, and the
//! overlay they make: TOML tables in the config file's own shape, compiled
//! with the file.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use toml::{Table, Value};

use super::convert::Rejected;
use super::listener::inline_table;
use super::{Kind, XCluster, XListener, XRoutes};
use crate::config::overlay::FileNames;
use crate::discovery::Found;

/// Everything accepted from the management server.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct State {
    pub clusters: BTreeMap<String, XCluster>,
    pub listeners: BTreeMap<String, XListener>,
    pub routes: BTreeMap<String, XRoutes>,
    /// EDS: service name -> endpoints.
    pub endpoints: BTreeMap<String, Vec<Found>>,
}

impl State {
    /// Take a response's resources of `kind`. Valid ones replace what was
    /// held; for CDS and LDS (state of the world) resources missing from
    /// the response are removed; an invalid resource keeps its previous
    /// version. Returns one error line per rejected resource.
    pub fn take(&mut self, kind: Kind, resources: &[Any], file: &FileNames) -> Vec<String> {
        let mut errors = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, any) in resources.iter().enumerate() {
            if any.type_url != kind.type_url() {
                errors.push(format!(
                    "resource #{i}: type {} in a {} response",
                    any.type_url,
                    kind.name()
                ));
                continue;
            }
            let bytes = any.value.as_slice();
            let result = match kind {
                Kind::Cluster => Cluster::decode(bytes)
                    .map_err(|e| (format!("#{i}"), Rejected::invalid(e.to_string())))
                    .and_then(|c| {
                        if file.clusters.contains(&c.name) {
                            return Err((
                                c.name.clone(),
                                Rejected::conflict(
                                    "a cluster of this name is defined in the config file",
                                ),
                            ));
                        }
                        super::translate_cluster(&c)
                            .map(|x| (c.name.clone(), Held::Cluster(x)))
                            .map_err(|e| (c.name.clone(), e))
                    }),
                Kind::Listener => Listener::decode(bytes)
                    .map_err(|e| (format!("#{i}"), Rejected::invalid(e.to_string())))
                    .and_then(|l| {
                        if file.listeners.contains(&l.name) {
                            return Err((
                                l.name.clone(),
                                Rejected::conflict(
                                    "a listener of this name is defined in the config file",
                                ),
                            ));
                        }
                        super::translate_listener(&l)
                            .map(|x| (l.name.clone(), Held::Listener(x)))
                            .map_err(|e| (l.name.clone(), e))
                    }),
                Kind::Route => RouteConfiguration::decode(bytes)
                    .map_err(|e| (format!("#{i}"), Rejected::invalid(e.to_string())))
                    .and_then(|r| {
                        if file.routes.contains(&r.name) {
                            return Err((
                                r.name.clone(),
                                Rejected::conflict(
                                    "a route table of this name is defined in the config file",
                                ),
                            ));
                        }
                        super::translate_route_config(&r)
                            .map(|x| (r.name.clone(), Held::Routes(x)))
                            .map_err(|e| (r.name.clone(), e))
                    }),
                Kind::Endpoint => ClusterLoadAssignment::decode(bytes)
                    .map_err(|e| (format!("#{i}"), Rejected::invalid(e.to_string())))
                    .and_then(|c| {
                        super::assignment(&c)
                            .map(|x| (c.cluster_name.clone(), Held::Endpoints(x)))
                            .map_err(|e| (c.cluster_name.clone(), e))
                    }),
            };
            match result {
                Ok((name, held)) => {
                    seen.insert(name.clone());
                    match held {
                        Held::Cluster(x) => drop(self.clusters.insert(name, x)),
                        Held::Listener(x) => drop(self.listeners.insert(name, x)),
                        Held::Routes(x) => drop(self.routes.insert(name, x)),
                        Held::Endpoints(x) => drop(self.endpoints.insert(name, x)),
                    }
                }
                Err((name, e)) => {
                    seen.insert(name.clone());
                    errors.push(format!("{} {name}: {e}", kind.name()));
                }
            }
        }
        match kind {
            Kind::Cluster => {
                let referenced = self.referenced_clusters();
                let gone: Vec<String> = self
                    .clusters
                    .keys()
                    .filter(|n| !seen.contains(*n))
                    .cloned()
                    .collect();
                for n in gone {
                    // Removing a cluster that routes still send to would
                    // take their listener down: it stays until they change.
                    if let Some(by) = referenced.get(&n) {
                        errors.push(format!("cds {n}: removal refused: still used by {by}"));
                    } else {
                        self.clusters.remove(&n);
                    }
                }
            }
            Kind::Listener => self.listeners.retain(|n, _| seen.contains(n)),
            Kind::Route | Kind::Endpoint => {}
        }
        errors
    }

    /// Put one resource back to its version in `prev` (or remove it).
    pub fn revert(&mut self, kind: Kind, name: &str, prev: &State) {
        fn back<T: Clone>(now: &mut BTreeMap<String, T>, prev: &BTreeMap<String, T>, name: &str) {
            match prev.get(name) {
                Some(v) => drop(now.insert(name.to_string(), v.clone())),
                None => drop(now.remove(name)),
            }
        }
        match kind {
            Kind::Cluster => back(&mut self.clusters, &prev.clusters, name),
            Kind::Listener => back(&mut self.listeners, &prev.listeners, name),
            Kind::Route => back(&mut self.routes, &prev.routes, name),
            Kind::Endpoint => back(&mut self.endpoints, &prev.endpoints, name),
        }
    }

    /// Which held resource of `kind` a config error key points into.
    pub fn culprit(&self, kind: Kind, key: &str) -> Option<String> {
        let within = |prefix: &str, name: &str| {
            key.strip_prefix(prefix)
                .and_then(|k| k.strip_prefix(name))
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        };
        match kind {
            Kind::Cluster => self
                .clusters
                .keys()
                .find(|n| within("clusters.", n))
                .cloned(),
            Kind::Listener => self
                .listeners
                .keys()
                .find(|n| within("listeners.", n) || within("routes.", &inline_table(n)))
                .cloned(),
            Kind::Route => self.routes.keys().find(|n| within("routes.", n)).cloned(),
            Kind::Endpoint => None,
        }
    }

    /// The EDS resources the held clusters need.
    pub fn eds_names(&self) -> BTreeSet<String> {
        self.clusters
            .values()
            .filter_map(|c| c.eds.clone())
            .collect()
    }

    /// The RDS resources the held listeners need.
    pub fn rds_names(&self) -> BTreeSet<String> {
        self.listeners
            .values()
            .filter_map(|l| l.rds.clone())
            .collect()
    }

    /// Cluster name -> what uses it (a route configuration or listener).
    fn referenced_clusters(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (name, l) in &self.listeners {
            if let Some(c) = &l.cluster {
                out.insert(c.clone(), format!("listener {name}"));
            }
            let table = match (&l.rds, &l.inline) {
                (Some(r), _) => self
                    .routes
                    .get(r)
                    .map(|t| (format!("route configuration {r}"), t)),
                (None, Some(t)) => Some((format!("listener {name}"), t)),
                _ => None,
            };
            if let Some((by, t)) = table {
                for c in &t.clusters {
                    out.insert(c.clone(), by.clone());
                }
            }
        }
        out
    }

    /// The overlay: every held cluster, and every listener that is ready
    /// (its route configuration arrived and all the clusters it sends to
    /// exist) with its route table. Listeners still waiting are left out,
    /// as Envoy keeps a listener warming until its routes arrive.
    pub fn overlay(&self, file: &FileNames) -> String {
        let known = |c: &String| file.clusters.contains(c) || self.clusters.contains_key(c);
        let mut clusters = Table::new();
        for (name, c) in &self.clusters {
            clusters.insert(name.clone(), Value::Table(c.table.clone()));
        }
        let mut listeners = Table::new();
        let mut routes = Table::new();
        for (name, l) in &self.listeners {
            let table = match (&l.rds, &l.inline) {
                (Some(r), _) => self.routes.get(r).map(|t| (r.clone(), t)),
                (None, Some(t)) => Some((inline_table(name), t)),
                (None, None) => None,
            };
            let ready = match (&table, &l.cluster) {
                (Some((_, t)), _) => t.clusters.iter().all(known),
                (None, Some(c)) => known(c),
                (None, None) => false,
            };
            if !ready {
                continue;
            }
            if let Some((tname, t)) = table {
                routes.insert(tname, Value::Array(t.routes.clone()));
            }
            listeners.insert(name.clone(), Value::Table(l.table.clone()));
        }
        let mut top = Table::new();
        if !clusters.is_empty() {
            top.insert("clusters".into(), clusters.into());
        }
        if !listeners.is_empty() {
            top.insert("listeners".into(), listeners.into());
        }
        if !routes.is_empty() {
            top.insert("routes".into(), routes.into());
        }
        if top.is_empty() {
            return String::new();
        }
        toml::to_string(&top).unwrap_or_default()
    }

    /// Resources held of one kind.
    pub fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Cluster => self.clusters.len(),
            Kind::Listener => self.listeners.len(),
            Kind::Route => self.routes.len(),
            Kind::Endpoint => self.endpoints.len(),
        }
    }
}

enum Held {
    Cluster(XCluster),
    Listener(XListener),
    Routes(XRoutes),
    Endpoints(Vec<Found>),
}
