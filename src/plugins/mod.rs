//! The plugin contract. A route owns a [`Chain`] built from its `plugins:` list: request-side
//! hooks run in list order, response-side hooks in reverse order (the onion model of Envoy and
//! axum). Plugins never touch the socket: they return a [`Flow`], and the gateway writes replies.
//!
//! Adding a plugin: a new file with a typed `Config` that implements [`Build`] and a type
//! that implements [`Plugin`] (its hooks listed in `Plugin::phases`), and one line in the
//! table at the end of this file. Nothing else changes: the YAML, the JSON Schema, `postern
//! check` and the phase lists follow from the table.

pub mod key;

use crate::common::issue::Issue;
use crate::context::RequestCtx;
use crate::error::GatewayError;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use schemars::JsonSchema;
use serde::Deserialize;
use std::sync::Arc;

pub use crate::reply::{Flow, Reply};

/// The hooks a plugin implements. A route's [`Chain`] keeps one list per hook, so a hook is
/// called only on the plugins that declare it, and a phase without plugins costs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases(u8);

impl Phases {
    pub const REQUEST: Phases = Phases(1);
    pub const UPSTREAM_REQUEST: Phases = Phases(1 << 1);
    pub const RESPONSE: Phases = Phases(1 << 2);
    pub const LOG: Phases = Phases(1 << 3);
    /// `on_request_body` (and `takes_request_body`).
    pub const REQUEST_BODY: Phases = Phases(1 << 4);
    /// `on_response_body` (and `takes_response_body`).
    pub const RESPONSE_BODY: Phases = Phases(1 << 5);

    /// Both sets.
    pub const fn and(self, other: Phases) -> Phases {
        Phases(self.0 | other.0)
    }

    pub const fn has(self, p: Phases) -> bool {
        self.0 & p.0 != 0
    }
}

/// How a body hook receives a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyMode {
    /// Each chunk as it streams (no buffering).
    Chunks,
    /// The whole body, buffered up to `max` bytes.
    Whole { max: usize },
}

/// What happens to a response body above a whole-body plugin's `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Oversize {
    /// Sent on untransformed (logged and counted).
    #[default]
    Pass,
    /// The answer fails: 502 when the length is known from the header, otherwise the response
    /// is cut (its header is already on its way).
    Error,
}

