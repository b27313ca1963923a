//! A stand-in Kubernetes API server on loopback: just enough of
//! `GET /api/v1/pods` (list, and `watch=true` streams) for the agent's pod
//! watch, serving recorded pod objects from `tests/fixtures/pods/`.
//!
//! Like the real server it honours `fieldSelector=spec.nodeName=...`,
//! stamps every change with a new `resourceVersion`, streams watch events
//! as JSON lines (chunked), resumes a watch from a resourceVersion, and
//! answers a watch from a compacted-away version with a 410 Gone event.
//! [`FakeApi::stop`] closes the listener and every open watch, as a dying
//! API server would; [`FakeApi::restart`] listens on the same port again.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{TcpListener, TcpStream},
    path::Path,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

/// A recorded pod object from `tests/fixtures/pods/<name>.json`.
pub fn pod_fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pods").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn pod_uid(pod: &Value) -> String {
    pod["metadata"]["uid"].as_str().expect("pod has a uid").to_owned()
}

#[derive(Default)]
struct State {
    pods: BTreeMap<String, Value>,
    resource_version: u64,
    /// (resourceVersion, event) for every change, oldest first.
    history: Vec<(u64, Value)>,
    /// A watch from a version older than this gets 410 Gone.
    oldest_watchable: u64,
    /// Request lines seen ("GET /api/v1/pods?...").
    requests: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub struct FakeApi {
    shared: Arc<Shared>,
    port: u16,
    server: Option<Server>,
}

impl FakeApi {
    pub fn start() -> FakeApi {
        let shared = Arc::new(Shared { state: Mutex::new(State::default()), changed: Condvar::new() });
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake API server");
        let port = listener.local_addr().expect("addr").port();
        let server = Some(serve(listener, Arc::clone(&shared)));
        FakeApi { shared, port, server }
    }

    /// What `--kube-api` takes.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Adds a pod (an ADDED event).
    pub fn add(&self, pod: Value) {
        self.change("ADDED", pod);
    }

    /// Changes the pod with `uid` (a MODIFIED event).
    pub fn modify(&self, uid: &str, edit: impl FnOnce(&mut Value)) {
        let mut pod = self.shared.state.lock().expect("lock").pods.get(uid).cloned().expect("no such pod");
        edit(&mut pod);
        self.change("MODIFIED", pod);
    }

    /// Removes the pod with `uid` (a DELETED event).
    pub fn delete(&self, uid: &str) {
        let pod = self.shared.state.lock().expect("lock").pods.get(uid).cloned().expect("no such pod");
        self.change("DELETED", pod);
    }

    fn change(&self, kind: &str, mut pod: Value) {
        let mut s = self.shared.state.lock().expect("lock");
        s.resource_version += 1;
        let rv = s.resource_version;
        pod["metadata"]["resourceVersion"] = json!(rv.to_string());
        let uid = pod_uid(&pod);
        if kind == "DELETED" {
            s.pods.remove(&uid);
        } else {
            s.pods.insert(uid, pod.clone());
        }
        s.history.push((rv, json!({"type": kind, "object": pod})));
        self.shared.changed.notify_all();
    }

    /// Forgets the change history, as etcd compaction does: a watch that
    /// resumes from before now is answered 410 Gone and must list again.
    pub fn compact(&self) {
        let mut s = self.shared.state.lock().expect("lock");
        s.history.clear();
        s.oldest_watchable = s.resource_version;
    }

    /// Closes the listener and every open connection.
    pub fn stop(&mut self) {
        self.server = None;
        self.shared.changed.notify_all();
    }

    /// Listens again, on the same port.
    pub fn restart(&mut self) {
        assert!(self.server.is_none(), "the fake API server is running");
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding port {}: {e}", self.port);
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("rebind port {}: {e}", self.port),
            }
        };
        self.server = Some(serve(listener, Arc::clone(&self.shared)));
    }

    pub fn requests(&self) -> Vec<String> {
        self.shared.state.lock().expect("lock").requests.clone()
    }
}

fn serve(listener: TcpListener, shared: Arc<Shared>) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    listener.set_nonblocking(true).expect("nonblocking listener");
    let thread = std::thread::spawn(move || {
        let mut connections = Vec::new();
        while !flag.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((conn, _)) => {
                    let (shared, flag) = (Arc::clone(&shared), Arc::clone(&flag));
                    connections.push(std::thread::spawn(move || {
                        let _ = handle(conn, &shared, &flag);
                    }));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        // The listener closes here; open watches see the flag and hang up.
        drop(listener);
        for c in connections {
            let _ = c.join();
        }
    });
    Server { stop, thread: Some(thread) }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn handle(conn: TcpStream, shared: &Shared, stop: &AtomicBool) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    shared.state.lock().expect("lock").requests.push(format!("GET {}", percent_decode(&target)));
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let params: BTreeMap<String, String> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect();
    let mut conn = conn;
    if path != "/api/v1/pods" {
        let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}).to_string();
        return write!(
            conn,
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    let node = params.get("fieldSelector").and_then(|f| f.strip_prefix("spec.nodeName=")).map(str::to_owned);
    let on_node = |pod: &Value| node.as_deref().is_none_or(|n| pod["spec"]["nodeName"] == n);
    if params.get("watch").is_some_and(|w| w == "true" || w == "1") {
        let from: u64 = params.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )?;
        let chunk = |conn: &mut TcpStream, v: &Value| -> std::io::Result<()> {
            let line = format!("{v}\n");
            write!(conn, "{:x}\r\n{line}\r\n", line.len())?;
            conn.flush()
        };
        let mut sent = from;
        let mut state = shared.state.lock().expect("lock");
        if from < state.oldest_watchable {
            drop(state);
            chunk(
                &mut conn,
                &json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": format!("too old resource version: {from} (compacted)"), "reason": "Expired", "code": 410}}),
            )?;
            return write!(conn, "0\r\n\r\n");
        }
        loop {
            if stop.load(Ordering::SeqCst) {
                // Hang up mid-stream, as a dying server does.
                return Ok(());
            }
            let pending: Vec<(u64, Value)> =
                state.history.iter().filter(|(rv, e)| *rv > sent && on_node(&e["object"])).cloned().collect();
            sent = sent.max(state.resource_version);
            if pending.is_empty() {
                state = shared.changed.wait_timeout(state, Duration::from_millis(100)).expect("lock").0;
                continue;
            }
            drop(state);
            for (_, event) in &pending {
                chunk(&mut conn, event)?;
            }
            state = shared.state.lock().expect("lock");
        }
    }
    let state = shared.state.lock().expect("lock");
    let items: Vec<&Value> = state.pods.values().filter(|p| on_node(p)).collect();
    let body = json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": state.resource_version.to_string()},
        "items": items,
    })
    .to_string();
    drop(state);
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes_query_strings() {
        assert_eq!(percent_decode("spec.nodeName%3Dnode-a"), "spec.nodeName=node-a");
        assert_eq!(percent_decode("a+b%2"), "a b%2");
    }
}
