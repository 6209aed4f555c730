//! Authentication of requests: `Authorization: Bearer <token>` resolved to a
//! [`Principal`], and role checks.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::error::ApiError;
use super::AppState;
use crate::auth::{Principal, Role};

/// The authenticated caller of a request; refuses the request (401) otherwise.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(ApiError::unauthorized)?;
        state.tokens.authenticate(token).map(Caller).ok_or_else(ApiError::unauthorized)
    }
}

impl Caller {
    /// Refuses (403) unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<&Principal, ApiError> {
        if roles.contains(&self.0.role) {
            Ok(&self.0)
        } else {
            let allowed: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            Err(ApiError::forbidden(format!(
                "a {} token may not do this (needs {})",
                self.0.role.as_str(),
                allowed.join(" or ")
            )))
        }
    }
}
