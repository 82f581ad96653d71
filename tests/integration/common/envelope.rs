//! Envelopes (protocol §4) built the way tests read best: every event carries a `label` in its
//! `data`, so a test can say exactly which events a client received and in which order.

use serde_json::{json, Value};

#[derive(Clone, Debug)]
pub struct Envelope(Value);

/// An envelope of `event_type` for `org` whose data is `{"label": label}`; no routing fields.
pub fn envelope(org: &str, event_type: &str, label: &str) -> Envelope {
    Envelope(json!({"type": event_type, "orgId": org, "data": {"label": label}}))
}

impl Envelope {
    pub fn landlord_id(self, landlord_id: &str) -> Self {
        self.field("landlordId", json!(landlord_id))
    }

    pub fn tenant_id(self, tenant_id: &str) -> Self {
        self.field("tenantId", json!(tenant_id))
    }

    pub fn contractor_id(self, contractor_id: &str) -> Self {
        self.field("contractorId", json!(contractor_id))
    }

    pub fn user_ids(self, user_ids: &[&str]) -> Self {
        self.field("userIds", json!(user_ids))
    }

    /// Sets a top-level field of the envelope.
    pub fn field(mut self, name: &str, value: Value) -> Self {
        self.0[name] = value;
        self
    }

    /// Sets a field inside `data` (where routing fields are looked up as a fallback).
    pub fn data_field(mut self, name: &str, value: Value) -> Self {
        self.0["data"][name] = value;
        self
    }

    /// Makes the envelope `bytes` long when serialized, by padding `data.padding`.
    pub fn padded_to(self, bytes: usize) -> Self {
        let without_padding = self.clone().data_field("padding", json!("")).0.to_string().len();
        let padding = "x".repeat(bytes.saturating_sub(without_padding));
        let padded = self.data_field("padding", json!(padding));
        assert_eq!(padded.0.to_string().len(), bytes, "padding arithmetic");
        padded
    }
}

impl Envelope {
    /// The envelope as the JSON text a backend would publish.
    pub fn into_string(self) -> String {
        self.0.to_string()
    }
}

impl From<Envelope> for Value {
    fn from(envelope: Envelope) -> Value {
        envelope.0
    }
}
