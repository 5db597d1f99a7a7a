//! One exchange: resolve the target, record the request, send it upstream, tap the response.

use super::headers::{is_upgrade, strip_hop_by_hop};
use super::{admin, plain, Response, Route, Scheme, Session};
use crate::metrics::Metrics;
use crate::record::capture::Capture;
use crate::record::tap::{RequestTap, ResponseTap, Waiting};
use crate::record::{
    BodyFacts, Exchange, Record, RequestBodySlot, RequestHead, ResponseHead, ServerFacts,
    TunnelRecord,
};
use crate::upstream::{
    self, closed_unanswered, ClientBody, ConnectError, Connection, ReqBody, Sender, Target,
    ALPN_H1, ALPN_H2,
};
use flowtap_schema::ErrorKind;
use http::uri::{Authority, PathAndQuery, Uri};
use http::{HeaderValue, Method, StatusCode, Version};
use http_body_util::Either;
use hyper::body::{Body as _, Incoming};
use hyper::upgrade::OnUpgrade;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Entry point of the per-connection service.
pub async fn handle(
    session: Arc<Session>,
    req: hyper::Request<Incoming>,
) -> Result<Response, Infallible> {
    session
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if matches!(session.route, Route::Forward) && !is_open_page(&req) {
        let access = &session.shared.config.access;
        let header = req
            .headers()
            .get(http::header::PROXY_AUTHORIZATION)
            .map(|v| v.as_bytes());
        if !access.authorized(header) {
            return Ok(proxy_auth_required(&session, &req));
        }
    }
    if req.method() == Method::CONNECT {
        if matches!(session.route, Route::Forward) {
            return Ok(crate::connect::handle(session, req).await);
        }
        return Ok(plain(
            StatusCode::BAD_REQUEST,
            "flowtap: CONNECT inside a tunnel is not supported\n",
        ));
    }
    let (target, url, authority) = match resolve(&session, &req) {
        Ok(t) => t,
        Err(r) => return Ok(r),
    };
    Ok(forward(session, req, target, url, authority).await)
}

/// Pages of the proxy itself that need no credentials (probes, the CA to trust).
fn is_open_page(req: &hyper::Request<Incoming>) -> bool {
    req.uri().scheme().is_none()
        && req.method() != Method::CONNECT
        && matches!(req.uri().path(), "/healthz" | "/ca.pem")
}

/// 407 with a challenge; the attempt is recorded (without the credentials it carried).
fn proxy_auth_required(session: &Session, req: &hyper::Request<Incoming>) -> Response {
    let given = req
        .headers()
        .contains_key(http::header::PROXY_AUTHORIZATION);
    let message = if given {
        "proxy authentication failed: wrong credentials"
    } else {
        "proxy authentication required: send Proxy-Authorization: Basic"
    };
    session.shared.emitter.send(Record::Connection(Box::new(
        crate::record::ConnectionRecord {
            conn: session.conn.clone(),
            start: SystemTime::now(),
            // The authority only: a URL's query may carry secrets, and this record is not redacted.
            error: (
                ErrorKind::Refused,
                format!(
                    "{} {}: {message}",
                    req.method(),
                    req.uri().authority().map(|a| a.as_str()).unwrap_or("/")
                ),
            ),
        },
    )));
    let mut r = plain(
        StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        format!("flowtap: {message}\n"),
    );
    r.headers_mut().insert(
        http::header::PROXY_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"flowtap\""),
    );
    r
}

fn default_port(scheme: Scheme) -> u16 {
    match scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    }
}

/// Splits an authority into host (brackets kept for IPv6) and port.
fn host_port(a: &Authority, scheme: Scheme) -> (String, u16) {
    (
        a.host().to_string(),
        a.port_u16().unwrap_or_else(|| default_port(scheme)),
    )
}

/// The URL a record shows: `scheme://authority/path?query`. Built once per request on the
/// traffic path, so without `format!`'s machinery (about 1,000 instructions per request).
fn record_url(scheme: Scheme, authority: &str, pq: &str) -> String {
    let scheme = scheme.as_str();
    let mut url = String::with_capacity(scheme.len() + 3 + authority.len() + pq.len());
    url.push_str(scheme);
    url.push_str("://");
    url.push_str(authority);
    url.push_str(pq);
    url
}

