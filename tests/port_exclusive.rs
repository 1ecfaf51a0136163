//! Only Outrigger's own worker sockets may share a listener's port: a port
//! held by another socket, even one that set SO_REUSEPORT (which Linux would
//! let us join), fails the start or the reload with the listener named.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::admin::TempDir;
use common::*;
use outrigger::control::{Options, Proxy, StartError};
use outrigger::worker::Driver;
use socket2::{Domain, Socket, Type};

both_drivers!(start_refuses_a_shared_port, reload_refuses_a_shared_port);

/// Another program's listening socket with SO_REUSEPORT.
fn squatter() -> (Socket, SocketAddr) {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_reuse_port(true).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.listen(16).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    (s, addr)
}

fn config(driver: Driver, address: &str, echo: SocketAddr) -> String {
    format!(
        "[runtime]\nworkers = 2\nio = \"{}\"\n[admin]\naddress = \"127.0.0.1:0\"\n[listeners.l]\naddress = \"{address}\"\nprotocol = \"tcp\"\ncluster = \"c\"\n[clusters.c]\nendpoints = [\"{echo}\"]\n",
        io_name(driver)
    )
}

fn start_refuses_a_shared_port(driver: Driver) {
    let up = echo(driver);
    let (_held, addr) = squatter();
    let snapshot = outrigger::config::compile(
        Path::new("<test>"),
        &config(driver, &addr.to_string(), up.addr),
    )
    .unwrap();
    match outrigger::start(snapshot) {
        Err(e @ StartError::Bind { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("\"l\"") && msg.contains(&addr.to_string()),
                "{msg}"
            );
            assert!(msg.contains("already in use"), "{msg}");
            // Said once, not twice through the error chain.
            assert!(std::error::Error::source(&e).is_none(), "{msg}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("started on a port another socket holds"),
    }
}

fn reload_refuses_a_shared_port(driver: Driver) {
    let up = echo(driver);
    let dir = TempDir::new("port-exclusive");
    let path = dir.path("config.toml");
    std::fs::write(&path, config(driver, "127.0.0.1:0", up.addr)).unwrap();
    let snapshot = outrigger::config::load(&path).unwrap();
    let options = Options {
        config_path: Some(path.clone()),
        watch: false,
    };
    let proxy = Proxy::launch(snapshot, options, None).unwrap();
    let before = proxy.local_addr("l").unwrap();
    let (_held, addr) = squatter();
    std::fs::write(&path, config(driver, &addr.to_string(), up.addr)).unwrap();
    let err = proxy.reload().unwrap_err();
    assert!(
        err.contains("\"l\"") && err.contains("already in use"),
        "{err}"
    );
    // Nothing changed: the listener still serves on its old port.
    assert_eq!(proxy.local_addr("l"), Some(before));
    let mut s = connect(before);
    assert_eq!(round_trip(&mut s, b"still"), b"still");
}
