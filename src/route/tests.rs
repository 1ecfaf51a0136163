use super::*;

struct Req<'a> {
    host: Option<&'a str>,
    path: &'a str,
    method: &'a str,
    headers: &'a [(&'a str, &'a str)],
}

impl RouteRequest for Req<'_> {
    fn host(&self) -> Option<&str> {
        self.host
    }
    fn path(&self) -> &str {
        self.path
    }
    fn method(&self) -> &str {
        self.method
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

fn route(name: &str, host: Option<HostMatch>, path: Option<PathMatch>) -> Route {
    Route {
        retry: None,
        rate_limit: None,
        fault: None,
        mirrors: Vec::new(),
        mirror_body_limit: 65536,
        authz: None,
        peer_identity: None,
        destination_port: None,
        grpc: None,
        grpc_web: None,
        trace_sampling: None,
        name: name.into(),
        stats: std::sync::Arc::new(crate::metrics::RouteStats::new(1)),
        host,
        path,
        methods: vec![],
        headers: vec![],
        action: RouteAction::Cluster(name.into()),
        timeout: None,
        request_headers: HeaderRewrite::default(),
        response_headers: HeaderRewrite::default(),
        rewrite_path_prefix: None,
    }
}

fn table() -> RouteTable {
    let mut canary = route("canary", None, Some(PathMatch::Prefix("/".into())));
    canary.headers = vec![("x-canary".into(), "1".into())];
    let mut get_only = route("get", None, Some(PathMatch::Exact("/only-get".into())));
    get_only.methods = vec!["GET".into(), "HEAD".into()];
    RouteTable::new(
        "t".into(),
        vec![
            route(
                "api",
                Some(HostMatch::Exact("api.example.com".into())),
                Some(PathMatch::Prefix("/v1/".into())),
            ),
            route("wild", Some(HostMatch::Suffix(".example.com".into())), None),
            route(
                "re",
                None,
                Some(PathMatch::Regex(Regex::new("^/v[0-9]+/x$").unwrap())),
            ),
            get_only,
            canary,
        ],
    )
}

/// host, path, method, headers, expected route.
type Case<'a> = (
    Option<&'a str>,
    &'a str,
    &'a str,
    &'a [(&'a str, &'a str)],
    Option<&'a str>,
);

#[test]
fn first_match_wins_table() {
    let t = table();
    let cases: &[Case] = &[
        (
            Some("api.example.com"),
            "/v1/users",
            "GET",
            &[],
            Some("api"),
        ),
        (
            Some("API.Example.COM:8080"),
            "/v1/",
            "POST",
            &[],
            Some("api"),
        ),
        (
            Some("api.example.com"),
            "/v2/users",
            "GET",
            &[],
            Some("wild"),
        ),
        (Some("www.example.com"), "/", "GET", &[], Some("wild")),
        (Some("example.com"), "/", "GET", &[], None),
        (Some("evilexample.com"), "/", "GET", &[], None),
        (None, "/v7/x", "GET", &[], Some("re")),
        (None, "/v7/xy", "GET", &[], None),
        (None, "/only-get", "GET", &[], Some("get")),
        (None, "/only-get", "POST", &[], None),
        (
            None,
            "/anything",
            "GET",
            &[("X-Canary", "1")],
            Some("canary"),
        ),
        (None, "/anything", "GET", &[("x-canary", "2")], None),
        (
            None,
            "/only-get",
            "DELETE",
            &[("x-canary", "1")],
            Some("canary"),
        ),
    ];
    for (host, path, method, headers, want) in cases {
        let req = Req {
            host: *host,
            path,
            method,
            headers,
        };
        let got = t.lookup(&req).map(|r| r.name.as_str());
        assert_eq!(got, *want, "host={host:?} path={path} method={method}");
    }
}

#[test]
fn split_pick_covers_weights() {
    let w = WeightedClusters {
        targets: vec![("a".into(), 90), ("b".into(), 10)],
        total: 100,
    };
    let a = (0..100).filter(|n| w.pick(*n) == "a").count();
    assert_eq!(a, 90);
    assert_eq!(w.pick(95), "b");
    assert_eq!(w.pick(195), "b");
    // A branch with weight 0 is drained: never picked.
    let drained = WeightedClusters {
        targets: vec![("old".into(), 0), ("new".into(), 5), ("spare".into(), 0)],
        total: 5,
    };
    assert!((0..1000).all(|n| drained.pick(n) == "new"));
    // And the config compiles it.
    let text = "[listeners.l]\naddress = \"127.0.0.1:1\"\nprotocol = \"http\"\nroutes = \"r\"\n[[routes.r]]\nmatch.path_prefix = \"/\"\nsplit = [{ cluster = \"a\", weight = 100 }, { cluster = \"b\", weight = 0 }]\n[clusters.a]\nendpoints = [\"127.0.0.1:2\"]\n[clusters.b]\nendpoints = [\"127.0.0.1:3\"]\n";
    assert!(crate::config::compile(std::path::Path::new("t.toml"), text).is_ok());
}