/// Finds where a request goes and the URL the record shows, or answers it directly.
#[allow(clippy::result_large_err)] // the error is the response itself, returned at once
fn resolve(
    session: &Session,
    req: &hyper::Request<Incoming>,
) -> Result<(Target, String, Authority), Response> {
    let uri = req.uri();
    let pq = uri
        .path_and_query()
        .map(PathAndQuery::as_str)
        .unwrap_or("/");
    match &session.route {
        Route::Forward => {
            let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
                if let Some(page) = admin::page(&session.shared, uri.path()) {
                    return Err(page);
                }
                return Err(plain(
                    StatusCode::BAD_REQUEST,
                    "flowtap is a proxy: send absolute-form requests (GET http://host/path) or \
                     CONNECT host:port; its own pages are /healthz, /metrics and /ca.pem\n",
                ));
            };
            let scheme = match scheme {
                "http" => Scheme::Http,
                "https" => Scheme::Https,
                other => {
                    return Err(plain(
                        StatusCode::BAD_REQUEST,
                        format!("flowtap: unsupported scheme {other:?}\n"),
                    ))
                }
            };
            let (host, port) = host_port(authority, scheme);
            let target = Target::new(host, port, scheme == Scheme::Https);
            // The URL never carries userinfo: it may hold a password.
            let shown = crate::connect::without_userinfo(authority.as_str());
            Ok((target, record_url(scheme, shown, pq), authority.clone()))
        }
        Route::Fixed {
            target,
            scheme,
            authority,
            host_from_request,
            rewrite_host,
            ..
        } => {
            // The connection goes where the tunnel points; the Host header only names the URL.
            let from_request = || {
                uri.authority().cloned().or_else(|| {
                    req.headers()
                        .get(http::header::HOST)
                        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                })
            };
            let named = if *rewrite_host {
                Authority::try_from(authority.as_str()).ok()
            } else {
                from_request().or_else(|| Authority::try_from(authority.as_str()).ok())
            };
            let Some(named) = named else {
                return Err(plain(StatusCode::BAD_REQUEST, "flowtap: no authority\n"));
            };
            let shown = match named.port_u16() {
                Some(p) if p == default_port(*scheme) => named.host(),
                _ => named.as_str(),
            };
            let url = record_url(*scheme, shown, pq);
            let mut target = target.clone();
            if *host_from_request {
                target.host = named.host().to_string();
            }
            Ok((target, url, named))
        }
    }
}

impl Session {
    /// A connection to `target` speaking HTTP/2 (`h2`) or HTTP/1.1: this session's reserved
    /// one, a kept one (`true` with it), or a new one.
    async fn checkout(
        &self,
        target: &Target,
        h2: bool,
    ) -> Result<(Connection, bool), ConnectError> {
        if let Route::Fixed {
            failed: Some(e), ..
        } = &self.route
        {
            return Err(e.clone());
        }
        let reserved = self
            .reserved
            .lock()
            .ok()
            .and_then(|mut r| r.take_if(|b| b.0 == *target))
            .map(|b| b.1)
            .filter(|c| !c.sender.is_closed());
        if let Some(c) = reserved.or_else(|| self.shared.pool.take(target, h2)) {
            return Ok((c, true));
        }
        Ok((self.connect(target, h2).await?, false))
    }

    /// A new connection to `target`, offering HTTP/2 first when `h2` (an HTTP/2 one is also
    /// kept, to be shared).
    async fn connect(&self, target: &Target, h2: bool) -> Result<Connection, ConnectError> {
        let alpn: Vec<Vec<u8>> = if h2 {
            vec![ALPN_H2.to_vec(), ALPN_H1.to_vec()]
        } else {
            vec![ALPN_H1.to_vec()]
        };
        // Boxed: the connect future (DNS, TCP, TLS, HTTP setup) is large and rare; inline, it
        // would make every connection's in-flight request future that large (see bench/README).
        let connect = Box::pin(upstream::connect(
            &self.shared.upstream_tls,
            target,
            &alpn,
            self.shared.config.upstream_timeout,
            self.shared.config.upstream_proxy.as_ref(),
        ));
        let mut c = connect.await?;
        if let Some(shared) = c.share_without_timings() {
            self.shared.pool.put(target.clone(), shared);
        }
        Ok(c)
    }

