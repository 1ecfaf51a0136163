//! HTTP errors and the one place that maps them to what the client sees.

use std::io;

/// Which side of the proxy an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
    Internal,
}

/// Everything that can end an HTTP exchange early.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The client sent something that is not valid HTTP/1.1 framing.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request head larger than the limit")]
    HeadTooLarge,
    #[error("too many request headers")]
    TooManyHeaders,
    #[error("transfer coding not implemented")]
    NotImplemented,
    #[error("request body larger than the limit")]
    BodyTooLarge,
    #[error("request head not received in time")]
    HeaderTimeout,
    /// The client stopped sending a declared body for `request_body_timeout`.
    #[error("request body stalled longer than request_body_timeout")]
    BodyTimeout,
    /// A write to the client made no progress for `send_timeout`.
    #[error("client stopped reading for longer than send_timeout")]
    SendTimeout,
    #[error("no route for this request")]
    NoRoute,
    /// The upstream answered something that is not valid HTTP.
    #[error("bad response from upstream: {0}")]
    BadResponse(&'static str),
    /// No endpoint of the cluster could be connected to.
    #[error("no upstream endpoint reachable: {0}")]
    NoUpstream(String),
    /// The upstream's verified SVID names an identity the cluster's
    /// `tls.identities` do not accept.
    #[error("upstream identity refused: {0}")]
    UpstreamIdentityRefused(String),
    /// The upstream did not answer in time.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The upstream closed or reset the connection mid-exchange.
    #[error("upstream connection failed: {0}")]
    UpstreamIo(io::Error),
    /// An HTTP/2 upstream refused the stream (REFUSED_STREAM, or GOAWAY
    /// below its id) after the request body had been streamed to it from
    /// the client: the body is not held, so the request is not replayed.
    #[error("upstream refused the stream; its streamed body cannot be replayed")]
    RefusedUnreplayable,
    /// The request's Host names another host than its TLS SNI
    /// (`sni_host_match`).
    #[error("host does not match the TLS server name")]
    Misdirected,
    /// The client went away.
    #[error("client connection failed: {0}")]
    DownstreamIo(io::Error),
    /// Every endpoint of the cluster is ejected or failing health checks.
    #[error("no healthy endpoint in the cluster")]
    NoHealthyUpstream,
    /// A circuit-breaker limit of the cluster was reached.
    #[error("circuit breaker: {} reached", .0.key())]
    Overflow(crate::resilience::Overflow),
    /// The verified peer identity is not allowed (allow/deny_identities).
    #[error("peer identity not allowed")]
    Forbidden,
    /// The route's rate limit; a token would be there after this long.
    #[error("rate limited")]
    RateLimited(std::time::Duration),
    /// The proxy is shedding load (`runtime.max_heap_bytes`).
    #[error("overloaded")]
    Overloaded,
    /// The route's `fault.abort` answered instead of the upstream: the
    /// HTTP status, and the gRPC status a gRPC call gets.
    #[error("fault injected: abort")]
    FaultAbort { status: u16, grpc: u8 },
}

impl HttpError {
    /// The gRPC status a gRPC client gets for this error (the HTTP to gRPC
    /// mapping of grpc/doc/http-grpc-status-mapping.md, with the proxy's
    /// own timeouts as DEADLINE_EXCEEDED).
    pub fn grpc_code(&self) -> crate::grpc::Code {
        use crate::grpc::Code;
        use HttpError::*;
        match self {
            UpstreamTimeout | HeaderTimeout | BodyTimeout => Code::DeadlineExceeded,
            NoRoute => Code::Unimplemented,
            Misdirected => Code::Unknown,
            Forbidden => Code::PermissionDenied,
            RateLimited(_) | BodyTooLarge => Code::ResourceExhausted,
            BadRequest(_) | HeadTooLarge | TooManyHeaders | NotImplemented => Code::Internal,
            NoUpstream(_) | UpstreamIo(_) | NoHealthyUpstream | Overflow(_) | BadResponse(_)
            | DownstreamIo(_) | SendTimeout | Overloaded | RefusedUnreplayable => Code::Unavailable,
            UpstreamIdentityRefused(_) => Code::Unavailable,
            FaultAbort { grpc, .. } => Code::from_u8(*grpc),
        }
    }

