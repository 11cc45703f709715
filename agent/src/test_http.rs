//! A tiny HTTP server for unit tests of the agent's HTTP clients.
use std::io::Read;

/// Answers one request: given the lower-cased request head and the stream.
pub type Handler = Box<dyn FnOnce(&str, &mut std::net::TcpStream) + Send>;

/// A tiny HTTP server: each connection is answered by the next handler (given
/// the request head and the stream); the request heads come back in order.
pub fn serve(handlers: Vec<Handler>) -> (String, std::sync::mpsc::Receiver<String>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for h in handlers {
            let (mut s, _) = l.accept().unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
                head.push(b[0]);
            }
            let head = String::from_utf8_lossy(&head).to_lowercase();
            h(&head, &mut s);
            let _ = tx.send(head);
        }
    });
    (url, rx)
}