#[test]
fn strip_port_forms() {
    assert_eq!(strip_port("a.com:80"), "a.com");
    assert_eq!(strip_port("a.com"), "a.com");
    assert_eq!(strip_port("[::1]:80"), "[::1]");
}

#[test]
fn host_index_keeps_first_match_order() {
    let mut catch_all_get = route("get-any", None, Some(PathMatch::Prefix("/".into())));
    catch_all_get.methods = vec!["GET".into()];
    let t = RouteTable::new(
        "t".into(),
        vec![
            route(
                "wild",
                Some(HostMatch::Suffix(".example.com".into())),
                Some(PathMatch::Prefix("/w/".into())),
            ),
            route(
                "api",
                Some(HostMatch::Exact("api.example.com".into())),
                None,
            ),
            catch_all_get,
            route("other", Some(HostMatch::Exact("other.test".into())), None),
        ],
    );
    let req = |host: &'static str, path: &'static str, method: &'static str| Req {
        host: Some(host),
        path,
        method,
        headers: &[],
    };
    let name = |r: Req| t.lookup(&r).map(|r| r.name.clone());
    assert_eq!(
        name(req("api.example.com", "/w/x", "GET")).as_deref(),
        Some("wild")
    );
    assert_eq!(
        name(req("API.EXAMPLE.COM:443", "/x", "POST")).as_deref(),
        Some("api")
    );
    assert_eq!(
        name(req("other.test", "/x", "GET")).as_deref(),
        Some("get-any"),
        "earlier hostless route wins"
    );
    assert_eq!(
        name(req("other.test", "/x", "POST")).as_deref(),
        Some("other")
    );
    assert_eq!(name(req("unknown.test", "/x", "POST")), None);
    assert_eq!(
        name(req("unknown.test", "/x", "GET")).as_deref(),
        Some("get-any")
    );
    let long: &'static str = Box::leak("a".repeat(300).into_boxed_str());
    assert_eq!(name(req(long, "/x", "GET")).as_deref(), Some("get-any"));
}

/// A table with many regex routes matches them as one set and still returns
/// the first route (in table order) whose every condition holds: regex,
/// host, method, headers.
#[test]
fn regex_set_keeps_first_match_order() {
    let re = |p: &str| Some(PathMatch::Regex(Regex::new(p).unwrap()));
    let mut routes = Vec::new();
    for i in 0..50 {
        routes.push(route(
            &format!("re{i}"),
            None,
            re(&format!("^/r{i}/[0-9]+$")),
        ));
        routes.push(route(
            &format!("prefix{i}"),
            None,
            Some(PathMatch::Prefix(format!("/p{i}/"))),
        ));
    }
    // Two regexes that both match /both/1: the earlier one wins.
    routes.push(route("both-a", None, re("^/both/")));
    routes.push(route("both-b", None, re("^/both/[0-9]$")));
    // A regex route with a method condition that fails: the next one wins.
    let mut post_only = route("post-only", None, re("^/m/"));
    post_only.methods = vec!["POST".into()];
    routes.push(post_only);
    routes.push(route("m-any", None, re("^/m/x$")));
    // A host-bound regex route.
    routes.push(route(
        "host-re",
        Some(HostMatch::Exact("h.example.com".into())),
        re("^/h$"),
    ));
    let t = RouteTable::new("big".into(), routes);
    assert!(t.regexes.is_some(), "the set is built for a big table");
    let get = |path: &str, host: Option<&str>| {
        t.lookup(&Req {
            host,
            path,
            method: "GET",
            headers: &[],
        })
        .map(|r| r.name.as_str())
    };
    assert_eq!(get("/r0/1", None), Some("re0"));
    assert_eq!(get("/r49/123", None), Some("re49"));
    assert_eq!(get("/r49/x", None), None);
    assert_eq!(get("/p7/anything", None), Some("prefix7"));
    assert_eq!(get("/both/1", None), Some("both-a"));
    assert_eq!(get("/m/x", None), Some("m-any"));
    assert_eq!(get("/h", Some("h.example.com")), Some("host-re"));
    assert_eq!(get("/h", Some("other.example.com")), None);
    // The same answers as matching each route alone.
    for path in ["/r3/9", "/p3/", "/both/7", "/m/x", "/h", "/none"] {
        let alone = t
            .routes
            .iter()
            .find(|r| {
                r.matches(&Req {
                    host: None,
                    path,
                    method: "GET",
                    headers: &[],
                })
            })
            .map(|r| r.name.as_str());
        assert_eq!(get(path, None), alone, "{path}");
    }
}
