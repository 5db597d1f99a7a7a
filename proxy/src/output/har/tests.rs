use super::*;
use flowtap_schema::json;
use flowtap_schema::Body;
use serde_json::Value;

const GOLDEN: [&str; 4] = [
    include_str!("../../../../schema/golden/http_h2_get.json"),
    include_str!("../../../../schema/golden/http_plain_post_body.json"),
    include_str!("../../../../schema/golden/http_upstream_error.json"),
    include_str!("../../../../schema/golden/tunnel_ignored.json"),
];

fn golden() -> Vec<Flow> {
    GOLDEN
        .iter()
        .map(|s| {
            let v: Value = serde_json::from_str(s).unwrap();
            json::decode_line(serde_json::to_string(&v).unwrap().as_bytes()).unwrap()
        })
        .collect()
}

fn document(flows: Vec<Flow>) -> Value {
    let mut out = Vec::new();
    write_document(&mut flows.into_iter(), &mut out).unwrap();
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn converts_golden_records() {
    let doc = document(golden());
    let log = &doc["log"];
    assert_eq!(log["version"], "1.2");
    assert_eq!(log["creator"]["name"], "flowtap");
    let entries = log["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "the tunnel record is left out");

    let post = &entries[1];
    assert_eq!(post["startedDateTime"], "2024-08-12T09:23:29.001250Z");
    assert_eq!(post["request"]["method"], "POST");
    assert_eq!(post["request"]["headersSize"], -1);
    assert_eq!(post["request"]["bodySize"], 42);
    assert_eq!(post["request"]["postData"]["mimeType"], "application/json");
    assert_eq!(
        post["request"]["postData"]["text"],
        "{\"source\":\"s3://media/cat.jpg\",\"width\":64}"
    );
    assert_eq!(
        post["request"]["queryString"],
        serde_json::json!([{"name": "format", "value": "png"}])
    );
    let resp = &post["response"];
    assert_eq!(resp["status"], 200);
    assert_eq!(resp["statusText"], "OK");
    assert_eq!(resp["bodySize"], 5120);
    assert_eq!(resp["content"]["encoding"], "base64");
    assert_eq!(resp["content"]["_truncated"], true);
    assert_eq!(resp["content"]["mimeType"], "image/png");
    assert_eq!(
        resp["content"]["size"], 5120,
        "not content-encoded: size is the body size"
    );
    let cookies = resp["cookies"].as_array().unwrap();
    assert_eq!(cookies.len(), 2);
    assert_eq!(cookies[0]["name"], "session");
    assert_eq!(cookies[0]["httpOnly"], true);
    assert_eq!(cookies[1]["path"], "/");
    let set_cookie: Vec<&Value> = resp["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["name"] == "set-cookie")
        .collect();
    assert_eq!(set_cookie.len(), 2, "one HAR header per set-cookie field");
    let t = &post["timings"];
    assert_eq!(t["dns"], 0.8);
    assert_eq!(t["connect"], 0.35);
    assert_eq!(t["ssl"], -1.0);
    let sum: f64 = ["blocked", "dns", "connect", "send", "wait", "receive"]
        .iter()
        .map(|k| t[k].as_f64().unwrap())
        .filter(|v| *v >= 0.0)
        .sum();
    assert!((post["time"].as_f64().unwrap() - sum).abs() < 1e-6);
    // The timed phases add up to more than the record's 12.873 ms (the connection was
    // opened before the exchange began): time is their sum and nothing is left for blocked.
    assert!((post["time"].as_f64().unwrap() - 13.01).abs() < 1e-6);
    assert_eq!(t["blocked"], -1.0);
    assert_eq!(post["serverIPAddress"], "192.0.2.10");
    assert_eq!(post["connection"], "c-18");
    assert_eq!(post["_id"], "0192f0c4-8a03-7d41-b1c2-3e5f60718293");

    let failed = &entries[2];
    assert_eq!(failed["response"]["status"], 0);
    assert_eq!(failed["response"]["bodySize"], -1);
    assert!(failed["_error"]
        .as_str()
        .unwrap()
        .starts_with("upstream_connect: connect to"));
    assert_eq!(failed["timings"]["send"], 0.0);
}

#[test]
fn tls_time_is_inside_connect() {
    let flows = golden();
    let doc = document(vec![flows[0].clone()]);
    let e = &doc["log"]["entries"][0];
    let rec: Value = serde_json::from_str(GOLDEN[0]).unwrap();
    if let (Some(c), Some(tls)) = (
        rec["timings"]["connect_ms"].as_f64(),
        rec["timings"]["tls_ms"].as_f64(),
    ) {
        assert!((e["timings"]["connect"].as_f64().unwrap() - (c + tls)).abs() < 1e-6);
        assert!((e["timings"]["ssl"].as_f64().unwrap() - tls).abs() < 1e-6);
    }
    assert_eq!(e["request"]["httpVersion"], rec["request"]["http_version"]);
}

#[test]
fn base64_sizes() {
    for (data, n) in [
        ("", 0),
        ("QQ==", 1),
        ("QUI=", 2),
        ("QUJD", 3),
        ("QUJDRA", 4),
    ] {
        let b = Body {
            encoding: "base64".into(),
            data: data.into(),
            truncated: false,
        };
        assert_eq!(entry::decoded_len(&b), n, "{data}");
    }
}

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowtap-har-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn read(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

#[test]
fn file_is_valid_after_every_batch_and_continues() {
    let path = temp_path("flows.har");
    let flows = golden();
    let mut har = HarFile::open(&path).unwrap();
    assert_eq!(read(&path)["log"]["entries"], serde_json::json!([]));
    har.write(&flows[3..4]);
    assert_eq!(read(&path)["log"]["entries"].as_array().unwrap().len(), 0);
    har.write(&flows[..1]);
    assert_eq!(read(&path)["log"]["entries"].as_array().unwrap().len(), 1);
    har.write(&flows[1..]);
    assert_eq!(read(&path)["log"]["entries"].as_array().unwrap().len(), 3);
    har.close();
    drop(har);

    // A restarted proxy continues the same document.
    let mut again = HarFile::open(&path).unwrap();
    again.write(&flows[..2]);
    let doc = read(&path);
    let ids: Vec<&str> = doc["log"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 5);
    assert_eq!(ids[3], flows[0].id);

    // An empty document written earlier is continued too.
    let empty = temp_path("empty.har");
    drop(HarFile::open(&empty).unwrap());
    let mut h = HarFile::open(&empty).unwrap();
    h.write(&flows[..1]);
    assert_eq!(read(&empty)["log"]["entries"].as_array().unwrap().len(), 1);
}

#[test]
fn foreign_files_are_refused() {
    let path = temp_path("notes.har");
    std::fs::write(&path, b"my notes\n").unwrap();
    let e = HarFile::open(&path).err().unwrap();
    assert!(e.contains("not a HAR file written by flowtap"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), b"my notes\n");
}
