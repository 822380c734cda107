//! `berth certs`: list certificates and retry an order.

use reqwest::Method;
use serde_json::{json, Value};

use super::{connect, list, seg};
use crate::client::output::{field, Out};
use crate::client::{CertsCmd, ClientError};

pub(super) async fn certs(servers: &[String], cmd: CertsCmd, out: &Out) -> Result<u8, ClientError> {
    let (_, api) = connect(servers).await?;
    match cmd {
        CertsCmd::List => {
            let v: Value = api.json(Method::GET, "/v1/certificates", None).await?;
            if out.json {
                out.json(&v);
            } else {
                let rows = list(&v, "certificates")
                    .iter()
                    .map(|c| {
                        vec![
                            field(c, &["domain"]),
                            field(c, &["source"]),
                            field(c, &["issuer"]),
                            field(c, &["not_after"]),
                            field(c, &["next_renewal"]),
                            field(c, &["last_error"]),
                        ]
                    })
                    .collect();
                out.table(
                    &[
                        "domain",
                        "source",
                        "issuer",
                        "expires",
                        "renews",
                        "last error",
                    ],
                    rows,
                );
            }
        }
        CertsCmd::Retry { domain } => {
            let v: Value = api
                .json(
                    Method::POST,
                    &format!("/v1/certificates/{}/retry", seg(&domain)),
                    Some(&json!({})),
                )
                .await?;
            if out.json {
                out.json(&v);
            } else {
                out.line(&format!(
                    "{}: certificate order queued (see `berth certs`)",
                    field(&v, &["domain"])
                ));
            }
        }
    }
    Ok(0)
}