    /// Keeps an HTTP/1.1 connection for the next exchange (HTTP/2 ones stay in the pool).
    fn checkin(&self, target: Target, c: Connection) {
        if !c.sender.is_h2() {
            self.shared.pool.put(target, c);
        }
    }
}

/// Forwards one request and returns the response that goes back to the client.
async fn forward(
    session: Arc<Session>,
    req: hyper::Request<Incoming>,
    target: Target,
    url: String,
    authority: Authority,
) -> Response {
    let shared = &session.shared;
    let start = SystemTime::now();
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    let upgrade = is_upgrade(&parts.headers);
    let client_upgrade = if upgrade {
        parts.extensions.remove::<OnUpgrade>()
    } else {
        None
    };
    let client_version = parts.version;

    let slot = Arc::new(RequestBodySlot::default());
    let capture = || Capture::new(shared.config.capture, shared.config.body_limit);
    let mut x = Waiting::new(
        Box::new(Exchange {
            conn: session.conn.clone(),
            tls: session.tls.clone(),
            start,
            started,
            server: ServerFacts {
                host: target.host.clone(),
                port: target.port,
                ip: None,
            },
            request: RequestHead {
                method: parts.method.clone(),
                url,
                version: client_version,
                headers: crate::record::HeaderList::from_map(&parts.headers),
            },
            request_body: Some(slot.clone()),
            response: None,
            response_body: None,
            connect: None,
            upstream_tls_version: None,
            upstream_ready: None,
            response_at: None,
            end: None,
            error: None,
        }),
        &shared.emitter,
    );
    // Without a body (known before anything is sent), the request can be sent again as it was.
    let bodiless = body.is_end_stream();
    let mut body = RequestTap::new(
        ClientBody::Stream(body),
        BodyFacts::new(capture()),
        slot.clone(),
    );
    let upstream_h2 = session
        .route
        .upstream_h2(target.tls, client_version == Version::HTTP_2);
    let pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));

    let timeout = shared.config.response_timeout;
    let mut checkout = session.checkout(&target, upstream_h2).await;
    let mut replay = None;
    let (conn, sent) = loop {
        let (mut conn, kept) = match checkout {
            Ok(c) => c,
            Err(e) => return fail(&session, x.take(), e.kind, e.message),
        };
        x.server.ip = conn.ip;
        x.connect = conn.timings.take();
        x.upstream_tls_version = conn.tls_version;
        x.upstream_ready = Some(Instant::now());
        upstream_head(
            &session,
            &mut parts,
            &conn,
            &target,
            &authority,
            pq.clone(),
            upgrade,
        );
        // On a kept HTTP/2 connection the server may refuse the stream unprocessed (it is going
        // away): keep what of the body goes out, to send it again.
        if kept && !bodiless && !upgrade && conn.sender.is_h2() {
            replay = Some(body.keep_for_replay());
        }
        let request = hyper::Request::from_parts(parts, body);
        let mut sent = send(&mut conn, request, timeout, &slot).await;

        // A kept connection the server had closed (an idle keep-alive connection it timed out
        // just as this request went out, say) fails a request it never answered. Like browsers
        // and HTTP client libraries, send it once more on a new connection: when it never left,
        // when it has no body and a method that may be repeated (RFC 9110, 9.2.2), or when an
        // HTTP/2 server refused it unprocessed (RFC 9113, 8.7), with its body sent again.
        if let Sent::Failed(e, unsent) = &mut sent {
            if kept && !upgrade && closed_unanswered(e) {
                let again = match unsent.take() {
                    Some(req) => Some(req.into_parts().1),
                    None if bodiless && x.request.method.is_idempotent() => Some(RequestTap::new(
                        ClientBody::Empty,
                        BodyFacts::new(capture()),
                        slot.clone(),
                    )),
                    None if upstream::refused_unprocessed(e) => match replay.take() {
                        Some(rx) => reclaim(rx, &slot).await.map(|body| {
                            RequestTap::new(body, BodyFacts::new(capture()), slot.clone())
                        }),
                        None => None,
                    },
                    None => None,
                };
                if let Some((b, p)) = again.and_then(|b| Some((b, client_head(&x.request)?))) {
                    tracing::debug!(host = %target.host, error = %e, "kept upstream connection closed unanswered: sending the request again on a new one");
                    Metrics::inc(&shared.metrics.upstream_retries);
                    (body, parts) = (b, p);
                    checkout = session
                        .connect(&target, upstream_h2)
                        .await
                        .map(|c| (c, false));
                    continue;
                }
            }
        }
        break (conn, sent);
    };
    // What was kept for sending the body again is not needed any more.
    drop(replay);
    let mut resp = match sent {
        Sent::Response(r) => r,
        Sent::Failed(e, _) => {
            let (mut kind, mut msg) = classify_send_error(&slot, &e);
            // Dropped unanswered by an HTTP/2 connection that ended: say why it ended, when
            // the server broke HTTP/2 (an h2c request to a server that only speaks HTTP/1.1).
            if let (ErrorKind::UpstreamClosed, Sender::H2(_, end)) = (kind, &conn.sender) {
                if e.is_canceled() {
                    if let Some(why) = upstream::h2_broke(end).await {
                        (kind, msg) = (ErrorKind::Protocol, format!("upstream: {why}"));
                    }
                }
            }
            return fail(&session, x.take(), kind, msg);
        }
        Sent::TimedOut => {
            return fail(
                &session,
                x.take(),
                ErrorKind::UpstreamTimeout,
                format!(
                    "no response from {}:{} within {timeout:?} of the request's end \
                     (--response-timeout)",
                    target.host, target.port
                ),
            )
        }
    };
    // The egress proxy refusing flowtap's credentials is not the client's to answer: its 407
    // would ask the client for credentials it never gave.
    if conn.absolute && resp.status() == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        let name = (shared.config.upstream_proxy.as_ref()).map_or_else(String::new, |v| v.name());
        // The authority only: a URL's query may carry secrets, and messages are not redacted.
        let message = format!(
            "upstream proxy {name} answered the request to {}:{} with {}{}",
            target.host,
            target.port,
            resp.status(),
            upstream::via::auth_hint(407)
        );
        return fail(&session, x.take(), ErrorKind::UpstreamConnect, message);
    }
    x.response_at = Some(Instant::now());
    x.response = Some(ResponseHead {
        status: resp.status(),
        version: resp.version(),
        headers: crate::record::HeaderList::from_map(resp.headers()),
    });

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            return switch_protocols(&session, x.take(), resp, client_upgrade, upstream_upgrade);
        }
    }
    if !upgrade {
        session.checkin(target, conn);
    }

    let (mut rparts, rbody) = resp.into_parts();
    strip_hop_by_hop(&mut rparts.headers, false);
    rparts.version = client_version;
    x.response_body = Some(BodyFacts::new(capture()));
    let tap = ResponseTap::new(rbody, x.take(), shared.emitter.clone());
    hyper::Response::from_parts(rparts, Either::Left(tap))
}