    /// The side at fault.
    pub fn side(&self) -> Side {
        use HttpError::*;
        match self {
            BadRequest(_) | HeadTooLarge | TooManyHeaders | NotImplemented | BodyTooLarge
            | HeaderTimeout | BodyTimeout | SendTimeout | DownstreamIo(_) | Misdirected => {
                Side::Downstream
            }
            NoRoute
            | NoHealthyUpstream
            | Overflow(_)
            | RateLimited(_)
            | Forbidden
            | Overloaded
            | FaultAbort { .. } => Side::Internal,
            BadResponse(_)
            | NoUpstream(_)
            | UpstreamTimeout
            | UpstreamIo(_)
            | RefusedUnreplayable
            | UpstreamIdentityRefused(_) => Side::Upstream,
        }
    }

    /// The status the proxy answers with, or `None` when the only thing to
    /// do is close the connection (the client is gone).
    pub fn status(&self) -> Option<u16> {
        use HttpError::*;
        Some(match self {
            BadRequest(_) => 400,
            HeadTooLarge | TooManyHeaders => 431,
            NotImplemented => 501,
            BodyTooLarge => 413,
            HeaderTimeout | BodyTimeout => 408,
            NoRoute => 404,
            Misdirected => 421,
            BadResponse(_) | UpstreamIo(_) => 502,
            NoUpstream(_)
            | NoHealthyUpstream
            | Overflow(_)
            | Overloaded
            | RefusedUnreplayable
            | UpstreamIdentityRefused(_) => 503,
            RateLimited(_) => 429,
            Forbidden => 403,
            UpstreamTimeout => 504,
            FaultAbort { status, .. } => *status,
            DownstreamIo(_) | SendTimeout => return None,
        })
    }

    /// Short text for the response body and the `x-outrigger-error` header.
    pub fn code(&self) -> &'static str {
        use HttpError::*;
        match self {
            BadRequest(_) => "bad_request",
            HeadTooLarge => "request_header_too_large",
            TooManyHeaders => "too_many_headers",
            NotImplemented => "transfer_coding_not_implemented",
            BodyTooLarge => "request_body_too_large",
            HeaderTimeout => "request_header_timeout",
            BodyTimeout => "request_body_timeout",
            SendTimeout => "send_timeout",
            NoRoute => "no_route",
            Misdirected => "misdirected_request",
            BadResponse(_) => "upstream_bad_response",
            UpstreamIo(_) => "upstream_reset",
            NoUpstream(_) => "no_healthy_upstream",
            UpstreamTimeout => "upstream_timeout",
            DownstreamIo(_) => "downstream_reset",
            NoHealthyUpstream => "no_healthy_upstream",
            Overflow(_) => "overflow",
            RateLimited(_) => "rate_limited",
            Forbidden => "forbidden",
            Overloaded => "overloaded",
            RefusedUnreplayable => "upstream_refused_stream",
            UpstreamIdentityRefused(_) => "upstream_identity_refused",
            FaultAbort { .. } => "fault_abort",
        }
    }

    /// The access log flag for this error (docs/operations.md lists them).
    pub fn flag(&self) -> &'static str {
        use HttpError::*;
        match self {
            BadRequest(_) | HeadTooLarge | TooManyHeaders | NotImplemented => "DP",
            BodyTooLarge => "DB",
            HeaderTimeout | BodyTimeout | SendTimeout => "DT",
            NoRoute => "NR",
            Misdirected => "MR",
            BadResponse(_) => "UP",
            NoUpstream(_) => "UF",
            UpstreamTimeout => "UT",
            UpstreamIo(_) => "UR",
            DownstreamIo(_) => "DR",
            NoHealthyUpstream => "UH",
            Overflow(_) => "UO",
            RateLimited(_) => "RL",
            Forbidden => "AD",
            Overloaded => "OL",
            RefusedUnreplayable => "URS",
            UpstreamIdentityRefused(_) => "UI",
            FaultAbort { .. } => "FI",
        }
    }

    /// Whether the error by itself ends the client connection (its framing
    /// can no longer be trusted, or the client is gone or stuck). The whole
    /// close-or-keep decision is [`keeps_connection`].
    pub fn closes_connection(&self) -> bool {
        use HttpError::*;
        matches!(
            self,
            BadRequest(_)
                | HeadTooLarge
                | TooManyHeaders
                | NotImplemented
                | BodyTooLarge
                | HeaderTimeout
                | BodyTimeout
                | SendTimeout
                | DownstreamIo(_)
                | Overloaded
        )
    }
}

