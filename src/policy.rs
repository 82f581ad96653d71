//! Who sees what: the configured rule table, compiled per connection into a `Viewer` whose
//! `may_see` is evaluated once per candidate event. Pure; no IO.

use std::collections::HashMap;

use serde::Deserialize;

use crate::auth::Claims;
use crate::event::{Event, EventType, OrgId};

/// One kind of event a role receives among the events of its token's orgs.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every event of the org.
    Org,
    /// Events whose `landlordId` is one of the token's orgs.
    Landlord,
    /// Events whose `tenantId` equals the token's `tenantId` (or `sub` when absent).
    Tenant,
    /// Events whose `contractorId` equals the token's `contractorId` (or `sub` when absent).
    Contractor,
    /// Events whose `userIds` contain the token's `sub`.
    User,
}

/// What one role may do, as configured under `policy.roles.<role>`.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RoleRule {
    pub subscribe: bool,
    pub publish: bool,
    pub sees: Vec<Scope>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("role {0:?} is not allowed to subscribe")]
    MaySubscribe(String),
    #[error("role {0:?} is not allowed to publish")]
    MayPublish(String),
    #[error("the token does not list org {0}")]
    OrgNotInToken(String),
    #[error("role {0:?} may not list connections; only ops may")]
    MayListConnections(String),
}

/// The rule table.
#[derive(Debug, Clone)]
pub struct Policy {
    roles: HashMap<String, RoleRule>,
}

impl Policy {
    pub fn new(roles: HashMap<String, RoleRule>) -> Self {
        Self { roles }
    }

    /// Whether `role` is one of `policy.roles`.
    pub fn knows(&self, role: &str) -> bool {
        self.roles.contains_key(role)
    }

    fn rule(&self, role: &str) -> Option<&RoleRule> {
        self.roles.get(role)
    }

    /// The viewer for a stream opened with `claims`, or why the role may not open one.
    pub fn viewer(&self, claims: &Claims, types: Option<TypeFilter>) -> Result<Viewer, PolicyError> {
        let rule = self
            .rule(&claims.role)
            .filter(|rule| rule.subscribe)
            .ok_or_else(|| PolicyError::MaySubscribe(claims.role.clone()))?;
        Ok(Viewer {
            sees: rule.sees.iter().fold(0, |bits, scope| bits | scope_bit(*scope)),
            orgs: claims.orgs.clone().into_boxed_slice(),
            tenant_id: claims.tenant_id.as_deref().unwrap_or(&claims.sub).into(),
            contractor_id: claims.contractor_id.as_deref().unwrap_or(&claims.sub).into(),
            user_id: claims.sub.as_str().into(),
            types,
        })
    }

    /// Checks that `claims`' role may publish at all (before anything of the body is read).
    pub fn check_may_publish(&self, claims: &Claims) -> Result<(), PolicyError> {
        self.rule(&claims.role)
            .filter(|rule| rule.publish)
            .map(|_| ())
            .ok_or_else(|| PolicyError::MayPublish(claims.role.clone()))
    }

    /// Checks that `claims` may publish to `org`.
    pub fn check_publish(&self, claims: &Claims, org: &OrgId) -> Result<(), PolicyError> {
        self.check_may_publish(claims)?;
        if claims.orgs.contains(org) {
            Ok(())
        } else {
            Err(PolicyError::OrgNotInToken(org.to_string()))
        }
    }
}

fn scope_bit(scope: Scope) -> u8 {
    match scope {
        Scope::Org => 1,
        Scope::Landlord => 2,
        Scope::Tenant => 4,
        Scope::Contractor => 8,
        Scope::User => 16,
    }
}

/// The `types=` filter: exact types, or prefixes written with a trailing `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeFilter {
    exact: Box<[Box<str>]>,
    prefixes: Box<[Box<str>]>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("types must be a comma-separated list of event types, each optionally ending in '*': {0:?}")]
pub struct InvalidTypeFilter(pub String);

impl TypeFilter {
    pub fn parse(raw: &str) -> Result<Self, InvalidTypeFilter> {
        let mut exact = Vec::new();
        let mut prefixes = Vec::new();
        for item in raw.split(',').map(str::trim).filter(|item| !item.is_empty()) {
            match item.strip_suffix('*') {
                // `*` alone matches everything; `payment.*` matches `payment.received`.
                Some(prefix) => {
                    let valid = prefix.is_empty()
                        || prefix
                            .strip_suffix('.')
                            .map_or(EventType::parse(prefix).is_ok(), |p| EventType::parse(p).is_ok());
                    if !valid {
                        return Err(InvalidTypeFilter(item.to_string()));
                    }
                    prefixes.push(prefix.into());
                }
                None => {
                    EventType::parse(item).map_err(|_| InvalidTypeFilter(item.to_string()))?;
                    exact.push(item.into());
                }
            }
        }
        if exact.is_empty() && prefixes.is_empty() {
            return Err(InvalidTypeFilter(raw.to_string()));
        }
        Ok(Self {
            exact: exact.into_boxed_slice(),
            prefixes: prefixes.into_boxed_slice(),
        })
    }