/// The request head as it goes to `conn`, speaking HTTP/2 or HTTP/1.1: hop-by-hop fields
/// stripped, and the target in the form that protocol wants (to an egress proxy, the absolute
/// form and flowtap's credentials).
fn upstream_head(
    session: &Session,
    parts: &mut http::request::Parts,
    conn: &Connection,
    target: &Target,
    authority: &Authority,
    pq: PathAndQuery,
    upgrade: bool,
) {
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if conn.sender.is_h2() {
        parts.version = Version::HTTP_2;
        parts.headers.remove(http::header::HOST);
        let scheme = if target.tls { "https" } else { "http" };
        parts.uri = Uri::builder()
            .scheme(scheme)
            .authority(authority.clone())
            .path_and_query(pq)
            .build()
            .unwrap_or_default();
    } else {
        parts.version = Version::HTTP_11;
        if matches!(
            session.route,
            Route::Fixed {
                rewrite_host: true,
                ..
            }
        ) {
            parts.headers.remove(http::header::HOST);
        }
        if !parts.headers.contains_key(http::header::HOST) {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                parts.headers.insert(http::header::HOST, v);
            }
        }
        let via = conn
            .absolute
            .then_some(session.shared.config.upstream_proxy.as_ref())
            .flatten();
        parts.uri = match via {
            // To an egress proxy: the absolute form, and flowtap's own credentials.
            Some(via) => {
                if let Some(auth) = &via.auth {
                    parts
                        .headers
                        .insert(http::header::PROXY_AUTHORIZATION, auth.clone());
                }
                Uri::builder()
                    .scheme("http")
                    .authority(authority.clone())
                    .path_and_query(pq)
                    .build()
                    .unwrap_or_default()
            }
            None => Uri::from(pq),
        };
    }
}

