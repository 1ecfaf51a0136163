//! A route's `mirror` (one table or a list) and `mirror_body_limit`
//! (docs/resilience.md, "Request mirroring").

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_spanned::Spanned;

use super::ctx::Ctx;
use super::value::positive;
use crate::route::mirror::{Mirror, DEFAULT_MAX_ACTIVE};

/// `mirror = { cluster, percent, max_active }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMirror {
    pub cluster: Spanned<String>,
    pub percent: Option<Spanned<f64>>,
    #[serde(default, deserialize_with = "positive")]
    pub max_active: Option<u64>,
}

/// One mirror table, or a list of them.
#[derive(Debug)]
pub struct FileMirrors(pub Vec<FileMirror>);

impl<'de> Deserialize<'de> for FileMirrors {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FileMirrors;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mirror table { cluster, percent } or a list of them")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let one = FileMirror::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(FileMirrors(vec![one]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                let many =
                    Vec::<FileMirror>::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(FileMirrors(many))
            }
        }
        d.deserialize_any(V)
    }
}

/// Compile a route's mirrors; `None` (with the errors recorded) when one
/// is invalid. `cluster_exists` checks the target.
pub(super) fn mirrors(
    cx: &mut Ctx<'_>,
    key: &str,
    m: &Spanned<FileMirrors>,
    cluster_exists: &dyn Fn(&str) -> bool,
) -> Option<Vec<Mirror>> {
    let mut out = Vec::new();
    let mut ok = true;
    for (i, f) in m.get_ref().0.iter().enumerate() {
        let at = if m.get_ref().0.len() == 1 {
            format!("{key}.mirror")
        } else {
            format!("{key}.mirror[{i}]")
        };
        if !cluster_exists(f.cluster.get_ref()) {
            cx.error(
                f.cluster.span(),
                format!("{at}.cluster"),
                format!("no cluster named \"{}\"", f.cluster.get_ref()),
            );
            ok = false;
        }
        let pm = super::fault::percent_of(cx, &format!("{at}.percent"), &f.percent).unwrap_or_else(
            || {
                ok = false;
                0
            },
        );
        out.push(Mirror {
            cluster: f.cluster.get_ref().clone(),
            per_million: pm,
            max_active: f.max_active.unwrap_or(DEFAULT_MAX_ACTIVE),
        });
    }
    if out.is_empty() {
        cx.error(
            m.span(),
            format!("{key}.mirror"),
            "an empty list mirrors nothing",
        );
        ok = false;
    }
    ok.then_some(out)
}
