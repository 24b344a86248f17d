//! A Kubernetes API server for tests: the real list/watch protocol over
//! HTTP/1.1 (resourceVersion, `limit`/`continue` pages, chunked watch
//! streams, bookmarks, 410 Gone as an ERROR event, dropped connections),
//! enough for kube-rs's real client and watchers. Objects are JSON; the
//! test changes them and breaks the server on purpose.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

/// Collection path (as the agent lists it) and list kind of each kind.
const KINDS: &[(&str, &str, &str)] = &[
    ("Service", "/api/v1/services", "v1"),
    (
        "EndpointSlice",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "discovery.k8s.io/v1",
    ),
    ("Node", "/api/v1/nodes", "v1"),
    ("Pod", "/api/v1/pods", "v1"),
    ("Namespace", "/api/v1/namespaces", "v1"),
    (
        "NetworkPolicy",
        "/apis/networking.k8s.io/v1/networkpolicies",
        "networking.k8s.io/v1",
    ),
];

type Key = (String, String, String); // kind, namespace, name

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    /// (resourceVersion, kind, event type, object)
    events: Vec<(u64, String, &'static str, Value)>,
    /// Watches and continue tokens from before this version get 410 Gone.
    compacted: u64,
    unreachable: bool,
    fail_continues: bool,
    page_size: usize,
    /// Bumped to drop every open watch connection.
    watch_epoch: u64,
    /// Every request line served, in order.
    requests: Vec<String>,
    /// Authorization headers seen.
    authorizations: Vec<String>,
    continue_tokens_served: Vec<String>,
}

pub struct ApiServer {
    pub addr: SocketAddr,
    shared: Arc<(Mutex<State>, Condvar)>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

fn kind_of(path: &str) -> Option<&'static (&'static str, &'static str, &'static str)> {
    KINDS.iter().find(|(_, p, _)| *p == path)
}

fn key_of(obj: &Value) -> Key {
    let m = &obj["metadata"];
    (
        obj["kind"].as_str().expect("object has a kind").to_string(),
        m["namespace"].as_str().unwrap_or("").to_string(),
        m["name"].as_str().expect("object has a name").to_string(),
    )
}

/// `a.b=v,c=w` against the object's fields.
fn selected(obj: &Value, selector: Option<&str>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    sel.split(',').all(|term| {
        let Some((path, want)) = term.split_once('=') else {
            return false;
        };
        let ptr = format!("/{}", path.replace('.', "/"));
        obj.pointer(&ptr).and_then(Value::as_str).unwrap_or("") == want
    })
}