/// The client's request head again, from the exchange's copy of it (the request itself went
/// to the connection that failed).
fn client_head(h: &RequestHead) -> Option<http::request::Parts> {
    let mut req = hyper::Request::new(());
    *req.method_mut() = h.method.clone();
    *req.version_mut() = h.version;
    let headers = req.headers_mut();
    for (name, value) in h.headers.iter() {
        headers.append(name.clone(), HeaderValue::from_bytes(value).ok()?);
    }
    Some(req.into_parts().0)
}

/// How sending a request upstream ended.
enum Sent {
    Response(hyper::Response<Incoming>),
    /// With the request when it never left (hyper hands it back).
    Failed(hyper::Error, Option<Box<hyper::Request<ReqBody>>>),
    TimedOut,
}

/// How long a refused request waits for the HTTP client to let go of its body (it does as soon
/// as it sees the refusal); a bound, so that a request never hangs on it.
const RECLAIM_WAIT: Duration = Duration::from_secs(1);

/// The body of a request an HTTP/2 server refused unprocessed, for sending it again: what went
/// out the first time, then the rest of the client's stream. `None` when the body outgrew
/// [`crate::record::tap::REPLAY_LIMIT`]. The request's body facts start again (the new tap
/// counts the whole body).
async fn reclaim(
    rx: tokio::sync::oneshot::Receiver<crate::record::tap::Reclaimed<ClientBody>>,
    slot: &RequestBodySlot,
) -> Option<ClientBody> {
    let (frames, rest) = tokio::time::timeout(RECLAIM_WAIT, rx).await.ok()?.ok()?;
    let rest = match rest {
        ClientBody::Stream(b) => Some(b),
        _ => None,
    };
    if let Ok(mut f) = slot.facts.lock() {
        *f = None;
    }
    slot.bytes.store(0, std::sync::atomic::Ordering::Relaxed);
    Some(ClientBody::Replay(frames.into(), rest))
}

/// Sends `req` on `conn` and waits for the response head: at most `timeout` from the end of the
/// request body (`slot`), so a long upload to a server that answers when it has it all is never
/// cut, while a server that sits on a complete request is.
async fn send(
    conn: &mut Connection,
    req: hyper::Request<ReqBody>,
    timeout: Duration,
    slot: &RequestBodySlot,
) -> Sent {
    let send = async {
        let r = match &mut conn.sender {
            Sender::H1(s) => {
                if let Err(e) = s.ready().await {
                    return Err((e, Some(Box::new(req))));
                }
                s.try_send_request(req).await
            }
            Sender::H2(s, _) => s.try_send_request(req).await,
        };
        r.map_err(|mut e| {
            let unsent = e.take_message().map(Box::new);
            (e.into_error(), unsent)
        })
    };
    tokio::pin!(send);
    let mut deadline = Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline.into(), &mut send).await {
            Ok(Ok(r)) => return Sent::Response(r),
            Ok(Err((e, unsent))) => return Sent::Failed(e, unsent),
            // The timer is armed once per exchange and looked at again only when it fires.
            Err(_) => match slot.ended() {
                Some(end) if end + timeout <= Instant::now() => return Sent::TimedOut,
                Some(end) => deadline = end + timeout,
                None => deadline = Instant::now() + timeout,
            },
        }
    }
}

