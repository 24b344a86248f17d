//! The test API server's wire protocol: routes, list pages with
//! `limit`/`continue`, chunked watch streams with bookmarks and 410 Gone,
//! and the HTTP/1.1 framing around them.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::TcpStream,
    sync::{
        Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{Key, State};

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

fn kind_of(path: &str) -> Option<&'static (&'static str, &'static str, &'static str)> {
    KINDS.iter().find(|(_, p, _)| *p == path)
}

pub(super) fn key_of(obj: &Value) -> Key {
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

// Each response and each watch event leaves in one write: `write!` on the
// stream is a system call per piece, and with Nagle's algorithm a small
// piece behind one not yet acknowledged can wait for the client's delayed
// ACK (the listener also turns Nagle off).
fn respond(c: &mut TcpStream, code: u16, body: &Value) {
    let body = body.to_string();
    let all = format!(
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = c.write_all(all.as_bytes());
}

fn chunk(c: &mut TcpStream, v: &Value) -> std::io::Result<()> {
    let line = format!("{v}\n");
    let all = format!("{:x}\r\n{line}\r\n", line.len());
    c.write_all(all.as_bytes())
}

pub(super) fn serve(mut c: TcpStream, shared: &(Mutex<State>, Condvar), stop: &AtomicBool) {
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
    // The kind's own range of the map, and no further than the page: a
    // listing of 100,000 objects in pages of 500 was quadratic in the
    // whole map, and held the lock the watches wait on.
    let mut matching = st
        .objects
        .range((kind.to_string(), String::new(), String::new())..)
        .take_while(|(k, _)| k.0 == kind)
        .filter(|(_, o)| selected(o, fields))
        .map(|(_, o)| o)
        .skip(offset);
    let page: Vec<Value> = matching.by_ref().take(limit).cloned().collect();
    let more = matching.next().is_some();
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
