//! A bare HTTP/1.1 client for the open loop: keep-alive connections to one server, opened on
//! demand and reused, each a `hyper` connection without reqwest's layers (its pool, redirects,
//! timeouts, header handling). At tens of thousands of requests a second the load generator
//! shares its core with the mock upstream, and every microsecond it spends per request is
//! taken from the mock and counted as latency against the server; this client spends about a
//! third less CPU per request than reqwest did (docs/benchmarks.md).

use std::net::SocketAddr;
use std::sync::Mutex;

use anyhow::Context as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One `POST` endpoint and its idle connections.
pub struct BareClient {
    addr: SocketAddr,
    host: HeaderValue,
    path: String,
    authorization: Option<HeaderValue>,
    body: Bytes,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl BareClient {
    /// A client posting `body` (JSON) to `endpoint` (`http://ip:port/path`), with `key` as
    /// bearer when given.
    pub fn new(endpoint: &str, key: Option<&str>, body: Vec<u8>) -> anyhow::Result<Self> {
        let uri: Uri = endpoint.parse().context("parsing the endpoint")?;
        anyhow::ensure!(
            uri.scheme_str() == Some("http"),
            "the open loop speaks plain http only: {endpoint}"
        );
        let authority = uri.authority().context("the endpoint has no host")?;
        let addr: SocketAddr = authority
            .as_str()
            .parse()
            .context("the open loop needs an ip:port endpoint")?;
        let authorization = key
            .map(|k| HeaderValue::from_str(&format!("Bearer {k}")))
            .transpose()
            .context("the key is not a header value")?;
        Ok(Self {
            addr,
            host: HeaderValue::from_str(authority.as_str())?,
            path: uri.path().to_owned(),
            authorization,
            body: Bytes::from(body),
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Sends the request and reads the whole answer: its status. A request that fails on a
    /// reused connection (the server may have closed it while it was idle) is sent once more
    /// on a new one, as reqwest's pool does.
    pub async fn post(&self) -> anyhow::Result<u16> {
        let (connection, reused) = self.connection().await?;
        match self.post_on(connection).await {
            Err(_) if reused => self.post_on(self.connect().await?).await,
            answered => answered,
        }
    }

    async fn post_on(&self, mut connection: SendRequest<Full<Bytes>>) -> anyhow::Result<u16> {
        let mut request = Request::post(self.path.as_str())
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let request = request.body(Full::new(self.body.clone()))?;
        let response = connection.send_request(request).await?;
        let status = response.status().as_u16();
        response.into_body().collect().await?;
        self.give_back(connection);
        Ok(status)
    }

    /// An idle connection that is still open (`true`: reused), or a new one.
    async fn connection(&self) -> anyhow::Result<(SendRequest<Full<Bytes>>, bool)> {
        loop {
            let Some(mut connection) = self.idle.lock().ok().and_then(|mut idle| idle.pop()) else {
                break;
            };
            if connection.ready().await.is_ok() {
                return Ok((connection, true));
            }
        }
        Ok((self.connect().await?, false))
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, driver) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(driver);
        Ok(sender)
    }

    fn give_back(&self, connection: SendRequest<Full<Bytes>>) {
        if connection.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(connection);
        }
    }
}