fn classify_send_error(slot: &RequestBodySlot, e: &hyper::Error) -> (ErrorKind, String) {
    let client_err = slot
        .facts
        .lock()
        .ok()
        .and_then(|f| f.as_ref().and_then(|f| f.error.clone()));
    if let Some(m) = client_err {
        return (ErrorKind::ClientClosed, m);
    }
    if e.is_parse_too_large() {
        return (
            ErrorKind::Limit,
            format!(
                "upstream: the response head is larger than flowtap reads ({} KiB, {} header fields): {}",
                upstream::UPSTREAM_MAX_BUF >> 10,
                upstream::UPSTREAM_MAX_HEADERS,
                crate::error_chain(e)
            ),
        );
    }
    let (kind, hint) = match upstream::broke_h2(e) {
        Some(upstream::H2Break::Response) => (
            ErrorKind::Protocol,
            format!(
                " (flowtap refused the server's HTTP/2 response: its head was over {} KiB, or malformed)",
                upstream::UPSTREAM_MAX_BUF >> 10
            ),
        ),
        Some(upstream::H2Break::Connection) => (ErrorKind::Protocol, String::new()),
        None if e.is_timeout() => (ErrorKind::UpstreamTimeout, String::new()),
        None if e.is_parse() || e.is_parse_status() => (ErrorKind::Protocol, String::new()),
        None => (ErrorKind::UpstreamClosed, String::new()),
    };
    (kind, format!("upstream: {}{hint}", crate::error_chain(e)))
}

/// Records a failed exchange and answers the client with a 502 that says why.
fn fail(session: &Session, mut x: Box<Exchange>, kind: ErrorKind, message: String) -> Response {
    // The host, not the URL: a URL's query may carry secrets and logs are not redacted.
    tracing::debug!(kind = kind.as_str(), %message, host = %x.server.host, "exchange failed");
    let body = format!("flowtap: {} ({})\n", message, kind.as_str());
    x.fail(kind, message);
    x.end = Some(Instant::now());
    session
        .shared
        .metrics
        .exchanges_failed
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    session.shared.emitter.send(Record::Http(x));
    let status = if kind == ErrorKind::ClientClosed {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::BAD_GATEWAY
    };
    plain(status, body)
}

/// 101: the exchange's record is written now; the relay after it gets a tunnel record.
fn switch_protocols(
    session: &Arc<Session>,
    mut x: Box<Exchange>,
    resp: hyper::Response<Incoming>,
    client: OnUpgrade,
    upstream: OnUpgrade,
) -> Response {
    let now = Instant::now();
    x.end = Some(now);
    x.response_body = Some(BodyFacts::new(Capture::new(
        crate::record::capture::CaptureMode::None,
        0,
    )));
    let protocol = resp
        .headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.to_ascii_lowercase());
    let conn = x.conn.clone();
    let tls = x.tls.clone();
    let server = x.server.clone();
    session.shared.emitter.send(Record::Http(x));

    let emitter = session.shared.emitter.clone();
    let idle = session.shared.config.limits.idle_timeout;
    let guard = session.shared.tracker.guard();
    tokio::spawn(async move {
        let _guard = guard;
        let start = SystemTime::now();
        let started = Instant::now();
        let (pumped, error) = match tokio::try_join!(client, upstream) {
            Ok((c, u)) => {
                let p = crate::tunnel::pump(
                    hyper_util::rt::TokioIo::new(c),
                    hyper_util::rt::TokioIo::new(u),
                    idle,
                )
                .await;
                let e = p.error.clone();
                (Some(p), e)
            }
            Err(e) => (
                None,
                Some((ErrorKind::Protocol, format!("upgrade failed: {e}"))),
            ),
        };
        emitter.send(Record::Tunnel(Box::new(TunnelRecord {
            conn,
            tls,
            start,
            started,
            end: Instant::now(),
            server,
            bytes_up: pumped.as_ref().map_or(0, |p| p.up),
            bytes_down: pumped.as_ref().map_or(0, |p| p.down),
            upgrade: protocol,
            error,
        })));
    });

    let (mut parts, _) = resp.into_parts();
    parts.headers.remove(http::header::TRANSFER_ENCODING);
    hyper::Response::from_parts(parts, Either::Right(http_body_util::Full::default()))
}
