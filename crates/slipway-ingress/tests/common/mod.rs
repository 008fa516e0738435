//! What the ingress's test files share: an ingress serving one app on loopback, and a reader
//! of raw answers.

use std::net::SocketAddr;
use std::sync::Arc;

use slipway_ingress::{Ingress, IngressConfig};
use slipway_spec::parse_spec;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, DropGuard};

/// An ingress with `config`, serving the app of `spec` as `app1` on a loopback port until the
/// guard is dropped.
pub async fn serve(config: IngressConfig, spec: &str) -> (Arc<Ingress>, SocketAddr, DropGuard) {
    let ingress = Ingress::new(config);
    ingress.set_app("app1", &parse_spec(spec).unwrap().spec);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(slipway_ingress::serve(
        Arc::clone(&ingress),
        listener,
        stop.clone(),
    ));
    (ingress, addr, stop.drop_guard())
}

/// Reads one answer from a raw connection: its head, and a body of `Content-Length` bytes.
pub async fn read_answer(conn: &mut TcpStream) -> (String, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_string)
        })
        .map_or(0, |l| l.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).await.unwrap();
    (head, String::from_utf8(body).unwrap())
}