impl HttpError {
    /// A failed write to the client: `send_timeout` passed, or the client
    /// is gone.
    pub fn client_write(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::TimedOut => HttpError::SendTimeout,
            _ => HttpError::DownstreamIo(e),
        }
    }

    /// A failed write to an upstream: `send_timeout` passed (504), or the
    /// connection failed.
    pub fn upstream_write(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::TimedOut => HttpError::UpstreamTimeout,
            _ => HttpError::UpstreamIo(e),
        }
    }
}

/// Where a request stood when it failed: what the close-or-keep decision
/// needs to know about the client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorContext {
    /// The request's body was read to its end (or it had none). When it was
    /// not, the unread rest would be parsed as the client's next request:
    /// keeping the connection would let a body smuggle a request.
    pub body_complete: bool,
    /// A response head already went to the client; an error can no longer
    /// be sent in its place and the response cannot be completed.
    pub response_started: bool,
    /// The client asked for keep-alive and the listener is not closing.
    pub client_keep_alive: bool,
}

/// The one owner of the close-or-keep decision after an error: a client
/// connection is kept only when the error allows it, the request body was
/// fully read (or there was none), no response had started, and the client
/// wants to keep it.
pub fn keeps_connection(error: &HttpError, at: ErrorContext) -> bool {
    !error.closes_connection() && at.body_complete && !at.response_started && at.client_keep_alive
}

/// The response the proxy sends for an error: status, a header naming the
/// proxy as its author, and a one-line body saying what happened.
pub fn error_response(err: &HttpError, close: bool) -> Vec<u8> {
    let status = err.status().unwrap_or(500);
    let (body, retry_after) = error_body(err);
    let retry_after = match retry_after {
        Some(s) => format!("retry-after: {s}\r\n"),
        None => String::new(),
    };
    format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-outrigger-error: {}\r\n{retry_after}{}\r\n{body}",
        reason(status),
        body.len(),
        err.code(),
        if close { "connection: close\r\n" } else { "" },
    )
    .into_bytes()
}

/// The body of the proxy's error response, and its `retry-after` seconds.
pub fn error_body(err: &HttpError) -> (String, Option<u64>) {
    // A 400 names its cause (a fixed text of the codec, never client bytes).
    let body = match err {
        HttpError::BadRequest(cause) => format!("{}: {cause}\n", err.code()),
        _ => format!("{}\n", err.code()),
    };
    // Whole seconds, rounded up: a client that waits this long gets a token.
    let retry_after = match err {
        HttpError::RateLimited(wait) => Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0)),
        _ => None,
    };
    (body, retry_after)
}

/// The registered reason phrase of a status (RFC 9110 and the IANA
/// registry); a generic phrase for the class of an unregistered one.
pub fn reason(status: u16) -> &'static str {
    registered_reason(status).unwrap_or(match status {
        200..=299 => "Success",
        300..=399 => "Redirection",
        400..=499 => "Client Error",
        _ => "Server Error",
    })
}

fn registered_reason(status: u16) -> Option<&'static str> {
    Some(match status {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        208 => "Already Reported",
        226 => "IM Used",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        418 => "I'm a teapot",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        423 => "Locked",
        424 => "Failed Dependency",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        510 => "Not Extended",
        511 => "Network Authentication Required",
        _ => return None,
    })
}
