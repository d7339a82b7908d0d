//! The test services' tokens: HS256 with [`JWT_SECRET`], minted by `auth::mint`, the one place
//! the workspace's tests, benchmarks and load tools make tokens (RS256 and odd headers too).

pub use auth::mint;

/// The HS256 secret every test service is started with.
pub const JWT_SECRET: &str = "integration-test-secret";

/// `claims` signed with the test secret (HS256).
pub fn token_with(claims: serde_json::Value) -> String {
    mint::hs256(JWT_SECRET, &claims)
}

/// A valid token for `user`, signed with the test secret.
pub fn token_for(user: &str) -> String {
    token_with(mint::claims_for(user))
}

/// Seconds since the Unix epoch (for `exp` claims).
pub fn now_secs() -> u64 {
    mint::now()
}
