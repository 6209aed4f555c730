//! The Postgres wire protocol endpoint (`pg.listen`, default
//! `127.0.0.1:5433`): `psql`, DBeaver and BI tools run SQL over the same
//! engine, bounds and audit as `POST /v1/sql`.
//!
//! Database `verbatim`, any user name, and an auditor token as the password
//! (cleartext, so keep it on loopback or behind TLS). Parsing and the
//! `pg_catalog` tables come from `datafusion-postgres`; execution does not:
//! every statement, simple or extended, goes through [`SqlEngine`] and is
//! audited with the token's id.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::arrow_pg::datatypes::df::{deserialize_parameters, encode_dataframe};
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire;
use datafusion_postgres::{DfSessionService, Parser, QueryHook};
use futures::{Sink, SinkExt};
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata, DefaultServerParameterProvider,
    StartupHandler,
};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::Response;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireConnectionState, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::types::format::FormatOptions;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::audit::Audit;
use crate::auth::{Principal, Role, TokenStore};
use crate::metrics::IndexMetrics;
use crate::sql::{check_statement, SqlEngine, SqlError, SqlOutput};

/// `[pg]`: the Postgres wire protocol endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PgConfig {
    /// Listen address (`VERBATIM_PG_LISTEN`); loopback by default.
    pub listen: SocketAddr,
    /// Serve it at all.
    pub enabled: bool,
    /// Connections open at once; more are closed at once.
    pub max_connections: usize,
}

impl Default for PgConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 5433)), enabled: true, max_connections: 64 }
    }
}

/// Metadata keys the startup handler leaves on an authenticated connection.
const TOKEN_ID: &str = "verbatim.token_id";
const ROLE: &str = "verbatim.role";

fn user_error(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), code.into(), message.into())))
}

fn sql_error(e: SqlError) -> PgWireError {
    let code = match &e {
        SqlError::Refused(_) => "42501", // insufficient_privilege
        SqlError::Failed(_) => "XX000",
        SqlError::Busy(_) => "53300",        // too_many_connections
        SqlError::Unavailable(_) => "57P03", // cannot_connect_now
    };
    user_error(code, e.message())
}

/// Cleartext password authentication where the password is a token.
#[derive(Debug)]
struct TokenStartup {
    tokens: Arc<TokenStore>,
    parameters: DefaultServerParameterProvider,
}

