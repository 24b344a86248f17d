//! A Kubernetes API server for tests: the real list/watch protocol over
//! HTTP/1.1 (resourceVersion, `limit`/`continue` pages, chunked watch
//! streams, bookmarks, 410 Gone as an ERROR event, dropped connections),
//! enough for kube-rs's real client and watchers. Objects are JSON; the
//! test changes them and breaks the server on purpose. Here: what a test
//! controls; `http` the protocol.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use serde_json::{Value, json};

mod http;

use http::{key_of, serve};

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
                    // Watch events are small writes the client waits for.
                    let _ = conn.set_nodelay(true);
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