fn query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(h, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn respond(c: &mut TcpStream, code: u16, body: &Value) {
    let body = body.to_string();
    let _ = write!(
        c,
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn chunk(c: &mut TcpStream, v: &Value) -> std::io::Result<()> {
    let line = format!("{v}\n");
    write!(c, "{:x}\r\n{line}\r\n", line.len())?;
    c.flush()
}

impl ApiServer {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test API server");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new((
            Mutex::new(State {
                rv: 100,
                page_size: 500,
                ..Default::default()
            }),
            Condvar::new(),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let shared = shared.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let shared = shared.clone();
                    let stop = stop.clone();
                    std::thread::spawn(move || serve(conn, &shared, &stop));
                }
            })
        };
        Self {
            addr,
            shared,
            stop,
            accept: Some(accept),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let (m, cv) = &*self.shared;
        let mut st = m.lock().unwrap();
        let out = f(&mut st);
        cv.notify_all();
        out
    }

    /// Creates or replaces an object (ADDED or MODIFIED for watchers).
    pub fn apply(&self, mut obj: Value) {
        self.with(|st| {
            st.rv += 1;
            obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
            let key = key_of(&obj);
            if obj["metadata"]["uid"].is_null() {
                obj["metadata"]["uid"] = json!(format!("uid-{}-{}-{}", key.0, key.1, key.2));
            }
            let ty = if st.objects.contains_key(&key) {
                "MODIFIED"
            } else {
                "ADDED"
            };
            st.events.push((st.rv, key.0.clone(), ty, obj.clone()));
            st.objects.insert(key, obj);
        });
    }

    /// Applies every document of a YAML text.
    pub fn apply_yaml(&self, yaml: &str) {
        for doc in yaml.split("\n---\n") {
            let v: Value = serde_saphyr::from_str(doc).expect("test YAML");
            self.apply(v);
        }
    }

    /// Deletes an object (DELETED for watchers).
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        self.with(|st| {
            let key = (kind.to_string(), namespace.to_string(), name.to_string());
            let mut obj = st.objects.remove(&key).expect("deleting a known object");
            st.rv += 1;
            obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
            st.events.push((st.rv, kind.to_string(), "DELETED", obj));
        });
    }

    /// Deletes an object while history is compacted past the deletion:
    /// watchers never see the event, their next watch gets 410 Gone, and
    /// only a relist can tell them the object is gone.
    pub fn delete_unseen_and_expire(&self, kind: &str, namespace: &str, name: &str) {
        self.with(|st| {
            let key = (kind.to_string(), namespace.to_string(), name.to_string());
            st.objects.remove(&key).expect("deleting a known object");
            st.rv += 1;
            st.compacted = st.rv;
            st.events.clear();
            st.watch_epoch += 1;
        });
    }

    /// Closes every open watch connection mid-stream.
    pub fn drop_watches(&self) {
        self.with(|st| st.watch_epoch += 1);
    }

    /// While set, every connection is closed without an answer.
    pub fn set_unreachable(&self, down: bool) {
        self.with(|st| {
            st.unreachable = down;
            st.watch_epoch += 1;
        });
    }

    /// List pages hold at most this many objects (whatever `limit` says).
    pub fn set_page_size(&self, n: usize) {
        self.with(|st| st.page_size = n.max(1));
    }

    /// While set, a list request carrying a continue token fails (500).
    pub fn set_fail_continues(&self, fail: bool) {
        self.with(|st| st.fail_continues = fail);
    }

    pub fn continue_tokens_served(&self) -> Vec<String> {
        self.with(|st| st.continue_tokens_served.clone())
    }

    pub fn authorizations(&self) -> Vec<String> {
        self.with(|st| st.authorizations.clone())
    }

    pub fn requests(&self) -> Vec<String> {
        self.with(|st| st.requests.clone())
    }

    /// A kubeconfig naming `server` (plain HTTP), with a bearer token or
    /// no credentials.
    pub fn write_kubeconfig(path: &Path, server: &str, token: Option<&str>) {
        let user = token.map_or("{}".to_string(), |t| format!("{{token: {t}}}"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\ncurrent-context: test\nusers:\n- name: test\n  user: {user}\n"
        );
        std::fs::write(path, text).expect("write kubeconfig");
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until `f` holds for the request log.
    pub fn wait_requests(&self, what: &str, f: impl Fn(&[String]) -> bool) {
        let what = format!("test API server: {what}");
        if let Err(e) =
            crate::try_wait_until(Duration::from_secs(30), &what, || Ok(f(&self.requests())))
        {
            panic!("{e:#}; requests:\n{}", self.requests().join("\n"));
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.with(|st| st.watch_epoch += 1);
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn serve(mut c: TcpStream, shared: &(Mutex<State>, Condvar), stop: &AtomicBool) {
    let mut line = String::new();
    let mut auth = None;
    {
        let mut r = BufReader::new(&mut c);
        if r.read_line(&mut line).is_err() {
            return;
        }
        // The rest of the head: clients send no body on GET.
        loop {
            let mut h = String::new();
            match r.read_line(&mut h) {
                Ok(0) | Err(_) => return,
                Ok(_) if h == "\r\n" || h == "\n" => break,
                Ok(_) => {
                    if let Some((k, v)) = h.split_once(':')
                        && k.eq_ignore_ascii_case("authorization")
                    {
                        auth = Some(v.trim().to_string());
                    }
                }
            }
        }
    }
    let line = line.trim().to_string();
    let (m, cv) = shared;
    {
        let mut st = m.lock().unwrap();
        st.requests.push(line.clone());
        if let Some(a) = auth {
            st.authorizations.push(a);
        }
        if st.unreachable || stop.load(Ordering::Relaxed) {
            return; // closed without an answer
        }
    }
    let target = line.split_whitespace().nth(1).unwrap_or("");
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let q = query(q);
    let Some(&(kind, _, api_version)) = kind_of(path) else {
        respond(
            &mut c,
            404,
            &status(404, "NotFound", &format!("no route {path}")),
        );
        return;
    };
    let fields = q.get("fieldSelector").map(String::as_str);
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        watch(c, shared, stop, kind, &q, fields);
        return;
    }
    let mut st = m.lock().unwrap();
    let mut offset = 0usize;
    if let Some(token) = q.get("continue").filter(|t| !t.is_empty()) {
        if st.fail_continues {
            drop(st);
            respond(&mut c, 500, &status(500, "InternalError", "etcd is away"));
            return;
        }
        let (rv, off) = token.split_once('-').unwrap_or(("0", "0"));
        if rv.parse::<u64>().unwrap_or(0) < st.compacted {
            drop(st);
            respond(
                &mut c,
                410,
                &status(410, "Expired", "continue token expired"),
            );
            return;
        }
        offset = off.parse().unwrap_or(0);
    }
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX)
        .min(st.page_size);
    let matching: Vec<&Value> = st
        .objects
        .iter()
        .filter(|(k, o)| k.0 == kind && selected(o, fields))
        .map(|(_, o)| o)
        .collect();
    let page: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(limit)
        .map(|o| (*o).clone())
        .collect();
    let more = offset + page.len() < matching.len();
    let mut meta = json!({"resourceVersion": st.rv.to_string()});
    if more {
        let token = format!("{}-{}", st.rv, offset + page.len());
        st.continue_tokens_served.push(token.clone());
        meta["continue"] = json!(token);
    }
    drop(st);
    cv.notify_all();
    respond(
        &mut c,
        200,
        &json!({"kind": format!("{kind}List"), "apiVersion": api_version, "metadata": meta, "items": page}),
    );
}

fn watch(
    mut c: TcpStream,
    shared: &(Mutex<State>, Condvar),
    stop: &AtomicBool,
    kind: &str,
    q: &BTreeMap<String, String>,
    fields: Option<&str>,
) {
    let (m, cv) = shared;
    let st = m.lock().unwrap();
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|r| r.parse().ok())
        .unwrap_or(st.rv);
    let epoch = st.watch_epoch;
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    if from < st.compacted {
        drop(st);
        let _ = c.write_all(head.as_bytes());
        let _ = chunk(
            &mut c,
            &json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")}),
        );
        let _ = c.write_all(b"0\r\n\r\n");
        return;
    }
    drop(st);
    if c.write_all(head.as_bytes()).is_err() {
        return;
    }
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::from_secs(290), Duration::from_secs);
    let end = Instant::now() + timeout;
    let mut cursor = from;
    let mut last_sent = Instant::now();
    let api_version = KINDS.iter().find(|k| k.0 == kind).map_or("v1", |k| k.2);
    loop {
        let st = m.lock().unwrap();
        if st.watch_epoch != epoch || st.unreachable || stop.load(Ordering::Relaxed) {
            return; // dropped mid-stream, no final chunk
        }
        // Events are in resourceVersion order: start after the cursor, not
        // at the beginning of history (100,000 Services make 200,000).
        let after = st.events.partition_point(|(rv, ..)| *rv <= cursor);
        let batch: Vec<(u64, &'static str, Value)> = st.events[after..]
            .iter()
            .filter(|(_, k, _, o)| k == kind && selected(o, fields))
            .map(|(rv, _, t, o)| (*rv, *t, o.clone()))
            .collect();
        let head_rv = st.rv;
        if batch.is_empty() {
            let (g, _) = cv.wait_timeout(st, Duration::from_millis(200)).unwrap();
            drop(g);
            if bookmarks && last_sent.elapsed() > Duration::from_secs(1) {
                cursor = cursor.max(head_rv);
                let bm = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version,
                    "metadata": {"resourceVersion": cursor.to_string()}}});
                if chunk(&mut c, &bm).is_err() {
                    return;
                }
                last_sent = Instant::now();
            }
            if Instant::now() > end {
                let _ = c.write_all(b"0\r\n\r\n");
                return;
            }
            continue;
        }
        drop(st);
        for (rv, ty, o) in batch {
            cursor = rv;
            if chunk(&mut c, &json!({"type": ty, "object": o})).is_err() {
                return;
            }
        }
        last_sent = Instant::now();
    }
}