#[async_trait]
impl StartupHandler for TokenStartup {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client.send(PgWireBackendMessage::Authentication(Authentication::CleartextPassword)).await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(pwd) => {
                let pwd = pwd.into_password()?;
                let who = self.tokens.authenticate(pwd.password.trim());
                match who {
                    Some(p) if p.role == Role::Auditor => {
                        client.metadata_mut().insert(TOKEN_ID.into(), p.token_id.clone());
                        client.metadata_mut().insert(ROLE.into(), p.role.as_str().into());
                        finish_authentication(client, &self.parameters).await?;
                    }
                    Some(p) => {
                        return Err(user_error(
                            "28000",
                            format!("a {} token may not run SQL (needs auditor)", p.role.as_str()),
                        ))
                    }
                    None => {
                        return Err(user_error("28P01", "the password must be a valid Verbatim auditor token"));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The caller of an authenticated connection.
fn principal<C: ClientInfo + ?Sized>(client: &C) -> PgWireResult<Principal> {
    let m = client.metadata();
    match (m.get(TOKEN_ID), m.get(ROLE)) {
        (Some(id), Some(role)) if role == Role::Auditor.as_str() => {
            Ok(Principal { token_id: id.clone(), role: Role::Auditor, sources: Vec::new(), site: None })
        }
        _ => Err(user_error("28000", "not authenticated")),
    }
}

/// Refuses, at Parse time, statements that are not read-only queries.
#[derive(Debug)]
struct ReadOnlyParse;

#[async_trait]
impl QueryHook for ReadOnlyParse {
    async fn handle_simple_query(
        &self,
        _statement: &Statement,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        None
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        check_statement(statement).err().map(|e| Err(sql_error(e)))
    }

    async fn handle_extended_query(
        &self,
        _statement: &Statement,
        _plan: &LogicalPlan,
        _params: &datafusion::common::ParamValues,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        None
    }
}

/// Simple and extended queries, run by the engine and audited.
struct PgService {
    engine: Arc<SqlEngine>,
    audit: Arc<Audit>,
    counts: Arc<IndexMetrics>,
    sql_parser: PostgresCompatibilityParser,
    parser: Arc<Parser>,
}

impl PgService {
    async fn answer<C: ClientInfo + ?Sized>(
        &self,
        client: &C,
        sql: &str,
        plan: Option<LogicalPlan>,
        format: &Format,
    ) -> PgWireResult<Response> {
        let who = principal(client)?;
        let out = self.engine.run_audited(&self.audit, &self.counts, &who, sql, plan, "pg").await.map_err(sql_error)?;
        encode(self.engine.context(), out, format, client).await
    }
}

async fn encode<C: ClientInfo + ?Sized>(
    ctx: &SessionContext,
    out: SqlOutput,
    format: &Format,
    client: &C,
) -> PgWireResult<Response> {
    let table =
        MemTable::try_new(out.schema.clone(), vec![out.batches]).map_err(|e| PgWireError::ApiError(e.into()))?;
    let df = ctx.read_table(Arc::new(table)).map_err(|e| PgWireError::ApiError(e.into()))?;
    let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
    Ok(Response::Query(encode_dataframe(df, format, Some(options)).await?))
}

#[async_trait]
impl SimpleQueryHandler for PgService {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        principal(client)?;
        let statements = self.sql_parser.parse(query).map_err(|e| user_error("42601", e.to_string()))?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut responses = Vec::with_capacity(statements.len());
        for s in statements {
            responses.push(self.answer(client, &s.to_string(), None, &Format::UnifiedText).await?);
        }
        Ok(responses)
    }
}

/// The parameters of `$1`, `$2`, … in order, with the types the plan infers.
fn parameter_types(plan: &LogicalPlan) -> PgWireResult<Vec<Option<arrow::datatypes::DataType>>> {
    let types = plan.get_parameter_types().map_err(|e| PgWireError::ApiError(e.into()))?;
    let mut numbered: Vec<(usize, Option<arrow::datatypes::DataType>)> = types
        .into_iter()
        .filter_map(|(k, t)| k.trim_start_matches('$').parse::<usize>().ok().map(|n| (n, t)))
        .collect();
    numbered.sort_by_key(|(n, _)| *n);
    Ok(numbered.into_iter().map(|(_, t)| t).collect())
}

#[async_trait]
impl ExtendedQueryHandler for PgService {
    type Statement = (String, Option<(Statement, LogicalPlan)>);
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (sql, Some((_, plan))) = &portal.statement.statement else { return Ok(Response::EmptyQuery) };
        let types = parameter_types(plan)?;
        let refs: Vec<Option<&arrow::datatypes::DataType>> = types.iter().map(Option::as_ref).collect();
        let params = deserialize_parameters(portal, &refs)?;
        let plan = plan.clone().replace_params_with_values(&params).map_err(|e| PgWireError::ApiError(e.into()))?;
        self.answer(client, sql, Some(plan), &portal.result_column_format).await
    }
}

struct Handlers {
    service: Arc<PgService>,
    startup: Arc<TokenStartup>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.service.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.service.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
}

/// Adds `pg_catalog` and the Postgres functions clients call on connect.
pub fn setup_catalog(ctx: &SessionContext) -> anyhow::Result<()> {
    use datafusion_postgres::datafusion_pg_catalog::pg_catalog::{context::EmptyContextProvider, setup_pg_catalog};
    setup_pg_catalog(ctx, crate::sql::CATALOG, EmptyContextProvider).map_err(|e| anyhow::anyhow!("{e}"))?;
    let state = ctx.state_ref();
    let mut state = state.write();
    datafusion_postgres::datafusion_pg_functions::register_all(&mut *state);
    Ok(())
}

/// Serves the Postgres protocol on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<SqlEngine>,
    audit: Arc<Audit>,
    counts: Arc<IndexMetrics>,
    tokens: Arc<TokenStore>,
    max_connections: usize,
) {
    let parse_only =
        DfSessionService::new_with_hooks(Arc::new(engine.context().clone()), vec![Arc::new(ReadOnlyParse)]);
    let service = Arc::new(PgService {
        parser: ExtendedQueryHandler::query_parser(&parse_only),
        engine,
        audit,
        counts,
        sql_parser: PostgresCompatibilityParser::new(),
    });
    let mut parameters = DefaultServerParameterProvider::default();
    parameters.server_version = "16.0 (Verbatim)".into();
    parameters.is_superuser = false;
    parameters.default_transaction_read_only = true;
    let handlers = Arc::new(Handlers { service, startup: Arc::new(TokenStartup { tokens, parameters }) });
    let limit = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning.
                warn!("accepting a Postgres connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            info!(%peer, "refusing a Postgres connection: pg.max_connections reached");
            continue;
        };
        let h = handlers.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = pgwire::tokio::process_socket(socket, None, h).await {
                info!(%peer, "Postgres connection ended: {e}");
            }
        });
    }
}
