//! The key and token files the servers and clients of `quire` are given:
//! read once at start, with the file named in every error.

use std::path::Path;

use anyhow::{Context, Result, bail};
use quire_net::token::TokenVerifier;

/// A token file: one line, the token (surrounding whitespace ignored).
pub fn read_token(path: Option<&Path>) -> Result<Option<String>> {
    let Some(path) = path else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        bail!("{}: expected one token on one line", path.display());
    }
    Ok(Some(token.to_owned()))
}

/// A public key file (PEM) that tokens are checked with.
pub fn read_verifier(path: Option<&Path>) -> Result<Option<TokenVerifier>> {
    let Some(path) = path else {
        return Ok(None);
    };
    let pem = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    TokenVerifier::from_pem(&pem)
        .map(Some)
        .with_context(|| format!("read {}", path.display()))
}
