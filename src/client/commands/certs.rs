//! `berth certs`: list certificates and retry an order.

use reqwest::Method;

use super::{connect, seg};
use crate::client::output::{or_dash, Out};
use crate::client::{CertsCmd, ClientError};
use crate::model::api::{CertRetryQueued, CertSource, CertificateList};

pub(super) async fn certs(servers: &[String], cmd: CertsCmd, out: &Out) -> Result<u8, ClientError> {
    let (_, api) = connect(servers).await?;
    match cmd {
        CertsCmd::List => {
            let v: CertificateList = api.get("/v1/certificates").await?;
            if out.json {
                out.json(&v);
            } else {
                let rows = v
                    .certificates
                    .iter()
                    .map(|c| {
                        vec![
                            c.domain.clone(),
                            source_name(c.source).to_string(),
                            or_dash(c.issuer.as_deref()),
                            or_dash(c.not_after.as_deref()),
                            or_dash(c.next_renewal.as_deref()),
                            or_dash(c.last_error.as_deref()),
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
            let v: CertRetryQueued = api
                .json::<_, ()>(
                    Method::POST,
                    &format!("/v1/certificates/{}/retry", seg(&domain)),
                    None,
                )
                .await?;
            out.answer(&v, || {
                format!("{}: certificate order queued (see `berth certs`)", v.domain)
            });
        }
    }
    Ok(0)
}

fn source_name(s: CertSource) -> &'static str {
    match s {
        CertSource::Acme => "acme",
        CertSource::Manual => "manual",
        CertSource::Default => "default",
    }
}