    pub fn matches(&self, event_type: &EventType) -> bool {
        let t = event_type.as_str();
        self.exact.iter().any(|e| &**e == t) || self.prefixes.iter().any(|p| t.starts_with(&**p))
    }
}

/// One connection's compiled view: everything `may_see` needs, nothing else.
#[derive(Debug, Clone)]
pub struct Viewer {
    sees: u8,
    orgs: Box<[OrgId]>,
    tenant_id: Box<str>,
    contractor_id: Box<str>,
    user_id: Box<str>,
    types: Option<TypeFilter>,
}

impl Viewer {
    pub fn orgs(&self) -> &[OrgId] {
        &self.orgs
    }

    pub fn types(&self) -> Option<&TypeFilter> {
        self.types.as_ref()
    }

    /// Replaces the `types=` filter.
    pub fn set_types(&mut self, types: Option<TypeFilter>) {
        self.types = types;
    }

    /// Whether this viewer receives `event`. Isolation first: an event of an org the token does
    /// not list is never visible, whatever the rules say.
    pub fn may_see(&self, event: &Event) -> bool {
        if !self.orgs.contains(&event.org) {
            return false;
        }
        let routing = &event.routing;
        let visible = (self.sees & scope_bit(Scope::Org) != 0)
            || (self.sees & scope_bit(Scope::Landlord) != 0
                && routing
                    .landlord_id
                    .as_deref()
                    .is_some_and(|landlord| self.orgs.iter().any(|org| org.as_str() == landlord)))
            || (self.sees & scope_bit(Scope::Tenant) != 0
                && routing.tenant_id.as_deref() == Some(&*self.tenant_id))
            || (self.sees & scope_bit(Scope::Contractor) != 0
                && routing.contractor_id.as_deref() == Some(&*self.contractor_id))
            || (self.sees & scope_bit(Scope::User) != 0
                && routing.user_ids.iter().any(|user| **user == *self.user_id));
        visible
            && self
                .types
                .as_ref()
                .is_none_or(|types| types.matches(&event.event_type))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Envelope;
    use crate::settings::Settings;

    fn policy() -> Policy {
        let settings = Settings::load_from(None, Some(HashMap::new())).expect("defaults load");
        Policy::new(settings.policy.roles)
    }

    fn claims(
        role: &str,
        sub: &str,
        orgs: &[&str],
        tenant: Option<&str>,
        contractor: Option<&str>,
    ) -> Claims {
        Claims {
            sub: sub.into(),
            role: role.into(),
            orgs: orgs.iter().map(|o| OrgId::parse(o).expect("valid org")).collect(),
            tenant_id: tenant.map(Into::into),
            contractor_id: contractor.map(Into::into),
            exp: u64::MAX,
        }
    }

    fn event(org: &str, envelope: &str) -> Event {
        let envelope = Envelope::parse(envelope.as_bytes(), 65536).expect("valid envelope");
        Event::new(OrgId::parse(org).expect("valid org"), None, envelope)
    }

    #[test]
    fn default_rule_table_matches_the_contract() {
        let policy = policy();
        let ops = claims("ops", "o", &["org-a"], None, None);
        let landlord = claims("landlord", "l", &["org-a", "ll-1"], None, None);
        let tenant = claims("tenant", "t-user", &["org-a"], Some("ten-1"), None);
        let tenant_by_sub = claims("tenant", "t-user", &["org-a"], None, None);
        let contractor = claims("contractor", "c-user", &["org-a"], None, Some("con-1"));
        let contractor_by_sub = claims("contractor", "c-user", &["org-a"], None, None);
        let anyone = claims("landlord", "u-9", &["org-a"], None, None);

        // (viewer, event org, envelope, visible)
        let cases: Vec<(&Claims, &str, &str, bool)> = vec![
            (&ops, "org-a", r#"{"type":"a.b","data":{}}"#, true),
            (&ops, "org-b", r#"{"type":"a.b","data":{}}"#, false),
            (
                &landlord,
                "org-a",
                r#"{"type":"a.b","landlordId":"ll-1","data":{}}"#,
                true,
            ),
            (
                &landlord,
                "org-a",
                r#"{"type":"a.b","data":{"landlordId":"org-a"}}"#,
                true,
            ),
            (
                &landlord,
                "org-a",
                r#"{"type":"a.b","landlordId":"ll-2","data":{}}"#,
                false,
            ),
            (&landlord, "org-a", r#"{"type":"a.b","data":{}}"#, false),
            (
                &tenant,
                "org-a",
                r#"{"type":"a.b","tenantId":"ten-1","data":{}}"#,
                true,
            ),
            (
                &tenant,
                "org-a",
                r#"{"type":"a.b","tenantId":"t-user","data":{}}"#,
                false,
            ),
            (
                &tenant,
                "org-a",
                r#"{"type":"a.b","tenantId":"ten-2","data":{}}"#,
                false,
            ),
            (
                &tenant_by_sub,
                "org-a",
                r#"{"type":"a.b","data":{"tenantId":"t-user"}}"#,
                true,
            ),
            (
                &tenant,
                "org-a",
                r#"{"type":"a.b","landlordId":"org-a","data":{}}"#,
                false,
            ),
            (
                &contractor,
                "org-a",
                r#"{"type":"a.b","contractorId":"con-1","data":{}}"#,
                true,
            ),
            (
                &contractor,
                "org-a",
                r#"{"type":"a.b","contractorId":"con-2","data":{}}"#,
                false,
            ),
            (
                &contractor_by_sub,
                "org-a",
                r#"{"type":"a.b","contractorId":"c-user","data":{}}"#,
                true,
            ),
            (
                &anyone,
                "org-a",
                r#"{"type":"a.b","userIds":["x","u-9"],"data":{}}"#,
                true,
            ),
            (
                &tenant,
                "org-a",
                r#"{"type":"a.b","userIds":["t-user"],"data":{}}"#,
                true,
            ),
            (
                &anyone,
                "org-a",
                r#"{"type":"a.b","userIds":["x"],"data":{}}"#,
                false,
            ),
            (
                &anyone,
                "org-b",
                r#"{"type":"a.b","userIds":["u-9"],"data":{}}"#,
                false,
            ),
        ];
        for (claims, org, envelope, visible) in cases {
            let viewer = policy.viewer(claims, None).expect("role may subscribe");
            assert_eq!(
                viewer.may_see(&event(org, envelope)),
                visible,
                "{} in {org}: {envelope}",
                claims.role
            );
        }
    }

    #[test]
    fn service_and_unknown_roles_may_not_subscribe() {
        let policy = policy();
        for role in ["service", "admin", ""] {
            assert_eq!(
                policy.viewer(&claims(role, "s", &["o"], None, None), None).err(),
                Some(PolicyError::MaySubscribe(role.into()))
            );
        }
    }

    #[test]
    fn only_services_publish_and_only_to_their_orgs() {
        let policy = policy();
        let org = OrgId::parse("o1").expect("valid org");
        let other = OrgId::parse("o2").expect("valid org");
        assert!(policy
            .check_publish(&claims("service", "s", &["o1"], None, None), &org)
            .is_ok());
        assert!(matches!(
            policy.check_publish(&claims("service", "s", &["o1"], None, None), &other),
            Err(PolicyError::OrgNotInToken(_))
        ));
        assert!(matches!(
            policy.check_publish(&claims("ops", "s", &["o1"], None, None), &org),
            Err(PolicyError::MayPublish(_))
        ));
    }

    #[test]
    fn type_filter_matches_exact_types_and_prefixes() {
        let filter = TypeFilter::parse("ticket.created,payment.*").expect("valid filter");
        let matches = |t: &str| filter.matches(&EventType::parse(t).expect("valid type"));
        assert!(matches("ticket.created"));
        assert!(matches("payment.received"));
        assert!(!matches("ticket.updated"));
        assert!(!matches("payments.x"));
        assert!(TypeFilter::parse("*")
            .expect("valid")
            .matches(&EventType::parse("a").expect("valid")));
        for bad in ["", ",", "Ticket", "a b", "a.*.b", "**"] {
            assert!(TypeFilter::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn type_filter_applies_after_the_role_rules() {
        let viewer = policy()
            .viewer(
                &claims("ops", "o", &["org-a"], None, None),
                Some(TypeFilter::parse("payment.*").expect("valid")),
            )
            .expect("ops may subscribe");
        assert!(viewer.may_see(&event("org-a", r#"{"type":"payment.received","data":{}}"#)));
        assert!(!viewer.may_see(&event("org-a", r#"{"type":"ticket.created","data":{}}"#)));
    }
}
