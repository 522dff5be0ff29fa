//! The REST API: `Authenticate` and the calls.

use super::*;

#[derive(serde::Deserialize)]
pub(super) struct RestAuthRequest {
    #[serde(rename = "AcctCode")]
    pub(super) acct_code: String,
    #[serde(rename = "Token")]
    pub(super) token: String,
}

pub(super) async fn rest_authenticate(
    shared: &NumberSimCore,
    parts: &http::request::Parts,
    body: &Bytes,
) -> Resp {
    let parsed = if !content_type_is(parts, "application/json") {
        Err("Content-Type must be application/json".to_owned())
    } else {
        serde_json::from_slice::<RestAuthRequest>(body)
            .map_err(|_| "Malformed request: expected JSON with AcctCode and Token".to_owned())
    };
    let answer = shared.authenticate(
        parsed
            .as_ref()
            .map(|r| (r.acct_code.as_str(), r.token.as_str()))
            .map_err(Clone::clone),
    );
    tracing::debug!(
        protocol = "rest",
        outcome = answer.label(),
        "number simulator: authenticate"
    );
    apply_latency(shared).await;
    let cfg = &shared.config;
    let result = match answer {
        AuthAnswer::Success { key, expires } => serde_json::json!({
            "AuthSuccess": true,
            "ErrCode": 0,
            "ErrMsg": "",
            "FunctionOk": true,
            "RespMsg": format!("SessKey Expires|{}", format_vendor_date(expires)),
            "SessKey": key,
            "MerchantList": [{
                "ID": 1,
                "Descrip": "Simulated Merchant",
                "TermID": "001",
                "Location": "Simulator",
                "Address": "127.0.0.1",
            }],
            "ThisUser": {
                "ID": cfg.user_id,
                "AccountCode": cfg.account_code,
                "IsExpired": false,
                "IsLockedOut": false,
            },
        }),
        AuthAnswer::Rejected { resp_msg } => serde_json::json!({
            "AuthSuccess": false,
            "ErrCode": 0,
            "ErrMsg": "",
            "FunctionOk": true,
            "RespMsg": resp_msg,
            "SessKey": "",
            "MerchantList": [],
            "ThisUser": serde_json::Value::Null,
        }),
        AuthAnswer::Malformed { err_msg } => serde_json::json!({
            "AuthSuccess": false,
            "ErrCode": ERR_MALFORMED,
            "ErrMsg": err_msg,
            "FunctionOk": false,
            "RespMsg": "",
            "SessKey": "",
            "MerchantList": [],
            "ThisUser": serde_json::Value::Null,
        }),
    };
    json(
        StatusCode::OK,
        &serde_json::json!({ "AuthenticateResult": result }),
    )
}

impl AuthAnswer {
    pub(super) fn label(&self) -> &'static str {
        match self {
            AuthAnswer::Success { .. } => "success",
            AuthAnswer::Rejected { .. } => "rejected",
            AuthAnswer::Malformed { .. } => "malformed",
        }
    }
}

pub(super) async fn rest_call_handler(
    shared: &NumberSimCore,
    parts: &http::request::Parts,
    method: &str,
    body: Bytes,
) -> Result<Resp, DropConnection> {
    let sess_key = parts
        .headers
        .get("SessKey")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let decision = shared.judge_call("rest", method, &body, sess_key.as_deref());
    apply_latency(shared).await;
    let answer = match decision {
        CallDecision::Drop => return Err(DropConnection),
        CallDecision::Answer(a) => a,
    };
    let (function_ok, err_code, err_msg, resp_msg) = answer.fields();
    let mut result = serde_json::json!({
        "FunctionOk": function_ok,
        "ErrCode": err_code,
        "ErrMsg": err_msg,
        "RespMsg": resp_msg,
    });
    if let (CallAnswer::Ok { tx_id }, Some(obj)) = (answer, result.as_object_mut()) {
        let echo = serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default();
        obj.insert("TxID".to_owned(), tx_id.into());
        obj.insert("Echo".to_owned(), echo);
    }
    let mut wrapper = serde_json::Map::new();
    wrapper.insert(format!("{method}Result"), result);
    Ok(json(StatusCode::OK, &serde_json::Value::Object(wrapper)))
}