/// A plugin. Every hook has a no-op default; implement the ones you need and list them in
/// [`Plugin::phases`].
#[async_trait]
pub trait Plugin: Send + Sync + 'static {
    /// The hooks this plugin implements (default: `on_request` only).
    fn phases(&self) -> Phases {
        Phases::REQUEST
    }

    /// After routing, before anything is sent upstream. May answer the request itself.
    async fn on_request(
        &self,
        _req: &mut RequestHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<Flow, GatewayError> {
        Ok(Flow::Continue)
    }

    /// On the copy of the request sent upstream (after Postern's own forwarding headers).
    fn on_upstream_request(
        &self,
        _req: &mut RequestHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<(), GatewayError> {
        Ok(())
    }

    /// On the response header, from the upstream or from a reply.
    fn on_response(
        &self,
        _resp: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<(), GatewayError> {
        Ok(())
    }

    /// Once per request, after the response was sent (or the request failed).
    fn on_log(&self, _ctx: &RequestCtx) {}

    /// How the body hooks see a body: chunk by chunk as it streams, or whole (buffered by the
    /// gateway up to `max` bytes; see [`Oversize`] for larger bodies).
    fn body_mode(&self) -> BodyMode {
        BodyMode::Chunks
    }

    /// Whether this plugin changes this request's body, decided on the header once the request
    /// plugins ran (it may set the header of the new body here, e.g. `Content-Type`).
    fn takes_request_body(&self, _req: &mut RequestHeader, _ctx: &mut RequestCtx) -> bool {
        false
    }

    /// A chunk of the request body, or the whole body at `eos` in [`BodyMode::Whole`].
    fn on_request_body(
        &self,
        _body: &mut Bytes,
        _eos: bool,
        _ctx: &mut RequestCtx,
    ) -> Result<(), GatewayError> {
        Ok(())
    }

    /// Whether this plugin changes this response's body, decided on its header (it may set the
    /// header of the new body here, e.g. `Content-Type`). `false` leaves the body untouched.
    fn takes_response_body(&self, _resp: &mut ResponseHeader, _ctx: &mut RequestCtx) -> bool {
        false
    }

    /// A chunk of the response body, or the whole body at `eos` in [`BodyMode::Whole`]. An
    /// error in whole mode is handled as the plugin's [`Plugin::oversize`] says for failures:
    /// `Pass` keeps the original body.
    fn on_response_body(
        &self,
        _body: &mut Bytes,
        _eos: bool,
        _ctx: &mut RequestCtx,
    ) -> Result<(), GatewayError> {
        Ok(())
    }

    /// Whether this response-body plugin needs the whole response, header and body, before
    /// anything is sent to the client (to set fields from the body, or to answer an error
    /// instead of a cut response). On such a route the gateway first takes the upstream's
    /// complete answer (through a subrequest, which runs the route's upstream side, cache
    /// included) and then calls [`Plugin::on_whole_response`] of the route's served-stage
    /// body plugins.
    fn defers_response(&self) -> bool {
        false
    }

    /// The whole response, on a route whose response is deferred (see
    /// [`Plugin::defers_response`]); called after [`Plugin::takes_response_body`] said yes.
    fn on_whole_response(
        &self,
        _resp: &mut ResponseHeader,
        body: &mut Bytes,
        ctx: &mut RequestCtx,
    ) -> Result<(), GatewayError> {
        self.on_response_body(body, true, ctx)
    }

    /// What the gateway does with a response body above `max` in [`BodyMode::Whole`].
    fn oversize(&self) -> Oversize {
        Oversize::Pass
    }

    /// Starts background work (key refresh, connections). Called for every snapshot put in
    /// service, inside the runtime; must be idempotent.
    fn start(&self) {}
}

/// A route's plugins: request-side hooks run in configuration order, response-side hooks in
/// reverse order. One list per hook, holding only the plugins that declare it.
#[derive(Clone, Default)]
pub struct Chain {
    all: Box<[Arc<dyn Plugin>]>,
    request: Box<[Arc<dyn Plugin>]>,
    upstream_request: Box<[Arc<dyn Plugin>]>,
    /// Reverse configuration order.
    response: Box<[Arc<dyn Plugin>]>,
    /// Reverse configuration order.
    log: Box<[Arc<dyn Plugin>]>,
    request_body: Box<[Arc<dyn Plugin>]>,
    /// Response-body plugins listed before `cache`: their output is what the cache stores.
    /// Reverse configuration order.
    response_body_stored: Box<[Arc<dyn Plugin>]>,
    /// Response-body plugins listed after `cache` (or on a route without one): they run on
    /// every answer, hits included. Reverse configuration order.
    response_body_served: Box<[Arc<dyn Plugin>]>,
    /// A served-stage body plugin needs the whole response first.
    defers: bool,
    /// The route's HTTP cache (its `cache` entry).
    cache: Option<Arc<crate::cache::CachePolicy>>,
    /// The route's response compression (its `compression` entry).
    compression: Option<Arc<compression::CompressionPolicy>>,
}

impl Chain {
    /// The chain of a route's built entries, in configuration order.
    pub fn new(entries: Vec<Built>) -> Chain {
        let mut plugins: Vec<Arc<dyn Plugin>> = Vec::with_capacity(entries.len());
        let (mut cache, mut compression, mut cache_at) = (None, None, None);
        for e in entries {
            match e {
                Built::Plugin(p) => plugins.push(p),
                Built::Cache { policy, purge } => {
                    if cache.is_none() {
                        cache = Some(policy);
                        cache_at = Some(plugins.len());
                    }
                    plugins.push(purge);
                }
                Built::Compression(c) => {
                    compression.get_or_insert(c);
                }
            }
        }
        let with = |p: Phases, reverse: bool| -> Box<[Arc<dyn Plugin>]> {
            let mut v: Vec<_> = plugins
                .iter()
                .filter(|x| x.phases().has(p))
                .cloned()
                .collect();
            if reverse {
                v.reverse();
            }
            v.into()
        };
        let body = |stored: bool| -> Box<[Arc<dyn Plugin>]> {
            let mut v: Vec<_> = plugins
                .iter()
                .enumerate()
                .filter(|(i, p)| {
                    p.phases().has(Phases::RESPONSE_BODY)
                        && cache_at.is_some_and(|c| *i < c) == stored
                })
                .map(|(_, p)| p.clone())
                .collect();
            v.reverse();
            v.into()
        };
        let response_body_served = body(false);
        Chain {
            defers: response_body_served.iter().any(|p| p.defers_response()),
            request_body: with(Phases::REQUEST_BODY, false),
            response_body_stored: body(true),
            response_body_served,
            request: with(Phases::REQUEST, false),
            upstream_request: with(Phases::UPSTREAM_REQUEST, false),
            response: with(Phases::RESPONSE, true),
            log: with(Phases::LOG, true),
            all: plugins.into(),
            cache,
            compression,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    pub async fn on_request(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<Flow, GatewayError> {
        for p in self.request.iter() {
            if let Flow::Respond(r) = p.on_request(req, ctx).await? {
                return Ok(Flow::Respond(r));
            }
        }
        Ok(Flow::Continue)
    }

    pub fn on_upstream_request(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<(), GatewayError> {
        self.upstream_request
            .iter()
            .try_for_each(|p| p.on_upstream_request(req, ctx))
    }

    pub fn on_response(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<(), GatewayError> {
        self.response
            .iter()
            .try_for_each(|p| p.on_response(resp, ctx))
    }

    /// Whether a response-body plugin is on the route (at either stage).
    pub fn has_response_body(&self) -> bool {
        !self.response_body_stored.is_empty() || !self.response_body_served.is_empty()
    }

    /// Whether the route's response is taken whole before it is served.
    pub fn defers(&self) -> bool {
        self.defers
    }

    /// The request-body plugins.
    pub fn request_body(&self) -> &[Arc<dyn Plugin>] {
        &self.request_body
    }

    /// The response-body plugins of one stage, in the order they run.
    pub fn response_body(&self, stored: bool) -> &[Arc<dyn Plugin>] {
        if stored {
            &self.response_body_stored
        } else {
            &self.response_body_served
        }
    }

    pub fn on_log(&self, ctx: &RequestCtx) {
        self.log.iter().for_each(|p| p.on_log(ctx));
    }

    pub fn start(&self) {
        self.all.iter().for_each(|p| p.start());
    }

    /// The cache policy of the route, if one of its entries is `cache`.
    pub fn cache_policy(&self) -> Option<Arc<crate::cache::CachePolicy>> {
        self.cache.clone()
    }

    /// The compression settings of the route, if one of its entries is `compression`.
    pub fn compression_policy(&self) -> Option<Arc<compression::CompressionPolicy>> {
        self.compression.clone()
    }
}

/// Parses a list of header names from a plugin config; bad names become issues at `path[i]`.
pub fn header_names(list: &[String], path: &str, issues: &mut Vec<Issue>) -> Vec<http::HeaderName> {
    list.iter()
        .enumerate()
        .filter_map(|(i, h)| {
            http::HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| {
                    issues.push(Issue::new(
                        format!("{path}[{i}]"),
                        format!("invalid header name \"{h}\""),
                    ))
                })
                .ok()
        })
        .collect()
}

/// `Retry-After` in whole seconds, at least 1.
pub fn retry_after(d: std::time::Duration) -> (http::HeaderName, http::HeaderValue) {
    let secs = d.as_nanos().div_ceil(1_000_000_000) as u64;
    (
        http::header::RETRY_AFTER,
        http::HeaderValue::from(secs.max(1)),
    )
}

/// What building a plugin may use besides its config.
pub struct BuildCtx<'a> {
    /// Name of the route the plugin belongs to.
    pub route: &'a str,
    /// Position in the route's plugin list.
    pub index: usize,
    /// Config path of the plugin entry, for errors: `routes[0].plugins[1]`.
    pub path: String,
    pub shared: &'a Arc<crate::shared::Shared>,
    /// The compiled `consumers` section.
    pub consumers: &'a Arc<crate::auth::Consumers>,
    /// The cluster store and its default failure policy, when `cluster.redis` is configured.
    pub redis: Option<(&'a Arc<crate::redis::Redis>, crate::common::types::OnError)>,
    /// The route's request body limit (`max_request_body`): the most a body plugin may buffer.
    pub max_request_body: u64,
}

/// What one entry of a route's `plugins:` list builds.
pub enum Built {
    /// A plugin with hooks, run in its place in the chain.
    Plugin(Arc<dyn Plugin>),
    /// The route's HTTP cache: a policy the gateway's cache phases follow, and the plugin that
    /// answers `PURGE` in the entry's place (its position also splits the response-body
    /// plugins into those whose output is stored and those that run on every answer).
    Cache {
        policy: Arc<crate::cache::CachePolicy>,
        purge: Arc<dyn Plugin>,
    },
    /// Not a plugin: how the gateway compresses the route's answers.
    Compression(Arc<compression::CompressionPolicy>),
}

impl Built {
    pub fn plugin(p: impl Plugin) -> Built {
        Built::Plugin(Arc::new(p))
    }

    /// The plugin, when the entry built one with hooks of its own.
    pub fn into_plugin(self) -> Option<Arc<dyn Plugin>> {
        match self {
            Built::Plugin(p) => Some(p),
            Built::Cache { .. } | Built::Compression(_) => None,
        }
    }

    /// Whether this entry's output would be what the cache stores (see [`Built::Cache`]).
    pub fn defers_response(&self) -> bool {
        matches!(self, Built::Plugin(p) if p.defers_response())
    }
}

/// A plugin's typed configuration, and how it is built once it parsed; `b.path` is the
/// entry's config path (`routes[0].plugins[1].jwt`) for the issues it reports.
pub trait Build {
    fn build(&self, b: &BuildCtx) -> Result<Built, Vec<Issue>>;
}

impl<T: Build> Build for Box<T> {
    fn build(&self, b: &BuildCtx) -> Result<Built, Vec<Issue>> {
        (**self).build(b)
    }
}

/// The plugin table, from which follow the modules, the [`PluginSpec`] enum with its JSON
/// Schema, the one-key-map YAML decoding, [`PLUGIN_NAMES`], [`PluginSpec::name`] and
/// [`build`]. yaml_serde writes externally tagged enums as YAML tags, so the map form
/// (`- headers: { … }`) is decoded by hand; errors inside a plugin's config keep their path
/// and line.
macro_rules! plugin_table {
    ($( $(#[doc = $doc:literal])* $name:ident: $variant:ident($ty:ty), )*) => {
        $( pub mod $name; )*

        /// Typed plugin configuration: `- headers: { … }` in YAML, a map with exactly one key
        /// naming the plugin (the variant's name in snake case, which is also its module's).
        #[derive(Debug, Clone, JsonSchema, serde::Serialize)]
        #[serde(rename_all = "snake_case", deny_unknown_fields)]
        pub enum PluginSpec {
            $( $(#[doc = $doc])* $variant($ty), )*
        }

        /// Names accepted as plugin keys, in table order.
        pub const PLUGIN_NAMES: &[&str] = &[$(stringify!($name)),*];

        impl PluginSpec {
            /// The entry's YAML key.
            pub fn name(&self) -> &'static str {
                match self {
                    $( PluginSpec::$variant(_) => stringify!($name), )*
                }
            }

            fn config(&self) -> &dyn Build {
                match self {
                    $( PluginSpec::$variant(c) => c, )*
                }
            }

        }

        impl crate::common::one_key::OneKey for PluginSpec {
            const NAMES: &'static [&'static str] = PLUGIN_NAMES;
            const EXPECTING: &'static str = "plugin name ({names}) and its settings";
            const EMPTY: &'static str = "empty plugin entry";
            const SECOND_KEY: &'static str =
                "one plugin per list item; start a new `- name:` item for the next plugin";

            fn decode<'de, A: serde::de::MapAccess<'de>>(
                name: &str,
                map: &mut A,
            ) -> Result<Option<PluginSpec>, A::Error> {
                Ok(Some(match name {
                    $( stringify!($name) => PluginSpec::$variant(map.next_value()?), )*
                    _ => return Ok(None),
                }))
            }
        }
    };
}

plugin_table! {
    /// Add, set or remove request and response headers.
    headers: Headers(headers::Config),
    /// Requests per key and window (GCRA), local or cluster-wide.
    rate_limit: RateLimit(rate_limit::Config),
    /// Requests in flight per key.
    concurrency_limit: ConcurrencyLimit(concurrency_limit::Config),
    /// JSON Web Token verification (keys inline, from a JWKS file or URL).
    jwt: Jwt(Box<jwt::Config>),
    /// API keys of consumers, in a header or query parameter.
    api_key: ApiKey(api_key::Config),
    /// HTTP Basic credentials of consumers (argon2id or bcrypt hashes).
    basic_auth: BasicAuth(basic_auth::Config),
    /// Any one of several authentication mechanisms.
    auth: Auth(auth::Config),
    /// Allow or deny by consumer name or group.
    acl: Acl(acl::Config),
    /// Allow or deny by client address.
    ip_filter: IpFilter(ip_filter::Config),
    /// Allow or deny by weekday and time of day in a time zone.
    time_window: TimeWindow(time_window::Config),
    /// Change request and response bodies (JSON fields), query strings, methods and statuses.
    transform: Transform(Box<transform::Config>),
    /// Cross-Origin Resource Sharing: preflight answers and CORS response fields.
    cors: Cors(cors::Config),
    /// Response compression (gzip, brotli, zstd) negotiated from `Accept-Encoding`.
    compression: Compression(compression::Config),
    /// Ask an external authorization service.
    forward_auth: ForwardAuth(forward_auth::Config),
    /// Opaque tokens checked with an RFC 7662 introspection endpoint.
    oauth2_introspection: Oauth2Introspection(oauth2_introspection::Config),
    /// A verified client certificate (mTLS), resolved to a consumer.
    mtls: Mtls(mtls::Config),
    /// Store responses in the shared HTTP cache.
    cache: Cache(cache::Config),
    /// Inject delays and errors into a share of requests (failure rehearsal).
    fault: Fault(fault::Config),
}

impl<'de> Deserialize<'de> for PluginSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::common::one_key::deserialize(d)
    }
}

/// Builds a plugin entry from its config; `b.path` names the entry (`routes[0].plugins[1]`),
/// the plugin sees its own key appended (`routes[0].plugins[1].jwt`).
pub fn build(spec: &PluginSpec, b: &BuildCtx) -> Result<Built, Vec<Issue>> {
    let at = BuildCtx {
        path: format!("{}.{}", b.path, spec.name()),
        ..*b
    };
    spec.config().build(&at)
}

#[cfg(test)]
mod tests;
